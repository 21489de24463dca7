"""The registered learned LSTM optimizers, each a few lines on the shared pieces;
the file to copy for a new variant.

A variant picks a preprocessor (:mod:`.preprocess`), builds its networks with
:func:`~.network.build_network` and wraps them in a :class:`~.learned.LearnedLSTM`.  The
factory's keyword arguments and defaults are its hyperparameters: the registry
checks them, records them on the optimizer and rebuilds it from a checkpoint with
them.  Creating the pieces in the same order gives the same initial
meta-parameters for the same torch seed.

What each variant can do is data (``lopt.capabilities``), derived from its
networks: ``replay`` (the fused kernel's backward of a whole unroll) for networks
without averaging cells, per-group networks as ``groups``, and never second derivatives.
"""
from __future__ import annotations

from l2obench.api import ConfigError

from .learned import DEFAULT, LearnedLSTM
from .network import build_network
from .preprocess import adam_normalised, paper_preprocessor
from .scaling import random_scaling


def lstm(hidden: int = 20, layers: int = 2, preprocess: bool = True, p: float = 10.0,
         output_scale: float = 0.1) -> LearnedLSTM:
    """The paper's coordinatewise LSTM optimizer (Sec. 2.1): 2 layers of 20 units shared by all
    coordinates, log/sign preprocessing with ``p`` (Appendix A), linear output times ``output_scale``.
    Replay: yes, on the fused kernel."""
    return LearnedLSTM(build_network(paper_preprocessor(preprocess, p), hidden, layers, output_scale))


def lstm_gac(hidden: int = 20, layers: int = 2, preprocess: bool = True, p: float = 10.0,
             output_scale: float = 0.1, averaged: int = 5) -> LearnedLSTM:
    """LSTM+GAC (Sec. 2.3.1): the paper's LSTM with ``averaged`` units per layer whose outputs
    are averaged over all coordinates of the optimizee at every step (not coordinatewise).
    Replay: no (the kernel has no averaging cells); meta-training backpropagates through the steps."""
    net = build_network(paper_preprocessor(preprocess, p), hidden, layers, output_scale, averaged=averaged)
    return LearnedLSTM(net, coordinatewise=False)


def rnnprop(hidden: int = 20, layers: int = 2, beta1: float = 0.95, beta2: float = 0.95, eps: float = 1e-8,
            output_scale: float = 0.1, random_scale: float = 3.0) -> LearnedLSTM:
    """RNNprop (Lv et al. 2017): Adam-like normalised inputs ``g / sqrt(v)``, ``m / sqrt(v)``, a dense
    ELU input layer, the stacked LSTM, update ``-output_scale * tanh(.)``; meta-trained on randomly
    scaled functions ``f(c * theta)``, ``c = exp(U(-random_scale, random_scale))`` per coordinate and
    episode (defaults from the authors' code: beta 0.95, 0.95; scale 0.1; r = 3).
    Replay: yes, on the fused kernel (the inputs computed again from the unroll's gradients, the input
    layer's backward through autograd)."""
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ConfigError(f"rnnprop: beta1={beta1}, beta2={beta2} must be in [0, 1)")
    if random_scale < 0:
        raise ConfigError(f"rnnprop: random_scale={random_scale} must be non-negative")
    if output_scale == 0:
        raise ConfigError("rnnprop: output_scale=0 makes every update zero; give a nonzero scale (default 0.1)")
    net = build_network(adam_normalised(beta1, beta2, eps), hidden, layers, -output_scale, squash="tanh",
                  input_layer=True)
    return LearnedLSTM(net, transform=random_scaling(random_scale))


def lstm_groups(groups: str = "conv,fc", hidden: int = 20, layers: int = 2, preprocess: bool = True,
                p: float = 10.0, output_scale: float = 0.1) -> LearnedLSTM:
    """One paper LSTM per named parameter group (Sec. 3.3: conv and fully connected layers of
    the CIFAR net), matched to the task's ``groups``; other coordinates use a default LSTM.
    Replay: yes, on the fused kernel, each group's coordinates by the group's own LSTM."""
    names = [n.strip() for n in groups.split(",") if n.strip()]
    if not names or len(set(names)) != len(names) or DEFAULT in names:
        raise ConfigError(f"lstm-groups: groups={groups!r} must be distinct comma-separated names "
                          f"other than {DEFAULT!r}, e.g. 'conv,fc'")
    pre = paper_preprocessor(preprocess, p)
    return LearnedLSTM({name: build_network(pre, hidden, layers, output_scale) for name in [*names, DEFAULT]})


#: name -> factory, in the order they are registered
VARIANTS = {"lstm": lstm, "lstm-gac": lstm_gac, "rnnprop": rnnprop, "lstm-groups": lstm_groups}
