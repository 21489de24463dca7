"""Learned optimizers built on features rather than raw gradients, after the paper:
``mlp-lopt`` (Metz et al. 2022, a per-parameter MLP over momentum, second-moment and
parameter features; :mod:`.mlp_lopt`) and ``hrnn`` (Wichrowska et al. 2017, the
hierarchical RNN; :mod:`.hrnn`).  :mod:`.tensors` holds what both share: the task's
parameter groups as tensors, and reductions over them."""
from l2obench.api import hookimpl

from . import hrnn, mlp_lopt
from .hrnn import HierarchicalRNN
from .mlp_lopt import MLPLOpt
from .tensors import Segments, second_moment_normalise

__all__ = ["HierarchicalRNN", "MLPLOpt", "Segments", "second_moment_normalise", "VARIANTS"]

#: name -> factory, in the order they are registered
VARIANTS = {"mlp-lopt": mlp_lopt.mlp_lopt, "hrnn": hrnn.hrnn}


@hookimpl
def register_learned_optimizers(register):
    for name, factory in VARIANTS.items():
        register(name, factory)
