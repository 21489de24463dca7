"""An l2obench :class:`~l2obench.Optimizer` from a torch.optim-style optimizer: a
class taking ``params, **kwargs`` with a ``.step()`` (``torch.optim.Adam``, the
optimizers of the ``pytorch_optimizer`` package, ...).

The adapter is pure: each ``update`` builds a fresh instance on a copy of the
params, loads the state carried in the flat state dict, sets the gradient, calls
``step()`` and reads the change of the parameter (the update) and the new state
back.  Each optimizee (row of ``(S, D)`` params) gets its own instance, so an
optimizer that is not coordinatewise (LAMB's trust ratio, a norm over the
tensor) sees one optimizee at a time, as it would in a training loop.
``coordinatewise=True`` promises the kit (and you) that the optimizer treats
every coordinate alone; then one instance steps all of ``(S, D)`` at once, which
is exact for such an optimizer and S times fewer Python calls.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from .optimizer import Optimizer, State

__all__ = ["from_torch_optimizer"]

#: The state entry saying, per optimizee, whether the wrapped optimizer has stepped
#: (its own state is made lazily, at the first ``step()``).
STARTED = "started"

_NUMBERS = {"int": int, "float": float, "bool": bool}


def _key(name: str, value: Any) -> str:
    """The flat state key of one entry of torch's per-parameter state: the entry's
    name and the type it is restored to (``exp_avg:float32``, ``step:int``), so the
    state dict alone says how to rebuild torch's state."""
    if isinstance(value, Tensor):
        return f"torch.{name}:{str(value.dtype).removeprefix('torch.')}:{value.device.type}"
    for label, kind in _NUMBERS.items():
        if type(value) is kind:
            return f"torch.{name}:{label}"
    raise TypeError(f"from_torch_optimizer: state entry {name!r} is a {type(value).__name__}; only tensors and "
                    f"numbers can be carried in an l2obench state")


def _restore(key: str, value: Tensor) -> tuple[str, Any]:
    name, _, kind = key.removeprefix("torch.").partition(":")
    if kind in _NUMBERS:
        return name, _NUMBERS[kind](value.item())
    dtype, _, device = kind.partition(":")
    target = value.device if device == value.device.type else torch.device(device)
    return name, value.to(dtype=getattr(torch, dtype), device=target).clone()


def from_torch_optimizer(optimizer_class: type, *, coordinatewise: bool = False,
                         zero_grad: Literal["no-op", "any"] = "any", **kwargs: Any) -> Optimizer:
    """The l2obench Optimizer that ``optimizer_class(params, **kwargs)`` is, seed-batched.

    ``coordinatewise`` and ``zero_grad`` are the capability flags the kit checks
    (declare ``zero_grad="no-op"`` only if a zero gradient from a fresh state moves
    nothing, so no weight decay).  The state dict holds torch's per-parameter state
    stacked over optimizees, in the params' dtype and on their device, plus
    ``started``.  Updates are not differentiable (the wrapped ``step()`` runs under
    ``no_grad``), so this is for hand-designed optimizers, not learned ones.
    """

    def instances(params: Tensor) -> list[Tensor]:
        return [params] if coordinatewise else list(params.unbind(0))

    def stacked(values: list[Tensor]) -> Tensor:
        return values[0] if coordinatewise else torch.stack(values)

    def step(param: Tensor, grad: Tensor, loaded: dict[str, Any] | None) -> tuple[Tensor, dict[str, Any]]:
        leaf = param.detach().clone()
        opt = optimizer_class([leaf], **kwargs)
        if loaded is not None:
            opt.state[leaf] = loaded
        leaf.grad = grad.detach().clone()
        with torch.no_grad():
            opt.step()
        return leaf.detach() - param.detach(), opt.state[leaf]

    def flatten(per_instance: list[dict[str, Any]], like: Tensor) -> State:
        flat: State = {}
        for name in per_instance[0]:
            key = _key(name, per_instance[0][name])
            values = [torch.as_tensor(s[name]).to(dtype=like.dtype, device=like.device) for s in per_instance]
            flat[key] = stacked(values)
        return flat

    def init(params: Tensor) -> State:
        # One throwaway step on a copy reveals the state's structure; its values are discarded.
        probes = [step(p, torch.zeros_like(p), None)[1] for p in instances(params)]
        state = {k: torch.zeros_like(v) for k, v in flatten(probes, params).items()}
        state[STARTED] = torch.zeros(params.shape[:-1] if not coordinatewise else (), dtype=params.dtype,
                                     device=params.device)
        return state

    def update(grads: Tensor, state: State, params: Tensor) -> tuple[Tensor, State]:
        started = state[STARTED]
        entries = {k: v for k, v in state.items() if k != STARTED}
        updates, new = [], []
        for i, (p, g) in enumerate(zip(instances(params), instances(grads))):
            begun = bool(started if coordinatewise else started[i])
            loaded = dict(_restore(k, v if coordinatewise else v[i]) for k, v in entries.items()) if begun else None
            u, s = step(p, g, loaded)
            updates.append(u)
            new.append(s)
        new_state = flatten(new, params)
        new_state[STARTED] = torch.ones_like(started)
        return stacked(updates), new_state

    return Optimizer(init, update, coordinatewise=coordinatewise, zero_grad=zero_grad)
