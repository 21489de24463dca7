"""The LSTM cell the networks compute with on torch ops: one step of an LSTM layer
for every coordinate as one :class:`torch.autograd.Function` with a hand-written
backward, numerically the step of :class:`torch.nn.LSTMCell` (whose modules hold
the meta-parameters, so initialisation and parameter layout are torch's), and a
linear layer the same way.  Machinery, not model: :mod:`.network` calls only
:func:`lstm_cell` and :func:`linear`.

Tensors are feature-major, ``(features, M)`` with ``M`` coordinates of all seeds,
so every gate matrix product is one thin matrix product and gate slices are
contiguous; on the CPU the products go through oneDNN where this torch has it.
The backward is differentiable once (``once_differentiable``): a learned
optimizer built on it cannot keep second derivatives.
"""
from __future__ import annotations

import functools

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


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
