""":class:`LearnedLSTM`: one or more :class:`~.network.LSTMNetwork` as the
meta-parameters, and ``opt_fn`` turning them into an ordinary optimizer whose
update is differentiable in them (one network per parameter group: Sec. 3.3)."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import Tensor, nn

from l2obench.api import Capabilities, ConfigError, LearnedOptimizer, Optimizer, State, prefixed, unprefixed

from . import backend
from .network import LSTMNetwork

#: the network serving every coordinate outside the task groups with networks of their own
DEFAULT = "default"


class LearnedLSTM(LearnedOptimizer):
    """Meta-parameters = one or more :class:`LSTMNetwork`; ``opt_fn`` turns them into
    an :class:`~l2obench.api.Optimizer` whose update is differentiable in them.

    ``networks`` is one network, or a mapping in which ``networks[DEFAULT]`` serves every
    coordinate except those of a task group that has a network of its own name (the
    paper's conv / fc LSTMs).  ``transform(task, generator)`` changes training tasks per
    episode (RNNprop's random scaling); ``coordinatewise`` is False for variants that mix
    coordinates.

    The capabilities follow from the networks: ``replay`` where the fused kernel can
    replay an unroll of every network (:func:`.backend.replayable`; ``opt_fn`` then gives
    ``replay`` wherever the kernel runs, each group's coordinates replayed by their own
    network), ``groups`` the named networks, and no second derivatives, since the
    hand-written backward (:mod:`.cell`) is once differentiable.
    """

    def __init__(self, networks: LSTMNetwork | Mapping[str, LSTMNetwork], *, coordinatewise: bool = True,
                 transform: Callable | None = None):
        super().__init__()
        if isinstance(networks, LSTMNetwork):
            networks = {DEFAULT: networks}
        if DEFAULT not in networks:
            raise ConfigError(f"learned LSTM: a {DEFAULT!r} network is required, got {sorted(networks)}")
        self.networks = nn.ModuleDict(networks)
        self.capabilities = Capabilities(
            replay=all(backend.replayable(net) for net in networks.values()),
            groups=tuple(name for name in networks if name != DEFAULT), second_derivatives=False)
        self.coordinatewise = coordinatewise
        self._transform = transform

    def implementation(self, device="cpu") -> dict:
        return backend.implementation(device)

    def builds(self) -> list[dict]:
        return backend.builds()

    def task_transform(self, task, generator: torch.Generator):
        return task if self._transform is None else self._transform(task, generator)

    def segments(self, groups: Mapping[str, slice] | None, dim: int) -> list[tuple[str, slice]]:
        """``(network name, coordinate slice)`` covering ``0 .. dim`` in order: a task group
        with a network of its own goes to it, every other coordinate to the default network."""
        own = sorted(((sl.indices(dim), name) for name, sl in (groups or {}).items()
                      if name in self.networks and name != DEFAULT), key=lambda item: item[0][0])
        out, at = [], 0
        for (start, stop, step), name in own:
            if step != 1 or start < at:
                raise ConfigError(f"learned LSTM: task group {name!r} ({start}:{stop}:{step}) overlaps another "
                                  "or has a step; groups must be disjoint contiguous slices")
            if start > at:
                out.append((DEFAULT, slice(at, start)))
            if stop > start:
                out.append((name, slice(start, stop)))
            at = max(at, stop)
        if at < dim or not out:
            out.append((DEFAULT, slice(at, dim)))
        return out

    def opt_fn(self, groups: Mapping[str, slice] | None = None) -> Optimizer:
        networks = self.networks

        def init(params: Tensor) -> State:
            segments = self.segments(groups, params.shape[-1])
            if len(segments) == 1:
                return networks[segments[0][0]].init(params)
            state: State = {}
            for k, (name, sl) in enumerate(segments):
                state.update(prefixed(f"{k}.{name}.", networks[name].init(params[..., sl])))
            return state

        def update(grads: Tensor, state: State, params: Tensor):
            segments = self.segments(groups, grads.shape[-1])
            if len(segments) == 1:
                return networks[segments[0][0]].step(grads, state)
            parts, new_state = [], {}
            for k, (name, sl) in enumerate(segments):
                prefix = f"{k}.{name}."
                u, s = networks[name].step(grads[..., sl], unprefixed(prefix, state))
                parts.append(u)
                new_state.update(prefixed(prefix, s))
            return torch.cat(parts, -1), new_state

        def replay(grads: Tensor, state: State, updates: Tensor) -> Tensor:
            segments = self.segments(groups, grads.shape[-1])
            if len(segments) == 1:
                return networks[segments[0][0]].replay(grads, state, updates)
            return torch.cat([networks[name].replay(grads[..., sl], unprefixed(f"{k}.{name}.", state), updates[..., sl])
                              for k, (name, sl) in enumerate(segments)], -1)

        # Coordinates served by different networks are not interchangeable.
        split = any(name in networks and name != DEFAULT for name in (groups or {}))
        # Replay only where the kernel replays every network used (see backend: elsewhere it costs a forward more).
        used = {DEFAULT, *(name for name in (groups or {}) if name in networks)}
        replays = all(backend.replays_on_kernel(networks[name]) for name in sorted(used))
        return Optimizer(init, update, coordinatewise=self.coordinatewise and not split, zero_grad="any",
                         replay=replay if replays else None)
