"""Where an LSTM network runs on the fused kernel and where on torch ops: the one
place that decides, and the glue between a network and
:mod:`l2obench.plugins.lstm_kernel`.

The kernel computes one shape, a stack of LSTM layers under a linear head, in
float32 on the CPU, where it is about twice as fast as torch ops.  Hence:

- **graph-free steps** (evaluation, and meta-training's steps before a replay) run
  on the kernel for every network without global averaging cells: an input layer
  runs before it and a tanh head after it on torch ops (RNNprop).  Averaging
  cells mix coordinates between layers, which the kernel does not do.
- **replay**, the meta-gradient of a whole unroll in one backward, runs on the
  kernel for networks without averaging cells (:func:`replayable`), and only there
  does a learned LSTM give ``replay``: on torch ops a replay would recompute the
  unroll's steps with a graph, one forward pass more than backpropagating through
  the steps as they run, for the same meta-gradient.  The features are computed
  again from the unroll's gradients (a stateful preprocessor's, such as RNNprop's,
  step by step from the unroll's first state: they do not depend on the
  meta-parameters); an input layer runs on torch ops with a graph before the
  kernel, which gives the gradient with respect to its output; a tanh head's
  derivative comes from the updates themselves.
- everything else (float64, other devices, ``L2OBENCH_NATIVE=0``, no compiler) runs
  on torch ops (:mod:`.cell`): the same numbers up to rounding.

Structure is checked before the kernel is asked for, so a network the kernel
cannot serve never builds it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from l2obench.api import State, unprefixed
from l2obench.plugins import lstm_kernel

if TYPE_CHECKING:
    from .network import LSTMNetwork


# -- the decision ---------------------------------------------------------------------


def replayable(net: LSTMNetwork) -> bool:
    """Whether the kernel's backward covers a whole unroll of ``net`` (its structure
    alone): no averaging cells, which mix coordinates."""
    return not net.lstm.averaged


def _kernel_runs(net: LSTMNetwork) -> bool:
    """The meta-parameters are float32 on the CPU and the kernel is built and on."""
    weight = net.head.linear.weight
    return weight.dtype == torch.float32 and weight.device.type == "cpu" and lstm_kernel.available()


def steps_on_kernel(net: LSTMNetwork, x: Tensor) -> bool:
    """Whether the kernel computes ``net``'s LSTM and head for the features ``x`` (after
    the input layer): no graph is being built, no averaging cells, float32 on the CPU."""
    return (not torch.is_grad_enabled() and x.dtype == torch.float32 and not net.lstm.averaged
            and _kernel_runs(net))


def replays_on_kernel(net: LSTMNetwork, grads: Tensor | None = None) -> bool:
    """Whether the kernel computes the backward of an unroll of ``net`` (fed ``grads``,
    when given): :func:`replayable`, float32 on the CPU."""
    if grads is not None and not (grads.dtype == torch.float32 and grads.device.type == "cpu"):
        return False
    return replayable(net) and _kernel_runs(net)


# -- the kernel's layout of the meta-parameters ------------------------------------------


def kernel_parameters(net: LSTMNetwork) -> Tensor:
    """The meta-parameters in the flat layout of the kernel's gradient (lstm_kernel.cpp), which
    :func:`~l2obench.plugins.lstm_kernel.step` also takes in place of the weights."""
    with torch.no_grad():
        parts = []
        for cell in net.lstm.cells:
            parts += [torch.cat([cell.weight_ih, cell.weight_hh], 1).view(-1), cell.bias_ih + cell.bias_hh]
        parts += [net.head.linear.weight.view(-1), net.head.linear.bias]
        return torch.cat(parts)


def kernel_weights(net: LSTMNetwork) -> list[Tensor]:
    """The meta-parameters the kernel computes with, in the order of :func:`kernel_gradients`:
    each layer's ``weight_ih, weight_hh, bias_ih, bias_hh``, then the head's weight and bias."""
    cells = [w for cell in net.lstm.cells for w in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]
    return [*cells, net.head.linear.weight, net.head.linear.bias]


def kernel_gradients(net: LSTMNetwork, flat: Tensor) -> list[Tensor]:
    """A gradient in the kernel's flat layout, split to match :func:`kernel_weights`
    (both biases of a layer get the gradient of their sum)."""
    hidden, layers = net.lstm.hidden, len(net.lstm.cells)
    *grads, head_w, head_b = lstm_kernel.per_tensor(flat, layers, hidden, net.lstm.cells[0].weight_ih.shape[1],
                                                    bias_hh=torch.clone)
    return [*grads, head_w.view(1, hidden), head_b]


def _states(net: LSTMNetwork, state: State, m: int) -> tuple[list[Tensor], list[Tensor]]:
    hidden, layers = net.lstm.hidden, range(len(net.lstm.cells))
    # as the kernel wrote them (rows a cache line's multiple apart) where a reshape keeps them
    return ([state[f"h{k}"].reshape(hidden, m) for k in layers], [state[f"c{k}"].reshape(hidden, m) for k in layers])


# -- steps and replays on the kernel ---------------------------------------------------


def fuses_preprocessing(net: LSTMNetwork) -> bool:
    """Whether the kernel computes ``net``'s input features from the raw gradients itself
    (the paper's log/sign preprocessing, straight into the LSTM: no input layer)."""
    return net.preprocessor.log_sign_p is not None and net.encoder is None


def step(net: LSTMNetwork, x: Tensor, state: State, *, raw: bool = False) -> tuple[Tensor, State]:
    """``net``'s LSTM and head on the features ``x (F, ...)``: the update and the new LSTM
    state, as ``net.head(net.lstm(x, state))`` gives them (:func:`steps_on_kernel`).  With
    ``raw``, ``x`` is the raw gradients ``(...)`` and the kernel preprocesses them
    (:func:`fuses_preprocessing`)."""
    if raw:
        x = x.unsqueeze(0)
    shape, hidden = x.shape[1:], net.lstm.hidden
    m = shape.numel()
    h, c = _states(net, state, m)
    linear = net.head.squash == "linear"  # else the kernel gives w . h + b, squashed here as Head does
    out, h, c = lstm_kernel.step(kernel_weights(net), net.head.scale if linear else 1.0,
                                 x.reshape(x.shape[0], m).contiguous(), h, c, hidden,
                                 log_sign_p=net.preprocessor.log_sign_p if raw else None)
    if not linear:
        out = torch.tanh(out).mul_(net.head.scale)
    new = {}
    for k in range(len(h)):
        new[f"h{k}"], new[f"c{k}"] = h[k].view(hidden, *shape), c[k].view(hidden, *shape)
    return out.view(shape), new


def features(net: LSTMNetwork, grads: Tensor, state: State) -> Tensor:
    """The preprocessor's features ``(F, T, ...)`` of an unroll's gradients ``grads (T, ...)``
    from the unroll's first ``state``, without a graph (constants of the meta-parameters): a
    stateless preprocessor's for every step at once, a stateful one's step by step."""
    with torch.no_grad():
        if not net.preprocessor.stateful:
            return net.preprocessor.apply(grads, {})[0]
        pre, out = unprefixed("pre.", state), []
        for g in grads:
            x, pre = net.preprocessor.apply(g, pre)
            out.append(x)
        return torch.stack(out, 1)


def replay(net: LSTMNetwork, grads: Tensor, state: State, updates: Tensor) -> Tensor:
    """``updates (T, ...)``, made from ``state`` fed ``grads (T, ...)``, as a function of the
    meta-parameters whose backward is one kernel call for the whole unroll (:func:`replays_on_kernel`),
    and the input layer's backward through autograd where there is one (it is applied to the
    features of every step at once, ``(F, T, ...)``).  A tanh head's derivative is read from
    ``updates``, which must be the updates the steps made (the ``replay`` contract)."""
    steps, m = grads.shape[0], grads[0].numel()
    if fuses_preprocessing(net):
        x = grads.reshape(steps, 1, m).contiguous()  # the kernel computes the features
    else:
        x = features(net, grads, state)  # (F, T, ...)
        if net.encoder is not None:
            x = net.encoder(x)  # with the graph of the input layer's weights
        x = x.reshape(x.shape[0], steps, m).transpose(0, 1).contiguous()
    h0, c0 = _states(net, state, m)
    return _Replay.apply(_Unrolled(net, h0, c0, updates.detach()), x, *kernel_weights(net))


@dataclass
class _Unrolled:
    """What the kernel's backward of one unroll needs besides its LSTM inputs: the network,
    the state before the unroll, and the updates made."""

    net: LSTMNetwork
    h0: list
    c0: list
    updates: Tensor


class _Replay(torch.autograd.Function):
    """Returns the unroll's updates from its LSTM inputs ``x (T, F, M)`` (the raw gradients
    ``(T, 1, M)`` where :func:`fuses_preprocessing`); the backward is the kernel's
    backpropagation through the whole unroll, split into the gradients of each LSTM layer's
    and the head's weights, and the gradient with respect to ``x`` where an input layer made it."""

    @staticmethod
    def forward(ctx, unrolled: _Unrolled, x: Tensor, *weights):
        ctx.unrolled = unrolled
        # a weight (or the returned updates, which a tanh head's derivative reads) changed in
        # place before the backward is an error
        ctx.save_for_backward(x, unrolled.updates, *weights)
        return unrolled.updates

    @staticmethod
    @once_differentiable
    def backward(ctx, d_updates):
        u = ctx.unrolled
        net, hidden = u.net, u.net.lstm.hidden
        x, updates, *weights = ctx.saved_tensors
        d_out = d_updates.reshape(x.shape[0], -1)
        scale = net.head.scale
        if net.head.squash == "tanh":  # update = scale tanh(z): d z = d update scale (1 - (update / scale)^2)
            y = updates.reshape(d_out.shape) / scale  # tanh(z), up to rounding (which may pass 1 at saturation)
            d_out, scale = d_out * scale * (1 - y * y).clamp_min(0), 1.0
        pre = net.preprocessor.log_sign_p if fuses_preprocessing(net) else None
        out = lstm_kernel.unroll_backward(weights, scale, x, u.h0, u.c0, d_out.contiguous(), hidden,
                                          log_sign_p=pre, input_grad=ctx.needs_input_grad[1])
        flat, d_x = out if ctx.needs_input_grad[1] else (out, None)
        del ctx.unrolled
        return (None, d_x, *kernel_gradients(net, flat))


def implementation(device: torch.device | str = "cpu") -> dict:
    """Which implementation runs the paper's LSTM on ``device``: ``lstm_backend``
    (``"kernel"`` or ``"torch"``), ``lstm_backend_reason``, and the kernel's
    ``kernel_isa`` and ``kernel_march`` when it runs (the self-check decides, once)."""
    if torch.device(device).type != "cpu":
        return {"lstm_backend": "torch", "lstm_backend_reason": "the fused kernel is for the CPU; "
                f"{torch.device(device).type} runs torch ops"}
    used, reason = lstm_kernel.backend()
    out = {"lstm_backend": "kernel" if used else "torch", "lstm_backend_reason": reason}
    if used:
        out.update(kernel_isa=lstm_kernel.isa(), kernel_march=lstm_kernel.march())
    return out


def builds() -> list[dict]:
    """The kernel builds to compare: ``native`` and, on x86-64, ``x86-64-v4`` (AVX-512),
    ``x86-64-v3`` (AVX2) and ``x86-64`` (generic), each with its instruction set, the
    environment that selects it, and the CPU flags it needs that this CPU lacks."""
    import platform
    import subprocess

    marches = ["native"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        marches += list(lstm_kernel.X86_MARCHES)
    out = []
    for march in marches:
        try:
            isa = lstm_kernel.isa_for(march)
            missing = lstm_kernel.missing_cpu_flags(march)
        except (OSError, subprocess.SubprocessError) as exc:
            isa, missing = "?", [f"no compiler for it ({exc})"]
        out.append({"name": f"kernel -march={march}", "march": march, "isa": isa, "missing": missing,
                    "env": {"L2OBENCH_NATIVE": "1", "L2OBENCH_KERNEL_MARCH": march}})
    return out
