"""``hrnn``: the hierarchical RNN optimizer of Wichrowska et al. 2017, *Learned optimizers
that scale and generalize* (Sec. 3).

Three levels of GRUs, each level's new state the input of the level above (averaged) and
each level's state a bias of the level below (Sec. 3.1, Fig. 1):

- a *parameter* GRU per coordinate, shared by all, fed the gradient features below;
- a *tensor* GRU per parameter group of the task (``task.groups``; Sec. 3.1's "one per
  tensor"), fed the mean over its coordinates of the parameter GRUs' new states and
  inputs;
- a *global* GRU (optional: ``global_hidden = 0`` leaves it out), fed the mean of the
  tensor GRUs' new states.

The parameter GRU's inputs (Sec. 3.2): gradient momenta at ``scales`` timescales, each
decay the square root of the one before (Sec. 3.2.2), the first a learned projection of
the GRU state; each momentum divided by the root of its own running mean square, with a
learned decay (Sec. 3.2.3, dynamic input scaling: the inputs do not change when the loss
is scaled); each log mean square minus their mean over the timescales (Sec. 3.2.5); and
the log learning rate relative to its tensor's mean (the relative learning rate input).  Its output (Sec. 3.2.4) is a
direction, a linear readout normalised by its root mean square over the tensor, times a
per-coordinate learning rate ``exp(log_lr + offset)``, whose log is changed by another
readout and smoothed by a learned momentum, clipped to ``[exp(-33), max_lr]`` with the
gradient of the unclipped value (as the authors' code does).

Deviations from the paper, plainly:

- no attention (Sec. 3.2.1: the gradient evaluated at an offset location) and no
  Nesterov-style look-ahead: the benchmark's optimizers see the gradient at the params;
- the log learning rates start at ``log(init_lr)`` on every coordinate, not drawn at
  random per coordinate and tensor, so the optimizer is deterministic;
- the meta-objective (the paper's log of the loss, its meta-training distribution and
  its meta-optimizer) is the meta-trainer's, not part of this optimizer;
- a "tensor" is a parameter group of the task, so the MNIST MLPs, which name one group,
  have one tensor GRU;
- the learning-rate readout starts from small random weights (the authors' code can start it
  at zero), so that every meta-parameter, the learning-rate momentum too, has a
  meta-gradient from the first unroll;
- squares are capped at the dtype's largest value, so huge finite gradients give finite
  updates.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from l2obench.api import Capabilities, ConfigError, LearnedOptimizer, Optimizer, PositiveInt, Positive, State

from .tensors import Segments, squared

#: initial logits of the decays (the authors' code: sigmoid(2.2) ~ 0.9, sigmoid(3.2) ~ 0.96)
INPUT_DECAY_LOGIT, SCALE_DECAY_LOGIT, LR_MOMENTUM_LOGIT = 2.2, 3.2, 3.2
#: the GRUs' reset and update gates start open towards keeping the state (the authors' 2.2)
GATE_BIAS = 2.2
#: the smallest log learning rate (the authors' clip: exp(-33), about 5e-15)
MIN_LOG_LR = -33.0


def _project(weight: Tensor, x: Tensor) -> Tensor:
    """``weight (O, I)`` applied to feature-major ``x (I, S, N)``: ``(O, S, N)``."""
    return torch.matmul(weight.to(x.dtype), x.reshape(x.shape[0], -1)).view(weight.shape[0], *x.shape[1:])


class BiasGRU(nn.Module):
    """A GRU cell on feature-major tensors ``(I, S, N)`` with an optional external bias added to
    its three gates' input terms (how a level above steers a level below, Sec. 3.1)."""

    def __init__(self, inputs: int, hidden: int):
        super().__init__()
        self.w_x = nn.Parameter(torch.randn(3 * hidden, inputs) / math.sqrt(inputs + hidden))
        self.w_h = nn.Parameter(torch.randn(3 * hidden, hidden) / math.sqrt(inputs + hidden))
        bias = torch.zeros(3 * hidden)
        bias[:2 * hidden] = GATE_BIAS
        self.bias = nn.Parameter(bias)
        self.initial = nn.Parameter(torch.rand(hidden) * 2 - 1)  # the learned initial state
        self.hidden = hidden

    def init(self, like: Tensor, n: int) -> Tensor:
        """The initial state for ``n`` units per seed of ``like (S, ...)``: ``(H, S, n)``."""
        return self.initial.to(like.dtype).view(-1, 1, 1).expand(-1, like.shape[0], n).clone()

    def forward(self, x: Tensor, h: Tensor, bias: Tensor | None = None) -> Tensor:
        gx = _project(self.w_x, x) + self.bias.to(x.dtype).view(-1, 1, 1)
        if bias is not None:
            gx = gx + bias
        gh = _project(self.w_h, h)
        H = self.hidden
        r = torch.sigmoid(gx[:H] + gh[:H])
        z = torch.sigmoid(gx[H:2 * H] + gh[H:2 * H])
        n = torch.tanh(gx[2 * H:] + r * gh[2 * H:])
        return n + z * (h - n)


class Readout(nn.Module):
    """A linear readout of the parameter GRU's state: ``(H, S, D)`` to ``(S, D)``."""

    def __init__(self, hidden: int, bias: float = 0.0, scale: float = 0.5):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, hidden) * scale / math.sqrt(hidden))
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, h: Tensor) -> Tensor:
        return _project(self.weight, h)[0] + self.bias.to(h.dtype)


class HierarchicalRNN(LearnedOptimizer):
    """Meta-parameters: the parameter, tensor and (optional) global GRUs, the affine maps from each
    level's state to the gates of the level below, the readouts and the learning-rate offsets."""

    def __init__(self, param_hidden: int, tensor_hidden: int, global_hidden: int, scales: int,
                 init_lr: float, max_lr: float):
        super().__init__()
        self.scales = scales
        features = 2 * scales + 1
        self.param_rnn = BiasGRU(features, param_hidden)
        self.tensor_rnn = BiasGRU(param_hidden + features, tensor_hidden)
        self.tensor_to_param = nn.Linear(tensor_hidden, 3 * param_hidden, bias=False)
        self.global_rnn = BiasGRU(tensor_hidden, global_hidden) if global_hidden else None
        if global_hidden:
            self.global_to_param = nn.Linear(global_hidden, 3 * param_hidden, bias=False)
            self.global_to_tensor = nn.Linear(global_hidden, 3 * tensor_hidden, bias=False)
        self.direction = Readout(param_hidden)
        self.input_decay = Readout(param_hidden, bias=INPUT_DECAY_LOGIT)
        self.scale_decay = Readout(param_hidden, bias=SCALE_DECAY_LOGIT)
        self.lr_change = Readout(param_hidden, scale=0.1)
        self.lr_momentum_logit = nn.Parameter(torch.tensor(LR_MOMENTUM_LOGIT))
        self.lr_offset = nn.Parameter(torch.tensor(-1.0))
        self.log_init_lr, self.max_log_lr = math.log(init_lr), math.log(max_lr)
        self.capabilities = Capabilities(replay=False, groups=(), second_derivatives=True)

    def opt_fn(self, groups=None) -> Optimizer:
        K = self.scales

        def init(params: Tensor) -> State:
            segments = Segments.of(groups, params.shape[-1], "hrnn")
            zeros = params.new_zeros(K, *params.shape)
            state = {"param": self.param_rnn.init(params, params.shape[-1]),
                     "tensor": self.tensor_rnn.init(params, segments.count),
                     "m": zeros, "ms": zeros.clone(),
                     "input_decay": torch.zeros_like(params), "scale_decay": torch.zeros_like(params),
                     "log_lr": torch.full_like(params, self.log_init_lr)}
            if self.global_rnn is not None:
                state["global"] = self.global_rnn.init(params, 1)
            return state

        def update(grads: Tensor, state: State, params: Tensor):
            segments = Segments.of(groups, grads.shape[-1], "hrnn")
            # Momenta at K timescales, each decay the square root of the one before (Sec. 3.2.2).
            decays = torch.stack([state["input_decay"] ** (0.5 ** k) for k in range(K)])
            m = torch.lerp(state["m"], grads.unsqueeze(0).expand_as(state["m"]), 1 - decays)
            ms = torch.lerp(state["ms"], squared(m), 1 - state["scale_decay"].unsqueeze(0))
            scaled = m * torch.rsqrt(ms + 1e-16)  # dynamic input scaling (Sec. 3.2.3)
            log_ms = torch.log(ms + 1e-16)
            relative_ms = log_ms - log_ms.mean(0, keepdim=True)  # Sec. 3.2.5
            log_lr = state["log_lr"]
            relative_lr = log_lr - segments.expand(segments.mean(log_lr))
            x = torch.cat([scaled, relative_ms, relative_lr.unsqueeze(0)])

            bias = segments.expand(_project(self.tensor_to_param.weight, state["tensor"]))
            if self.global_rnn is not None:
                bias = bias + _project(self.global_to_param.weight, state["global"])
            h_param = self.param_rnn(x, state["param"], bias)
            tensor_in = segments.mean(torch.cat([h_param, x]))
            tensor_bias = None if self.global_rnn is None else _project(self.global_to_tensor.weight, state["global"])
            h_tensor = self.tensor_rnn(tensor_in, state["tensor"], tensor_bias)
            new = {"param": h_param, "tensor": h_tensor, "m": m, "ms": ms}
            if self.global_rnn is not None:
                new["global"] = self.global_rnn(h_tensor.mean(-1, keepdim=True), state["global"])

            # Direction and step length apart (Sec. 3.2.4).
            direction = self.direction(h_param)
            direction = direction * torch.rsqrt(segments.expand(segments.mean(direction * direction)) + 1e-16)
            step_log_lr = log_lr + self.lr_change(h_param)
            clipped = step_log_lr.clamp(MIN_LOG_LR, self.max_log_lr)
            step_log_lr = step_log_lr + (clipped - step_log_lr).detach()
            lr_momentum = torch.sigmoid(self.lr_momentum_logit).to(grads.dtype)
            new["log_lr"] = torch.lerp(step_log_lr, log_lr, lr_momentum)
            new["input_decay"] = torch.sigmoid(self.input_decay(h_param))
            new["scale_decay"] = torch.sigmoid(self.scale_decay(h_param))
            updates = -torch.exp(step_log_lr + self.lr_offset.to(grads.dtype)) * direction
            return updates, new

        return Optimizer(init, update, coordinatewise=False, zero_grad="any")


def hrnn(param_hidden: PositiveInt = 10, tensor_hidden: PositiveInt = 30, global_hidden: int = 20,
         scales: PositiveInt = 4, init_lr: Positive = 1e-3, max_lr: Positive = 1.0) -> HierarchicalRNN:
    """Wichrowska et al. 2017's hierarchical RNN optimizer (Sec. 3): parameter, tensor and global GRUs
    of ``param_hidden``, ``tensor_hidden`` and ``global_hidden`` units (the paper's 10, 30, 20;
    ``global_hidden = 0``: no global level), momenta at ``scales`` timescales, learning rates from
    ``init_lr``, at most ``max_lr``.  Not coordinatewise; no replay; twice differentiable."""
    if global_hidden < 0:
        raise ConfigError(f"hrnn: global_hidden={global_hidden} must be 0 (no global level) or more")
    if init_lr > max_lr:
        raise ConfigError(f"hrnn: init_lr={init_lr} must not exceed max_lr={max_lr}")
    return HierarchicalRNN(param_hidden, tensor_hidden, global_hidden, scales, init_lr, max_lr)
