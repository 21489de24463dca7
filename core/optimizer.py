"""The optimizer interface shared by hand-designed and learned optimizers.

An optimizer is a pair of pure functions over *all* parameters of an optimizee
at once, as in optax:

    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = params + updates

``params`` and ``grads`` are tensors of shape ``(..., D)``: the last dimension
holds the D coordinates of one optimizee, leading dimensions are independent
optimizees (seeds) run together.  No input is changed in place.  ``state`` is a
flat ``dict[str, Tensor]`` whose tensors live on the device of ``params``.

Hand-designed optimizers are built by chaining small transforms
(:func:`chain`, :func:`scale`, ...), so a variant is a few lines.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Literal, Mapping

import torch
from torch import Tensor

State = dict[str, Tensor]
InitFn = Callable[[Tensor], State]
UpdateFn = Callable[[Tensor, State, Tensor], "tuple[Tensor, State]"]
ReplayFn = Callable[[Tensor, State, Tensor], Tensor]


@dataclass(frozen=True)
class Optimizer:
    """``init(params) -> state`` and ``update(grads, state, params) -> (updates, state)``.

    Capability flags are data, read by the conformance kit and the evaluator:

    - ``coordinatewise``: each coordinate's update depends only on that coordinate's
      history, so permuting coordinates permutes the updates.
    - ``zero_grad``: what a zero gradient does from a fresh state: ``"no-op"``
      (update exactly zero) or ``"any"`` (nothing promised, e.g. weight decay).
    - ``uses_groups``: the update depends on the task's parameter groups (layer-wise
      optimizers such as LARS or LAMB); such a factory takes a keyword-only
      ``groups: Mapping[str, slice]``, which the resolver fills from the task.

    Learned optimizers may also give ``replay(grads, state, updates) -> updates``,
    for meta-training with second derivatives dropped: ``grads`` and ``updates``
    stack (along a new first dimension) what ``update`` took and returned over an
    unroll of T steps starting from ``state`` (``updates`` must be what the steps returned:
    a replay may read their values); ``replay`` returns ``updates`` as a
    differentiable function of the meta-parameters, the gradients held constant.
    The meta-trainer then runs the unroll's steps without an autograd graph and
    backpropagates through ``replay`` once, which may compute the whole unroll's
    backward in one go (the ``lstm`` plugin's fused kernel does).  It runs those steps
    inside :func:`steps_to_replay`, so an ``update`` may keep what its replay's backward
    would otherwise recompute (:func:`replaying`).
    """

    init: InitFn
    update: UpdateFn
    coordinatewise: bool = True
    zero_grad: Literal["no-op", "any"] = "no-op"
    replay: ReplayFn | None = None
    uses_groups: bool = False

    def with_flags(self, **flags) -> "Optimizer":
        return replace(self, **flags)


_REPLAYING: contextvars.ContextVar[bool] = contextvars.ContextVar("l2obench_replaying", default=False)


@contextlib.contextmanager
def steps_to_replay() -> Iterator[None]:
    """Marks the steps run inside it as an unroll whose ``replay`` follows (the meta-trainer's
    steps before a replay; a hand-written training loop that calls ``replay`` may use it too).
    Only a hint: a replay must give the same meta-gradient without it."""
    token = _REPLAYING.set(True)
    try:
        yield
    finally:
        _REPLAYING.reset(token)


def replaying() -> bool:
    """Whether the steps running now are inside :func:`steps_to_replay`: an ``update`` may then
    keep, for its replay's backward, what it would otherwise have to recompute."""
    return _REPLAYING.get()


def prefixed(prefix: str, state: Mapping[str, Tensor]) -> State:
    """``state`` with every key prefixed, so parts of a composite optimizer share one flat dict."""
    return {f"{prefix}{k}": v for k, v in state.items()}


def unprefixed(prefix: str, state: Mapping[str, Tensor]) -> State:
    """The entries of ``state`` under ``prefix``, with the prefix taken off (inverse of :func:`prefixed`)."""
    n = len(prefix)
    return {k[n:]: v for k, v in state.items() if k.startswith(prefix)}


def chain(*transforms: Optimizer) -> Optimizer:
    """Apply transforms in order, each to the previous one's output (optax.chain)."""

    def init(params: Tensor) -> State:
        state: State = {}
        for i, t in enumerate(transforms):
            state.update(prefixed(f"{i}.", t.init(params)))
        return state

    def update(grads: Tensor, state: State, params: Tensor):
        new_state: State = {}
        for i, t in enumerate(transforms):
            grads, s = t.update(grads, unprefixed(f"{i}.", state), params)
            new_state.update(prefixed(f"{i}.", s))
        return grads, new_state

    return Optimizer(
        init,
        update,
        coordinatewise=all(t.coordinatewise for t in transforms),
        zero_grad="no-op" if all(t.zero_grad == "no-op" for t in transforms) else "any",
        uses_groups=any(t.uses_groups for t in transforms),
    )


def stateless(fn: Callable[[Tensor, Tensor], Tensor], **flags) -> Optimizer:
    """A transform without state: ``updates = fn(grads, params)``."""
    return Optimizer(lambda params: {}, lambda g, s, p: (fn(g, p), s), **flags)


def scale(factor: float) -> Optimizer:
    """Multiply updates by a constant (``scale(-lr)`` turns a direction into a step)."""
    return stateless(lambda g, p: g * factor)


def zeros_like_state(params: Tensor, *names: str) -> State:
    """A state of zeros shaped like ``params``, one entry per name."""
    return {n: torch.zeros_like(params) for n in names}


def step_count(params: Tensor) -> Tensor:
    """A per-optimizee step counter of shape ``params.shape[:-1]``, on params' device."""
    return torch.zeros(params.shape[:-1], dtype=params.dtype, device=params.device)
