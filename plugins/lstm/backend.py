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
  derivative comes from the updates themselves.  Where the steps run on the kernel
  inside :func:`~l2obench.api.steps_to_replay` (the meta-trainer's unroll), each also
  writes its gate activations into a record (:class:`_Recording`), and the backward
  reads them instead of recomputing the unroll's forward: the same meta-gradient, to
  the bit, about a tenth less of the kernel's time on the paper's workload.
- everything else (float64, other devices, ``L2OBENCH_NATIVE=0``, no compiler) runs
  on torch ops (:mod:`.cell`): the same numbers up to rounding.

Structure is checked before the kernel is asked for, so a network the kernel
cannot serve never builds it.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from l2obench.api import State, replaying, unprefixed
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
    given = x
    if raw:
        x = x.unsqueeze(0)
    shape, hidden = x.shape[1:], net.lstm.hidden
    m = shape.numel()
    h, c = _states(net, state, m)
    linear = net.head.squash == "linear"  # else the kernel gives w . h + b, squashed here as Head does
    weights = kernel_weights(net)
    recordable = raw and replaying() and not any(t.is_inference() for t in (given, *h, *c))
    recording = _recording(net, h, c, weights) if recordable else None
    record = recording.room(m) if recording is not None else None
    out, h, c = lstm_kernel.step(weights, net.head.scale if linear else 1.0,
                                 x.reshape(x.shape[0], m).contiguous(), h, c, hidden,
                                 log_sign_p=net.preprocessor.log_sign_p if raw else None, record=record)
    if recording is not None:
        recording.stepped(given, record, h, c)
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
    recording = _RECORDINGS.pop(net, None)  # a replay ends the recording of its unroll's steps
    records = None
    if recording is not None and fuses_preprocessing(net):
        records = recording.records_of(h0, c0, grads, kernel_weights(net))
    return _Replay.apply(_Unrolled(net, h0, c0, updates.detach(), records, recording), x, *kernel_weights(net))


# -- records of an unroll's steps --------------------------------------------------------

#: the most memory the records of one unroll may take (the paper's MNIST workload takes 204 MB
#: for 20 steps); beyond it the backward recomputes the unroll's forward
RECORD_BYTES = 256 << 20

#: the records of each network's current unroll, by network
_RECORDINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: records of finished unrolls, by size, to be written again (a fresh one costs page faults)
_FREE: dict[int, list[Tensor]] = {}


def _same(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    return len(a) == len(b) and all(x.data_ptr() == y.data_ptr() and x.shape == y.shape and x.stride() == y.stride()
                                    for x, y in zip(a, b))


class _Recording:
    """The records of one unroll's kernel steps (:func:`step` in :func:`~l2obench.api.replaying`),
    and what they were made from: the first state, every step's raw gradients, the weights, each
    kept with its version counter.  :meth:`records_of` gives them to a replay only where all of
    these are what the replay is given, unchanged; otherwise the backward recomputes."""

    def __init__(self, h: list[Tensor], c: list[Tensor], weights: list[Tensor]):
        self.start = [*h, *c]
        self.versions = [t._version for t in self.start]
        self.weights = [(w, w._version) for w in weights]
        self.inputs: list[tuple[Tensor, int]] = []
        self.records: list[Tensor] = []
        self.last = [(t, t._version) for t in self.start]
        self.full = False
        weakref.finalize(self, _release, self.records)

    def continues(self, h: list[Tensor], c: list[Tensor], weights: list[Tensor]) -> bool:
        """Whether a step from ``h, c`` with ``weights`` is this unroll's next one."""
        return (_same([*h, *c], [t for t, _ in self.last]) and all(t._version == n for t, n in self.last)
                and len(weights) == len(self.weights)
                and all(w is v and w._version == n for w, (v, n) in zip(weights, self.weights)))

    def room(self, m: int) -> Tensor | None:
        """A record for the next step, or None where it would pass :data:`RECORD_BYTES`."""
        if self.full:
            return None
        layers, hidden = len(self.start) // 2, self.start[0].shape[0]
        size = lstm_kernel.record_size(layers, hidden, m)
        if (len(self.records) + 1) * size * 4 > RECORD_BYTES:
            self.full = True
            _release(self.records[:])
            self.records.clear()
            return None
        free = _FREE.get(size)
        return free.pop() if free else torch.empty(size)

    def stepped(self, x: Tensor, record: Tensor | None, h: list[Tensor], c: list[Tensor]) -> None:
        self.last = [(t, t._version) for t in (*h, *c)]
        if record is not None:
            self.inputs.append((x, x._version))
            self.records.append(record)

    def records_of(self, h0: list[Tensor], c0: list[Tensor], grads: Tensor, weights: list[Tensor]) -> list[Tensor] | None:
        """The records, where the replay of ``grads`` from ``h0, c0`` with ``weights`` is this
        unroll's: its first state and inputs, with no tensor changed in place since."""
        steps = grads.shape[0]
        if self.full or len(self.records) != steps or not _same([*h0, *c0], self.start):
            return None
        if any(t._version != n for t, n in zip(self.start, self.versions)):
            return None
        if len(weights) != len(self.weights) or any(w is not v or w._version != n
                                                    for w, (v, n) in zip(weights, self.weights)):
            return None
        for (x, n), g in zip(self.inputs, grads):
            if x._version != n or x.shape != g.shape or not torch.equal(x, g):
                return None
        return self.records


def _release(records: list[Tensor]) -> None:
    """Records of a finished (or abandoned) unroll back to :data:`_FREE`, up to
    :data:`RECORD_BYTES` of them."""
    for record in records:
        free = _FREE.setdefault(record.numel(), [])
        if sum(r.numel() for rs in _FREE.values() for r in rs) * 4 + record.numel() * 4 <= RECORD_BYTES:
            free.append(record)


def _recording(net: LSTMNetwork, h: list[Tensor], c: list[Tensor], weights: list[Tensor]) -> _Recording:
    """The recording a step of ``net`` from ``h, c`` continues, or a new one from there."""
    recording = _RECORDINGS.get(net)
    if recording is None or not recording.continues(h, c, weights):
        recording = _RECORDINGS[net] = _Recording(h, c, weights)
    return recording


@dataclass
class _Unrolled:
    """What the kernel's backward of one unroll needs besides its LSTM inputs: the network,
    the state before the unroll, and the updates made."""

    net: LSTMNetwork
    h0: list
    c0: list
    updates: Tensor
    records: list | None = None  # the steps' records, where they are this unroll's
    recording: object = None  # keeps the records out of _FREE until the backward has run


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
                                          log_sign_p=pre, input_grad=ctx.needs_input_grad[1], records=u.records)
        flat, d_x = out if ctx.needs_input_grad[1] else (out, None)
        del ctx.unrolled
        return (None, d_x, *kernel_gradients(net, flat))


def implementation(device: torch.device | str = "cpu") -> dict:
    """Which implementation runs the paper's LSTM on ``device``: ``lstm_backend``
    (``"kernel"`` or ``"torch"``), ``lstm_backend_reason``, and the kernel's
    ``kernel_isa``, ``kernel_march`` and ``kernel_blocking`` when it runs (the self-check decides,
    once)."""
    if torch.device(device).type != "cpu":
        return {"lstm_backend": "torch", "lstm_backend_reason": "the fused kernel is for the CPU; "
                f"{torch.device(device).type} runs torch ops"}
    used, reason = lstm_kernel.backend()
    out = {"lstm_backend": "kernel" if used else "torch", "lstm_backend_reason": reason}
    if used:
        out.update(kernel_isa=lstm_kernel.isa(), kernel_march=lstm_kernel.march(),
                   kernel_blocking=lstm_kernel.blocking())
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
