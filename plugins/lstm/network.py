"""The pieces a learned LSTM optimizer is built from (Andrychowicz et al. 2016, Sec. 2.1)::

    gradient -> preprocessor -> [input layer] -> stacked LSTM -> head -> update

The LSTM is shared by all coordinates and keeps one state per coordinate; the
head maps the top hidden state to one number per coordinate.  Tensors inside a
network are feature-major, ``(features, S, D)``.  :func:`build_network` puts the pieces
together; :mod:`.variants` shows the registered combinations.  Whether a step
runs on the fused kernel or on torch ops is :mod:`.backend`'s decision alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2obench.api import ConfigError, State, prefixed, unprefixed

from . import backend
from .cell import linear, lstm_cell
from .preprocess import Preprocessor


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
    """preprocessor -> [input layer] -> stacked LSTM -> head, for some coordinates of an optimizee.
    The preprocessor's state is kept under the prefix ``pre.``, the LSTM's as ``h0, c0, h1, ...``."""

    def __init__(self, preprocessor: Preprocessor, lstm: StackedLSTM, head: Head, encoder: nn.Module | None = None):
        super().__init__()
        self.preprocessor, self.encoder, self.lstm, self.head = preprocessor, encoder, lstm, head

    def init(self, params: Tensor) -> State:
        return {**prefixed("pre.", self.preprocessor.init(params)), **self.lstm.init(params)}

    def step(self, grads: Tensor, state: State) -> tuple[Tensor, State]:
        """One update per coordinate of ``grads (S, D)`` and the next state."""
        if backend.fuses_preprocessing(self) and backend.steps_on_kernel(self, grads):
            return backend.step(self, grads, state, raw=True)  # a stateless preprocessor: no "pre." state
        x, pre = self.preprocessor.apply(grads, unprefixed("pre.", state))
        if self.encoder is not None:
            x = self.encoder(x)
        if backend.steps_on_kernel(self, x):
            update, lstm_state = backend.step(self, x, state)
        else:
            top, lstm_state = self.lstm(x, state)
            update = self.head(top)
        return update, {**prefixed("pre.", pre), **lstm_state}

    def replay(self, grads: Tensor, state: State, updates: Tensor) -> Tensor:
        """``updates (T, ...)`` of an unroll from ``state`` fed ``grads (T, ...)``, as a
        differentiable function of the meta-parameters (the ``Optimizer.replay`` contract).
        On the kernel its backward is one call for the whole unroll; otherwise the steps are
        recomputed with a graph."""
        if backend.replays_on_kernel(self, grads):
            return backend.replay(self, grads, state, updates)
        outs = []
        for t in range(grads.shape[0]):
            update, state = self.step(grads[t], state)
            outs.append(update)
        return torch.stack(outs)


def build_network(preprocessor: Preprocessor, hidden: int = 20, layers: int = 2, output_scale: float = 0.1, *,
                  squash: str = "linear", averaged: int = 0, input_layer: bool = False) -> LSTMNetwork:
    """An :class:`LSTMNetwork`: ``preprocessor``, an ELU input layer if ``input_layer``, ``layers``
    LSTM layers of ``hidden`` units (``averaged`` of them global averaging cells), and a head
    ``output_scale * squash(w . h + b)``.  The paper's network is ``build_network(log_sign())``."""
    # Creation order (encoder, LSTM layers, head) fixes how torch's RNG initialises them.
    encoder = InputLayer(preprocessor.features, hidden) if input_layer else None
    lstm_in = hidden if input_layer else preprocessor.features
    core = StackedLSTM(lstm_in, hidden, layers, averaged)
    return LSTMNetwork(preprocessor, core, Head(hidden, output_scale, squash), encoder)
