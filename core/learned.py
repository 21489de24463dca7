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

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .optimizer import Optimizer


@dataclass(frozen=True)
class Capabilities:
    """What a learned optimizer can do, as data read by the meta-trainer, the
    conformance kit, ``l2obench list`` and the report (never probed with ``getattr``).

    - ``replay``: the variant's networks can give :attr:`Optimizer.replay`, so meta-training
      runs an unroll without a graph and backpropagates through ``replay`` once; a property of
      the variant's structure: ``opt_fn()`` carries ``replay`` where its backend serves it (the
      ``lstm`` plugin's fused kernel: float32 on the CPU), and the meta-trainer falls back to
      the steps' graph elsewhere.
    - ``groups``: names of task parameter groups with meta-parameters of their own
      (e.g. ``("conv", "fc")``); the kit unrolls on a task exposing them.
    - ``second_derivatives``: ``update`` is twice differentiable, so meta-training may
      keep second derivatives (``second_order = true``); ``False`` where a hand-written
      backward is differentiable once only.
    """

    replay: bool = False
    groups: tuple[str, ...] = ()
    second_derivatives: bool = True

    def describe(self) -> dict[str, Any]:
        return {"replay": self.replay, "groups": list(self.groups), "second_derivatives": self.second_derivatives}


class LearnedOptimizer(torch.nn.Module):
    """Base class of learned optimizers: subclasses implement :meth:`opt_fn`.

    ``name`` and ``hyperparameters`` are recorded by the registry when it builds one
    (``Registry.learned(name, **hyperparameters)``: the registered name and every
    keyword argument of the factory, defaults included), so a checkpoint needs only
    the optimizer to rebuild the same network; a plugin never sets them by hand.
    """

    #: the registered name (``None`` for an instance not built through the registry)
    name: str | None = None
    #: the factory's keyword arguments, defaults included (set by the registry)
    hyperparameters: dict = {}
    capabilities: Capabilities = Capabilities()

    @property
    def group_names(self) -> tuple[str, ...]:
        """``capabilities.groups``: the task parameter groups with networks of their own."""
        return self.capabilities.groups

    def opt_fn(self, groups: Mapping[str, slice] | None = None) -> Optimizer:
        """The optimizer these meta-parameters define. ``groups`` are the task's
        named parameter slices, for variants with one network per group."""
        raise NotImplementedError

    def implementation(self, device: torch.device | str = "cpu") -> dict[str, Any]:
        """What computes this optimizer's steps on ``device`` and why, for benchmarks to
        report (the ``lstm`` plugin: ``{"lstm_backend": "kernel" or "torch",
        "lstm_backend_reason": ...}``); empty where there is nothing to choose."""
        return {}

    def builds(self) -> list[dict[str, Any]]:
        """The native builds of this optimizer a benchmark may compare, each a dict with
        ``name``, ``env`` (the environment variables that select it in a fresh process)
        and ``missing`` (what this CPU lacks to run it; empty if it runs); none by default."""
        return []

    def task_transform(self, task, generator: torch.Generator):
        """The task to meta-train on for one episode; variants that augment
        training problems (e.g. RNNprop's random scaling) override this."""
        return task
