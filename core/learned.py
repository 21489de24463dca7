"""The learned-optimizer interface: meta-parameters plus a function that turns
them into an ordinary :class:`~l2obench.optimizer.Optimizer` (learned_optimization's
``opt_fn``), so one meta-trainer and one evaluator serve every variant.

The meta-parameters are the parameters of a ``torch.nn.Module``; the optimizer
returned by :meth:`LearnedOptimizer.opt_fn` is differentiable with respect to
them, which is what meta-training backpropagates through.  It may also carry
``replay`` (see :class:`~l2obench.optimizer.Optimizer`), so that meta-training
runs an unroll's steps without a graph and backpropagates through it at once.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .optimizer import Optimizer


class LearnedOptimizer(torch.nn.Module):
    """Base class of learned optimizers: subclasses implement :meth:`opt_fn`.

    ``hyperparameters`` records the keyword arguments the plugin factory was
    called with, so a checkpoint can rebuild the same network.
    """

    hyperparameters: dict
    #: names of task parameter groups that have meta-parameters of their own
    #: (e.g. ``("conv", "fc")``); the conformance kit unrolls on a task exposing them.
    group_names: tuple[str, ...] = ()

    def opt_fn(self, groups: Mapping[str, slice] | None = None) -> Optimizer:
        """The optimizer these meta-parameters define. ``groups`` are the task's
        named parameter slices, for variants with one network per group."""
        raise NotImplementedError

    def task_transform(self, task, generator: torch.Generator):
        """The task to meta-train on for one episode; variants that augment
        training problems (e.g. RNNprop's random scaling) override this."""
        return task
