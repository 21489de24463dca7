"""Learned LSTM optimizers: the paper's coordinatewise LSTM (Andrychowicz et al.
2016, Sec. 2.1 and 3), its global averaging cells (Sec. 2.3.1), one LSTM per
parameter group (Sec. 3.3, CIFAR), and RNNprop (Lv et al. 2017).

Every variant is the same few pieces put together differently::

    gradient -> preprocessor -> [input layer] -> stacked LSTM -> head -> update

A *preprocessor* turns gradients ``(S, D)`` into features ``(F, S, D)`` (identity,
the paper's log/sign of Appendix A, or RNNprop's Adam-like normalised inputs);
the LSTM is shared by all coordinates and keeps one state per coordinate;
the *head* maps the top hidden state to one number per coordinate (linear or
tanh, times a scale).  Tensors inside the network are feature-major,
``(features, S, D)``, so every gate matrix product is one thin matrix product
over all seeds' coordinates and gate slices are contiguous.

Speed: one LSTM layer step is one :class:`torch.autograd.Function`
(:func:`lstm_cell`) with a hand-written backward, numerically the step of
:class:`torch.nn.LSTMCell` (whose modules hold the meta-parameters, so
initialisation and parameter layout are torch's).  In float32 on the CPU,
where :mod:`l2obench.plugins.lstm_kernel` can be built, the stacked LSTM and
its head run on that fused kernel: every network without averaging cells for
its steps when no graph is needed (RNNprop's input layer and tanh head around
it on torch ops), and networks of the paper's shape (no input layer, no
averaging cells, linear head) also for the whole-unroll backward through the
optimizer's ``replay`` when meta-training.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from l2obench import hookimpl
from l2obench.errors import ConfigError
from l2obench.learned import Capabilities, LearnedOptimizer
from l2obench.optimizer import Optimizer, State, step_count

from . import lstm_kernel

# -- the fused LSTM cell ---------------------------------------------------------


def _onednn_linear():
    """oneDNN's matmul on ordinary tensors, if this torch build has it.  On CPUs
    where MKL takes a slow path (AMD), it runs these thin products 2-3x faster."""
    try:
        if torch.backends.mkldnn.is_available():
            return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        pass
    return None


_ONEDNN = _onednn_linear()


def _mm_nt(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b.T`` for 2-d tensors, through oneDNN for float32 on the CPU unless a
    dimension is tiny (matrix-vector shapes, where MKL is faster)."""
    global _ONEDNN
    if (_ONEDNN is not None and a.dtype == torch.float32 and b.dtype == torch.float32 and a.device.type == "cpu"
            and torch.backends.mkldnn.enabled and min(a.shape[0], a.shape[1], b.shape[0]) >= 16):
        try:
            return _ONEDNN(a, b, None, "none", [], "")
        except RuntimeError:  # pragma: no cover - a build whose oneDNN refuses; torch.mm always works
            _ONEDNN = None
    return torch.mm(a, b.t())


@functools.lru_cache(maxsize=None)
def _gate_order(hidden: int, device: torch.device) -> Tensor:
    """Row index taking torch's gate order i, f, g, o to i, f, o, g (and back: it is an involution)."""
    blocks = [torch.arange(k * hidden, (k + 1) * hidden) for k in (0, 1, 3, 2)]
    return torch.cat(blocks).to(device)


def _packed_weights(w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> tuple[Tensor, Tensor]:
    """The cell's weights for the fused step: rows in gate order i, f, o, g, the bias as
    last column; the forward copy has the g rows doubled (``tanh(z) = 2 sigmoid(2z) - 1``),
    the backward copy has them times 4 (``tanh'(z) = 4 s (1 - s)``)."""
    hidden = w_hh.shape[1]
    weight = torch.cat([w_ih, w_hh, (b_ih + b_hh).unsqueeze(1)], 1).index_select(0, _gate_order(hidden, w_ih.device))
    forward, backward = weight.clone(), weight
    forward[3 * hidden:] *= 2
    backward[3 * hidden:] *= 4
    return forward, backward


#: columns per chunk when no graph is kept: the gates of one chunk stay in cache
NO_GRAD_CHUNK = 16384


def _cell_forward(weight: Tensor, x: Tensor, h: Tensor, c: Tensor, *, c_out: Tensor | None = None,
                  h_out: Tensor | None = None):
    """The fused step's arithmetic: activations (i, f, o, sigmoid(2 z_g)), c', tanh(c'), h';
    c' and h' are written into ``c_out`` and ``h_out`` when given."""
    hidden = h.shape[0]
    act = _mm_nt(weight, _with_ones(x, h).t()).sigmoid_()
    i, f, o, s_g = act.split(hidden, 0)
    c_new = torch.mul(f, c, out=c_out)
    c_new.addcmul_(i, _two_x_minus_one(s_g))  # + i * tanh(z_g)
    tanh_c = _two_x_minus_one(torch.sigmoid(c_new * 2))
    return act, c_new, tanh_c, torch.mul(o, tanh_c, out=h_out)


class _LSTMCell(torch.autograd.Function):
    """One step of an LSTM layer for all coordinates, with a hand-written backward.

    Tensors are feature-major ``(features, M)`` with ``M`` coordinates (all seeds'),
    so each product is one thin matrix product and gate slices are contiguous.
    Gate rows are packed in the order ``i, f, o, g`` with the bias as the last
    input column (the input gets a row of ones), so the forward is one product
    and one ``sigmoid`` over all gates: ``tanh(z) = 2 sigmoid(2z) - 1``, since
    torch's CPU ``tanh`` is several times slower than its ``sigmoid``.  The
    backward uses the saved activations and ``sigmoid' = s (1 - s)`` for every
    gate at once; weight gradients are one product per step.
    """

    @staticmethod
    def forward(ctx, x, h, c, w_ih, w_hh, b_ih, b_hh):
        forward_weight, backward_weight = _packed_weights(w_ih, w_hh, b_ih, b_hh)
        act, c_new, tanh_c, h_new = _cell_forward(forward_weight, x, h, c)
        # x, h and c are kept alive by the graph anyway; the stacked inputs and g are rebuilt.
        ctx.save_for_backward(x, h, c, act, tanh_c, backward_weight)
        ctx.set_materialize_grads(False)
        return h_new, c_new

    @staticmethod
    @once_differentiable
    def backward(ctx, d_h, d_c):
        need = ctx.needs_input_grad
        if d_h is None and d_c is None:
            return (None,) * 7
        x, h, c, act, tanh_c, weight = ctx.saved_tensors
        n_in, hidden = x.shape[0], h.shape[0]
        i, f, o, s_g = act.split(hidden, 0)
        d_gates = torch.empty_like(act)
        d_i, d_f, d_o, d_g = d_gates.split(hidden, 0)
        if d_h is not None:
            torch.mul(d_h, tanh_c, out=d_o)
            d_tanh_c = torch.addcmul(torch.ones((), dtype=o.dtype, device=o.device), tanh_c, tanh_c, value=-1).mul_(o)
            if d_c is not None:
                d_c_total = torch.addcmul(d_c, d_h, d_tanh_c)
            else:
                d_c_total = d_tanh_c.mul_(d_h)
        else:
            d_o.zero_()
            d_c_total = d_c
        torch.mul(d_c_total, _two_x_minus_one(s_g), out=d_i)
        torch.mul(d_c_total, c, out=d_f)
        torch.mul(d_c_total, i, out=d_g)
        # s (1 - s) for every gate; for g = tanh(z) = 2 s - 1 with s = sigmoid(2z),
        # dg/dz = 4 s (1 - s): that factor 4 is in the g rows of the backward weights.
        d_gates.mul_(torch.addcmul(act, act, act, value=-1))
        d_x = d_h_prev = d_c_prev = None
        if need[2]:
            d_c_prev = d_c_total * f
        if need[0] or need[1]:
            first = 0 if need[0] else n_in
            last = n_in + hidden if need[1] else n_in
            d_inputs = _mm_nt(weight[:, first:last].t(), d_gates.t())
            if need[0]:
                d_x = d_inputs[:n_in]
            if need[1]:
                d_h_prev = d_inputs[n_in - first:]
        d_w_ih = d_w_hh = d_bias = None
        if any(need[3:7]):
            d_weight = _mm_nt(d_gates, _with_ones(x, h))
            d_weight[3 * hidden:] *= 4
            d_weight = d_weight.index_select(0, _gate_order(hidden, d_weight.device))  # torch's order
            d_w_ih, d_w_hh, d_bias = d_weight[:, :n_in], d_weight[:, n_in:n_in + hidden], d_weight[:, -1]
        return (d_x, d_h_prev, d_c_prev, d_w_ih if need[3] else None, d_w_hh if need[4] else None,
                d_bias if need[5] else None, d_bias if need[6] else None)


def _cell_no_grad(x: Tensor, h: Tensor, c: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """The forward alone, ``NO_GRAD_CHUNK`` columns at a time (evaluation of many seeds),
    each chunk's results written straight into the new state."""
    h_new, c_new = torch.empty_like(h), torch.empty_like(c)
    for start in range(0, h.shape[1], NO_GRAD_CHUNK):
        cols = slice(start, start + NO_GRAD_CHUNK)
        _cell_forward(weight, x[:, cols], h[:, cols], c[:, cols], c_out=c_new[:, cols], h_out=h_new[:, cols])
    return h_new, c_new


def _with_ones(x: Tensor, h: Tensor) -> Tensor:
    """The stacked cell input ``[x; h; 1]``, ``(n_in + hidden + 1, M)``."""
    ones = torch.ones((), dtype=h.dtype, device=h.device).expand(1, h.shape[1])
    return torch.cat([x, h, ones], 0)


def _two_x_minus_one(x: Tensor) -> Tensor:
    return torch.add(torch.full((), -1.0, dtype=x.dtype, device=x.device), x, alpha=2)


class _Linear(torch.autograd.Function):
    """``weight @ x + bias[:, None]`` for feature-major ``x (K, M)``, products through :func:`_mm_nt`."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return _mm_nt(weight, x.t()).add_(bias.unsqueeze(1))

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out):
        x, weight = ctx.saved_tensors
        need = ctx.needs_input_grad
        d_x = _mm_nt(weight.t(), d_out.t()) if need[0] else None
        d_weight = _mm_nt(d_out, x) if need[1] else None
        d_bias = d_out.sum(1) if need[2] else None
        return d_x, d_weight, d_bias


def linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """``layer`` applied to every coordinate of feature-major ``x (in, ...)``: ``(out, ...)``."""
    out = _Linear.apply(x.reshape(x.shape[0], -1), layer.weight, layer.bias)
    return out.view(-1, *x.shape[1:])


def lstm_cell(x: Tensor, h: Tensor, c: Tensor, cell: nn.LSTMCell) -> tuple[Tensor, Tensor]:
    """``cell``'s step for feature-major ``x (in, ...)``, ``h, c (hidden, ...)``: the same
    numbers as ``cell(x_row, (h_row, c_row))`` for every coordinate (column)."""
    shape = h.shape
    x, h, c = x.reshape(x.shape[0], -1), h.reshape(shape[0], -1), c.reshape(shape[0], -1)
    if torch.is_grad_enabled():
        h_new, c_new = _LSTMCell.apply(x, h, c, cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    else:
        forward_weight, _ = _packed_weights(cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
        h_new, c_new = _cell_no_grad(x, h, c, forward_weight)
    return h_new.view(shape), c_new.view(shape)


# -- preprocessors: gradients (S, D) -> features (F, S, D) ------------------------


@dataclass(frozen=True)
class Preprocessor:
    """Gradients ``(S, D)`` to LSTM input features ``(features, S, D)``, with optional
    state (``init(grads_like) -> state``, ``apply(grads, state) -> (features, state)``).
    A ``stateful`` preprocessor's features depend on earlier gradients too."""

    features: int
    apply: Callable[[Tensor, State], "tuple[Tensor, State]"]
    init: Callable[[Tensor], State] = lambda params: {}
    stateful: bool = False


def identity() -> Preprocessor:
    """The raw gradient as the only feature (the paper's quadratics)."""
    return Preprocessor(1, lambda g, state: (g.unsqueeze(0), state))


def log_sign(p: float = 10.0) -> Preprocessor:
    """Appendix A: ``(log|g| / p, sign g)`` if ``|g| >= e^-p``, else ``(-1, e^p g)``."""
    threshold, scale = math.exp(-p), math.exp(p)

    def apply(g: Tensor, state: State):
        magnitude = g.abs()
        big = magnitude >= threshold
        log_part = torch.where(big, magnitude.clamp_min(1e-30).log() / p, -1.0)
        sign_part = torch.where(big, g.sign(), g * scale)
        return torch.stack([log_part, sign_part]), state

    return Preprocessor(2, apply)


def adam_normalised(beta1: float = 0.95, beta2: float = 0.95, eps: float = 1e-8) -> Preprocessor:
    """RNNprop's inputs (Lv et al. 2017, Sec. 4): ``g / sqrt(v_hat)`` and ``m_hat / sqrt(v_hat)``
    with Adam's bias-corrected running averages ``m``, ``v`` (``+ eps`` on the root)."""

    def init(params: Tensor) -> State:
        return {"m": torch.zeros_like(params), "v": torch.zeros_like(params), "count": step_count(params)}

    def apply(g: Tensor, state: State):
        count = state["count"] + 1
        m = beta1 * state["m"] + (1 - beta1) * g
        v = beta2 * state["v"] + (1 - beta2) * g * g
        c = count.unsqueeze(-1)
        root = (v / (1 - beta2**c)).sqrt() + eps
        features = torch.stack([g / root, m / (1 - beta1**c) / root])
        return features, {"m": m, "v": v, "count": count}

    return Preprocessor(2, apply, init, stateful=True)


# -- network pieces -----------------------------------------------------------------


class InputLayer(nn.Module):
    """A dense layer with ELU from the features to the LSTM (RNNprop's input layer)."""

    def __init__(self, features: int, hidden: int):
        super().__init__()
        self.linear = nn.Linear(features, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(linear(x, self.linear))


class StackedLSTM(nn.Module):
    """A stack of LSTM layers shared by all coordinates, one state per coordinate.

    ``averaged`` units of every layer are global averaging cells (Sec. 2.3.1):
    their outputs are replaced, at every step, by their mean over the ``D``
    coordinates of the same optimizee, so coordinates share information.
    """

    def __init__(self, input_size: int, hidden: int = 20, layers: int = 2, averaged: int = 0):
        super().__init__()
        if layers < 1 or hidden < 1:
            raise ConfigError(f"LSTM: hidden={hidden} and layers={layers} must be at least 1")
        if not 0 <= averaged <= hidden:
            raise ConfigError(f"LSTM: averaged={averaged} global averaging cells must be between 0 and hidden={hidden}")
        self.cells = nn.ModuleList(nn.LSTMCell(input_size if k == 0 else hidden, hidden) for k in range(layers))
        self.hidden, self.averaged = hidden, averaged

    def init(self, grads: Tensor) -> State:
        shape = (self.hidden, *grads.shape)
        state = {}
        for k in range(len(self.cells)):
            state[f"h{k}"] = grads.new_zeros(shape)
            state[f"c{k}"] = grads.new_zeros(shape)
        return state

    def forward(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        new = {}
        for k, cell in enumerate(self.cells):
            h, c = lstm_cell(x, state[f"h{k}"], state[f"c{k}"], cell)
            if self.averaged:
                shared = h[:self.averaged].mean(-1, keepdim=True).expand(self.averaged, *h.shape[1:])
                h = torch.cat([shared, h[self.averaged:]])
            new[f"h{k}"], new[f"c{k}"] = h, c
            x = h
        return x, new


class Head(nn.Module):
    """The top hidden state ``(hidden, S, D)`` to one update per coordinate ``(S, D)``:
    ``scale * squash(w . h + b)`` with ``squash`` the identity (paper) or tanh (RNNprop)."""

    def __init__(self, hidden: int, scale: float = 0.1, squash: str = "linear"):
        super().__init__()
        if squash not in ("linear", "tanh"):
            raise ConfigError(f"LSTM head: squash={squash!r} must be 'linear' or 'tanh'")
        self.linear = nn.Linear(hidden, 1)
        self.scale, self.squash = scale, squash

    def forward(self, h: Tensor) -> Tensor:
        out = linear(h, self.linear)[0]
        if self.squash == "tanh":
            out = torch.tanh(out)
        return out * self.scale


class LSTMNetwork(nn.Module):
    """preprocessor -> [input layer] -> stacked LSTM -> head, for some coordinates of an optimizee."""

    def __init__(self, preprocessor: Preprocessor, lstm: StackedLSTM, head: Head, encoder: nn.Module | None = None):
        super().__init__()
        self.preprocessor, self.encoder, self.lstm, self.head = preprocessor, encoder, lstm, head

    def init(self, params: Tensor) -> State:
        return {**_prefixed("pre.", self.preprocessor.init(params)), **self.lstm.init(params)}

    def step(self, grads: Tensor, state: State) -> tuple[Tensor, State]:
        x, pre = self.preprocessor.apply(grads, _unprefixed("pre.", state))
        if self.encoder is not None:
            x = self.encoder(x)
        if not torch.is_grad_enabled() and x.dtype == torch.float32 and self.fused_step():
            update, lstm_state = self._fused_step(x, state)
        else:
            top, lstm_state = self.lstm(x, state)
            update = self.head(top)
        return update, {**_prefixed("pre.", pre), **lstm_state}

    # -- the fused kernel ------------------------------------------------------------

    def fused_step(self) -> bool:
        """Whether the fused kernel computes this network's graph-free step: no averaging
        cells, float32 on the CPU, the kernel built.  An input layer runs before it and a
        tanh head after it on torch ops (RNNprop)."""
        weight = self.head.linear.weight
        return (not self.lstm.averaged and weight.dtype == torch.float32 and weight.device.type == "cpu"
                and lstm_kernel.available())

    def fused(self) -> bool:
        """Whether the fused kernel computes this network's steps and the meta-gradient of
        an unroll (:meth:`replay`): the paper's shape (no input layer, no averaging cells,
        linear head), float32 on the CPU, the kernel built."""
        return self.encoder is None and self.head.squash == "linear" and self.fused_step()

    def kernel_parameters(self) -> Tensor:
        """The meta-parameters in the kernel's flat layout (lstm_kernel.cpp)."""
        with torch.no_grad():
            parts = []
            for cell in self.lstm.cells:
                parts += [torch.cat([cell.weight_ih, cell.weight_hh], 1).view(-1), cell.bias_ih + cell.bias_hh]
            parts += [self.head.linear.weight.view(-1), self.head.linear.bias]
            return torch.cat(parts)

    def kernel_weights(self) -> list[Tensor]:
        """The meta-parameters the kernel computes with, in the order of :meth:`kernel_gradients`:
        each layer's ``weight_ih, weight_hh, bias_ih, bias_hh``, then the head's weight and bias."""
        cells = [w for cell in self.lstm.cells for w in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]
        return [*cells, self.head.linear.weight, self.head.linear.bias]

    def kernel_gradients(self, flat: Tensor) -> list[Tensor]:
        """A gradient in the kernel's flat layout, split to match :meth:`kernel_weights`
        (both biases of a layer get the gradient of their sum)."""
        hidden, grads, at = self.lstm.hidden, [], 0
        for cell in self.lstm.cells:
            n_in = cell.weight_ih.shape[1]
            w = flat[at:at + 4 * hidden * (n_in + hidden)].view(4 * hidden, n_in + hidden)
            at += w.numel()
            bias = flat[at:at + 4 * hidden]
            at += 4 * hidden
            grads += [w[:, :n_in].contiguous(), w[:, n_in:].contiguous(), bias, bias.clone()]
        if flat.numel() != at + hidden + 1:
            raise ValueError(f"a kernel gradient of {flat.numel()} numbers for a network of {at + hidden + 1}")
        return grads + [flat[at:at + hidden].view(1, hidden), flat[at + hidden:]]

    def _states(self, state: State, m: int) -> tuple[list[Tensor], list[Tensor]]:
        hidden, layers = self.lstm.hidden, range(len(self.lstm.cells))
        return ([state[f"h{k}"].reshape(hidden, m).contiguous() for k in layers],
                [state[f"c{k}"].reshape(hidden, m).contiguous() for k in layers])

    def _fused_step(self, x: Tensor, state: State) -> tuple[Tensor, State]:
        shape, hidden = x.shape[1:], self.lstm.hidden
        m = shape.numel()
        h, c = self._states(state, m)
        linear = self.head.squash == "linear"  # else the kernel gives w . h + b, squashed here as Head does
        out, h, c = lstm_kernel.step(self.kernel_parameters(), self.head.scale if linear else 1.0,
                                     x.reshape(x.shape[0], m).contiguous(), h, c, hidden)
        if not linear:
            out = torch.tanh(out).mul_(self.head.scale)
        new = {}
        for k in range(len(h)):
            new[f"h{k}"], new[f"c{k}"] = h[k].view(hidden, *shape), c[k].view(hidden, *shape)
        return out.view(shape), new

    def replay(self, grads: Tensor, state: State, updates: Tensor) -> Tensor:
        """``updates (T, ...)`` of an unroll from ``state`` fed ``grads (T, ...)``, as a
        differentiable function of the meta-parameters (the ``Optimizer.replay`` contract).
        On the kernel its backward is one call for the whole unroll; otherwise the steps are
        recomputed with a graph."""
        if self.preprocessor.stateful:
            raise ConfigError("LSTM replay: a stateful preprocessor needs the states of every step")
        steps, m = grads.shape[0], grads[0].numel()
        if not (grads.dtype == torch.float32 and grads.device.type == "cpu" and self.fused()):
            outs = []
            for t in range(steps):
                update, state = self.step(grads[t], state)
                outs.append(update)
            return torch.stack(outs)
        x = self.preprocessor.apply(grads, {})[0]  # (F, T, ...)
        x = x.reshape(x.shape[0], steps, m).transpose(0, 1).contiguous()
        h0, c0 = self._states(state, m)
        return _Replay.apply(_Unrolled(self, self.kernel_parameters(), x, h0, c0, updates.detach()),
                             *self.kernel_weights())


@dataclass
class _Unrolled:
    """What the kernel's backward of one unroll needs: the network, its flat meta-parameters,
    the LSTM inputs ``x (T, F, M)``, the state before the unroll, and the updates made."""

    net: LSTMNetwork
    params: Tensor
    x: Tensor
    h0: list
    c0: list
    updates: Tensor


class _Replay(torch.autograd.Function):
    """Returns the unroll's updates; the backward is the kernel's backpropagation through
    the whole unroll, split into the gradients of each LSTM layer's and the head's weights."""

    @staticmethod
    def forward(ctx, unrolled: _Unrolled, *weights):
        ctx.unrolled = unrolled
        return unrolled.updates

    @staticmethod
    @once_differentiable
    def backward(ctx, d_updates):
        u = ctx.unrolled
        net, hidden = u.net, u.net.lstm.hidden
        d_out = d_updates.reshape(u.x.shape[0], -1).contiguous()
        flat = lstm_kernel.unroll_backward(u.params, net.head.scale, u.x, u.h0, u.c0, d_out, hidden)
        del ctx.unrolled
        return (None, *net.kernel_gradients(flat))


def _prefixed(prefix: str, state: Mapping[str, Tensor]) -> State:
    return {prefix + k: v for k, v in state.items()}


def _unprefixed(prefix: str, state: Mapping[str, Tensor]) -> State:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# -- the learned optimizer ----------------------------------------------------------

DEFAULT = "default"


class LearnedLSTM(LearnedOptimizer):
    """Meta-parameters = one or more :class:`LSTMNetwork`; ``opt_fn`` turns them into
    an :class:`~l2obench.optimizer.Optimizer` whose update is differentiable in them.

    ``networks[DEFAULT]`` serves every coordinate, except those of a task group
    that has a network of its own name (the paper's conv / fc LSTMs).
    ``transform(task, generator)`` changes training tasks per episode (RNNprop's
    random scaling); ``coordinatewise`` is False for variants that mix coordinates.
    """

    def __init__(self, networks: Mapping[str, LSTMNetwork], hyperparameters: dict, *, coordinatewise: bool = True,
                 transform: Callable | None = None):
        super().__init__()
        if DEFAULT not in networks:
            raise ConfigError(f"learned LSTM: a {DEFAULT!r} network is required, got {sorted(networks)}")
        self.networks = nn.ModuleDict(networks)
        self.capabilities = Capabilities(
            replay=len(networks) == 1 and all(
                net.encoder is None and net.head.squash == "linear" and not net.lstm.averaged
                and not net.preprocessor.stateful for net in networks.values()),
            groups=tuple(name for name in networks if name != DEFAULT), second_derivatives=False)
        self.hyperparameters = dict(hyperparameters)
        self.coordinatewise = coordinatewise
        self._transform = transform

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
                state.update(_prefixed(f"{k}.{name}.", networks[name].init(params[..., sl])))
            return state

        def update(grads: Tensor, state: State, params: Tensor):
            segments = self.segments(groups, grads.shape[-1])
            if len(segments) == 1:
                return networks[segments[0][0]].step(grads, state)
            parts, new_state = [], {}
            for k, (name, sl) in enumerate(segments):
                prefix = f"{k}.{name}."
                u, s = networks[name].step(grads[..., sl], _unprefixed(prefix, state))
                parts.append(u)
                new_state.update(_prefixed(prefix, s))
            return torch.cat(parts, -1), new_state

        # Coordinates served by different networks are not interchangeable.
        split = any(name in networks and name != DEFAULT for name in (groups or {}))
        default = networks[DEFAULT]
        replay = None
        if not split and not default.preprocessor.stateful and default.fused():
            replay = default.replay
        return Optimizer(init, update, coordinatewise=self.coordinatewise and not split, zero_grad="any",
                         replay=replay)


# -- task transforms ----------------------------------------------------------------


class RandomlyScaled:
    """``f(c * theta)`` with ``c = exp(U(-r, r))`` drawn per coordinate (Lv et al. 2017, Sec. 3.2:
    random scaling), started from ``theta_0 / c`` so the optimizee starts at the same function value."""

    def __init__(self, task, scale: Tensor):
        self.task, self.scale = task, scale
        self.dim, self.groups = task.dim, task.groups

    def init(self, seeds, device="cpu"):
        return self.task.init(seeds, device=device) / self.scale.to(device)

    def batches(self, split, seeds, device="cpu"):
        return self.task.batches(split, seeds, device=device)

    def loss(self, params, batch):
        return self.task.loss(params * self.scale.to(params.device), batch)


def random_scaling(r: float) -> Callable:
    """A ``task_transform`` drawing a fresh :class:`RandomlyScaled` task per episode (``r = 0``: off)."""

    def transform(task, generator: torch.Generator):
        if r == 0:
            return task
        c = torch.exp((torch.rand(task.dim, generator=generator) * 2 - 1) * r)
        return RandomlyScaled(task, c)

    return transform


# -- the registered variants ----------------------------------------------------------


def _network(preprocessor: Preprocessor, hidden: int, layers: int, output_scale: float, *,
             squash: str = "linear", averaged: int = 0, input_layer: bool = False) -> LSTMNetwork:
    # Creation order (encoder, LSTM layers, head) fixes how torch's RNG initialises them.
    encoder = InputLayer(preprocessor.features, hidden) if input_layer else None
    lstm_in = hidden if input_layer else preprocessor.features
    core = StackedLSTM(lstm_in, hidden, layers, averaged)
    return LSTMNetwork(preprocessor, core, Head(hidden, output_scale, squash), encoder)


def _paper_preprocessor(preprocess: bool, p: float) -> Preprocessor:
    if preprocess and p <= 0:
        raise ConfigError(f"p={p} must be positive (Appendix A preprocessing)")
    return log_sign(p) if preprocess else identity()


def lstm(hidden: int = 20, layers: int = 2, preprocess: bool = True, p: float = 10.0,
         output_scale: float = 0.1) -> LearnedLSTM:
    """The paper's coordinatewise LSTM optimizer (Sec. 2.1): 2 layers of 20 units shared by all
    coordinates, log/sign preprocessing with ``p`` (Appendix A), linear output times ``output_scale``."""
    net = _network(_paper_preprocessor(preprocess, p), hidden, layers, output_scale)
    return LearnedLSTM({DEFAULT: net}, dict(hidden=hidden, layers=layers, preprocess=preprocess, p=p,
                                            output_scale=output_scale))


def lstm_gac(hidden: int = 20, layers: int = 2, preprocess: bool = True, p: float = 10.0,
             output_scale: float = 0.1, averaged: int = 5) -> LearnedLSTM:
    """LSTM+GAC (Sec. 2.3.1): the paper's LSTM with ``averaged`` units per layer whose outputs
    are averaged over all coordinates of the optimizee at every step (not coordinatewise)."""
    net = _network(_paper_preprocessor(preprocess, p), hidden, layers, output_scale, averaged=averaged)
    return LearnedLSTM({DEFAULT: net}, dict(hidden=hidden, layers=layers, preprocess=preprocess, p=p,
                                            output_scale=output_scale, averaged=averaged), coordinatewise=False)


def rnnprop(hidden: int = 20, layers: int = 2, beta1: float = 0.95, beta2: float = 0.95, eps: float = 1e-8,
            output_scale: float = 0.1, random_scale: float = 3.0) -> LearnedLSTM:
    """RNNprop (Lv et al. 2017): Adam-like normalised inputs ``g / sqrt(v)``, ``m / sqrt(v)``, a dense
    ELU input layer, the stacked LSTM, update ``-output_scale * tanh(.)``; meta-trained on randomly
    scaled functions ``f(c * theta)``, ``c = exp(U(-random_scale, random_scale))`` per coordinate and
    episode (defaults from the authors' code: beta 0.95, 0.95; scale 0.1; r = 3)."""
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ConfigError(f"rnnprop: beta1={beta1}, beta2={beta2} must be in [0, 1)")
    if random_scale < 0:
        raise ConfigError(f"rnnprop: random_scale={random_scale} must be non-negative")
    net = _network(adam_normalised(beta1, beta2, eps), hidden, layers, -output_scale, squash="tanh",
                   input_layer=True)
    return LearnedLSTM({DEFAULT: net}, dict(hidden=hidden, layers=layers, beta1=beta1, beta2=beta2, eps=eps,
                                            output_scale=output_scale, random_scale=random_scale),
                       transform=random_scaling(random_scale))


def lstm_groups(groups: str = "conv,fc", hidden: int = 20, layers: int = 2, preprocess: bool = True,
                p: float = 10.0, output_scale: float = 0.1) -> LearnedLSTM:
    """One paper LSTM per named parameter group (Sec. 3.3: conv and fully connected layers of
    the CIFAR net), matched to the task's ``groups``; other coordinates use a default LSTM."""
    names = [n.strip() for n in groups.split(",") if n.strip()]
    if not names or len(set(names)) != len(names) or DEFAULT in names:
        raise ConfigError(f"lstm-groups: groups={groups!r} must be distinct comma-separated names "
                          f"other than {DEFAULT!r}, e.g. 'conv,fc'")
    pre = _paper_preprocessor(preprocess, p)
    networks = {name: _network(pre, hidden, layers, output_scale) for name in [*names, DEFAULT]}
    return LearnedLSTM(networks, dict(groups=groups, hidden=hidden, layers=layers, preprocess=preprocess, p=p,
                                      output_scale=output_scale))


@hookimpl
def register_learned_optimizers(register):
    register("lstm", lstm)
    register("lstm-gac", lstm_gac)
    register("rnnprop", rnnprop)
    register("lstm-groups", lstm_groups)
