"""``mlp-lopt``: a small per-parameter MLP over momentum, second-moment and parameter
features, after Metz et al. 2022, *Practical tradeoffs between memory, compute, and
performance in learned optimizers* (its small per-parameter MLP learned optimizer, with
the features of learned_optimization's ``adafac_mlp_lopt``).

Per coordinate and step, the features are the gradient ``g``, the parameter ``p``,
momenta ``m_k`` at decays 0.9, 0.99, 0.999, a second-moment accumulator ``v`` at decay
0.999, ``m_k / sqrt(v)`` and ``1 / sqrt(v)``: ten features, each normalised by its root
mean square over its tensor (``second_moment_normalise``), then eleven features of the
step count ``tanh(t / tau - 1)`` for ``tau`` from 1 to 100,000, left unnormalised.  An MLP
of ``layers`` ReLU layers of ``hidden`` units, shared by every coordinate, outputs a
direction ``d`` and a magnitude ``a``; the update is ``-d * exp(a * exp_mult) * step_mult``
(the output's magnitude and direction apart, as in the paper).  The decays are
meta-learned too, as offsets in ``log(1 - decay) / 10`` starting at the values above.

Deviations from the paper, plainly:

- no Adafactor-style factored (row / column) accumulators: a task here is a flat vector
  with named slices, not a list of matrices, so there are no rows and columns to factor;
  the ten unfactored features stand in;
- a "tensor" is a parameter group of the task (``task.groups``), so the MNIST MLPs,
  which name one group, are normalised as one tensor, not layer by layer;
- the MLP's weights start from torch's default initialisation, not a truncated normal;
- the normalisation is computed on the features divided by their largest magnitude and
  squares are capped at the dtype's largest value, so gradients up to the dtype's range
  give finite updates (the same function in exact arithmetic).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from l2obench.api import Capabilities, LearnedOptimizer, Optimizer, PositiveInt, Positive, State, step_count

from .tensors import Segments, second_moment_normalise, squared

#: momentum and second-moment decays the meta-learned ones start from (adafac_mlp_lopt's)
MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
RMS_DECAYS = (0.999,)
#: timescales of the step-count features
TIMESCALES = (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
#: features normalised per tensor: g, p, each m, each v, each m / sqrt(v), each 1 / sqrt(v)
NORMALISED = 2 + 2 * len(MOMENTUM_DECAYS) + 2 * len(RMS_DECAYS)
FEATURES = NORMALISED + len(TIMESCALES)


def decay_from_offset(initial: tuple[float, ...], offset: Tensor) -> Tensor:
    """``1 - (1 - initial) * exp(10 * offset)``, in [0, 1): adafac_mlp_lopt's parametrisation of a
    learned decay (offset 0: the initial decay)."""
    base = torch.tensor([math.log1p(-d) / 10 for d in initial], dtype=offset.dtype, device=offset.device)
    return (1 - torch.exp(10 * (base + offset))).clamp(0.0, 1.0)


def step_features(count: Tensor) -> Tensor:
    """``tanh(t / tau - 1)`` for each timescale: ``(len(TIMESCALES), S)`` from the step counts ``(S,)``."""
    taus = torch.tensor(TIMESCALES, dtype=count.dtype, device=count.device)
    return torch.tanh(count.unsqueeze(0) / taus.unsqueeze(1) - 1)


class FeatureMLP(nn.Module):
    """The per-coordinate MLP, feature-major: ``(F, S, D)`` to ``(2, S, D)`` (direction, magnitude)."""

    def __init__(self, features: int, hidden: int, layers: int):
        super().__init__()
        sizes = [features] + [hidden] * layers + [2]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape[1:]
        h = x.reshape(x.shape[0], -1)
        for k, layer in enumerate(self.layers):
            h = torch.addmm(layer.bias.to(h.dtype).unsqueeze(1), layer.weight.to(h.dtype), h)
            if k < len(self.layers) - 1:
                h = torch.relu(h)
        return h.view(h.shape[0], *shape)


class MLPLOpt(LearnedOptimizer):
    """Meta-parameters: the :class:`FeatureMLP` and the decay offsets; see the module docstring."""

    def __init__(self, hidden: int, layers: int, step_mult: float, exp_mult: float):
        super().__init__()
        self.mlp = FeatureMLP(FEATURES, hidden, layers)
        self.momentum_offsets = nn.Parameter(torch.zeros(len(MOMENTUM_DECAYS)))
        self.rms_offsets = nn.Parameter(torch.zeros(len(RMS_DECAYS)))
        self.step_mult, self.exp_mult = step_mult, exp_mult
        # Per-tensor normalisation mixes coordinates; the networks are shared by all groups.
        self.capabilities = Capabilities(replay=False, groups=(), second_derivatives=True)

    def opt_fn(self, groups=None) -> Optimizer:
        mlp, step_mult, exp_mult = self.mlp, self.step_mult, self.exp_mult

        def init(params: Tensor) -> State:
            s, d = params.shape
            zeros = lambda n: params.new_zeros(n, s, d)  # noqa: E731
            return {"m": zeros(len(MOMENTUM_DECAYS)), "v": zeros(len(RMS_DECAYS)), "count": step_count(params)}

        def update(grads: Tensor, state: State, params: Tensor):
            segments = Segments.of(groups, grads.shape[-1], "mlp-lopt")
            beta_m = decay_from_offset(MOMENTUM_DECAYS, self.momentum_offsets).to(grads.dtype).view(-1, 1, 1)
            beta_v = decay_from_offset(RMS_DECAYS, self.rms_offsets).to(grads.dtype).view(-1, 1, 1)
            m = torch.lerp(state["m"], grads.unsqueeze(0).expand_as(state["m"]), 1 - beta_m)
            v = torch.lerp(state["v"], squared(grads).unsqueeze(0).expand_as(state["v"]), 1 - beta_v)
            rsqrt = torch.rsqrt(v + 1e-6)
            per_tensor = torch.cat([grads.unsqueeze(0), params.unsqueeze(0), m, v,
                                    (m.unsqueeze(1) * rsqrt.unsqueeze(0)).flatten(0, 1), rsqrt])
            x = second_moment_normalise(per_tensor, segments)
            steps = step_features(state["count"]).unsqueeze(-1).expand(-1, -1, grads.shape[-1])
            out = mlp(torch.cat([x, steps]))
            direction, magnitude = out[0], out[1]
            updates = -direction * torch.exp(magnitude * exp_mult) * step_mult
            return updates, {"m": m, "v": v, "count": state["count"] + 1}

        return Optimizer(init, update, coordinatewise=False, zero_grad="any")


def mlp_lopt(hidden: PositiveInt = 32, layers: PositiveInt = 2, step_mult: Positive = 0.001,
             exp_mult: Positive = 0.001) -> MLPLOpt:
    """Metz et al. 2022's per-parameter MLP learned optimizer: ``layers`` ReLU layers of
    ``hidden`` units over 21 momentum, second-moment, parameter and step features, update
    ``-direction * exp(magnitude * exp_mult) * step_mult``.  Not coordinatewise (features are
    normalised per tensor); no replay; twice differentiable."""
    return MLPLOpt(hidden, layers, step_mult, exp_mult)
