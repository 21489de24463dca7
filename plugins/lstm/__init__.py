"""Learned LSTM optimizers: the paper's coordinatewise LSTM (Andrychowicz et al.
2016, Sec. 2.1 and 3), its global averaging cells (Sec. 2.3.1), one LSTM per
parameter group (Sec. 3.3, CIFAR), and RNNprop (Lv et al. 2017).

Every variant is the same few pieces put together differently::

    gradient -> preprocessor -> [input layer] -> stacked LSTM -> head -> update

The model, in reading order:

- :mod:`.variants`: the registered variants, a few lines each (copy it for a new one);
- :mod:`.network`: the input layer, the stacked LSTM, the head, :class:`LSTMNetwork`
  and :func:`build_network`, which puts them together;
- :mod:`.preprocess`: gradients to LSTM inputs (raw, Appendix A's log/sign, RNNprop's);
- :mod:`.learned`: :class:`LearnedLSTM`, networks to an optimizer, one per parameter group;
- :mod:`.scaling`: RNNprop's random scaling of training tasks.

The machinery, apart: :mod:`.cell`, the LSTM cell on torch ops with a hand-written
backward, and :mod:`.backend`, which alone decides where the fused CPU kernel
(:mod:`l2obench.plugins.lstm_kernel`) computes a network instead, and why.
"""
from l2obench.api import hookimpl

from .learned import DEFAULT, LearnedLSTM
from .network import Head, InputLayer, LSTMNetwork, StackedLSTM, build_network
from .preprocess import Preprocessor, adam_normalised, identity, log_sign, paper_preprocessor
from .scaling import RandomlyScaled, random_scaling
from .variants import VARIANTS

__all__ = [
    "DEFAULT", "LearnedLSTM", "Head", "InputLayer", "LSTMNetwork", "StackedLSTM", "build_network", "Preprocessor",
    "adam_normalised", "identity", "log_sign", "paper_preprocessor", "RandomlyScaled", "random_scaling",
    "VARIANTS",
]


@hookimpl
def register_learned_optimizers(register):
    for name, factory in VARIANTS.items():
        register(name, factory)
