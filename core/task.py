"""The optimizee interfaces: Task and TaskFamily (after learned_optimization).

A :class:`Task` is one optimization problem with a flat parameter vector of
``dim`` coordinates.  Every method is batched over *seeds*: the row ``i`` of
``init(seeds)`` and of each batch from ``batches(split, seeds)`` depends on
``seeds[i]`` alone, so 16 seeds run in one batched call give exactly what 16
one-seed calls give.  Seeds pick the random function (quadratics), the initial
parameters and the minibatches.

A task with held-out data may also report *held-out metrics*: it declares their
names in ``metrics`` (``("loss", "accuracy")`` for a classifier) and returns them from
``evaluate(params, split)``, each ``(S,)``, computed on a fixed evaluation set of the
split (the same examples for every seed and step, not a minibatch).  The results table
calls them ``heldout_loss``, ``heldout_accuracy``, ... (:func:`heldout_metric`).  A task
without held-out data (a random quadratic) simply declares none.

A :class:`TaskFamily` validates a config (a pydantic model) and builds a Task
from it; ``sample`` draws configs when a family is a distribution over them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Literal, Mapping, Protocol, Sequence, runtime_checkable

import pydantic
import torch
from torch import Tensor

from .config import describe_validation_error, validate_model  # noqa: F401  (public here too)

Split = Literal["train", "validation", "test"]
SPLITS: tuple[str, ...] = ("train", "validation", "test")


@runtime_checkable
class Task(Protocol):
    """One optimizee. ``params`` are ``(S, dim)`` tensors, one row per seed."""

    dim: int
    #: named slices of the parameter vector (e.g. ``{"conv": ..., "fc": ...}``);
    #: learned optimizers may use one network per group.
    groups: Mapping[str, slice]

    def init(self, seeds: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
        """Initial parameters, ``(len(seeds), dim)``."""

    def batches(
        self, split: Split, seeds: Sequence[int], device: torch.device | str = "cpu"
    ) -> Iterator[Any]:
        """An endless stream of minibatches for ``split``, batched over seeds.  A run of
        ``T`` steps reads its first ``T``, so a shorter run sees a prefix of a longer one's
        (tuning and test cells of several horizons read one run)."""

    def loss(self, params: Tensor, batch: Any) -> Tensor:
        """Loss of each optimizee on its minibatch: ``(S, dim) -> (S,)``."""

    # Optional, for tasks with held-out data (see the module's docstring):
    #   metrics: tuple[str, ...]                    e.g. ("loss", "accuracy")
    #   def evaluate(self, params, split) -> dict[str, Tensor]   each (S,), on the
    #       split's fixed evaluation set; row i depends on params[i] alone
    # Optional, a gradient written out instead of autograd's (runs and meta-training use it;
    # l2obench.testing.check_task_gradient checks it against autograd through loss):
    #   def loss_and_grad(self, params, batch) -> (losses (S,), gradients (S, dim))
    # A subclass or wrapper that changes loss must change loss_and_grad with it or not have
    # one (random scaling passes it on by the chain rule; a wrapper that delegates unknown
    # attributes to its task would hand out the task's unchanged gradient).


#: what the results table prefixes a task's held-out metric with (``heldout_loss``)
HELDOUT = "heldout_"


def heldout_metric(name: str) -> str:
    """The results table's name of a task's held-out metric ``name``: ``heldout_loss``."""
    return f"{HELDOUT}{name}"


def task_metrics(task: Task) -> tuple[str, ...]:
    """The held-out metrics ``task`` declares (its ``metrics``; ``()`` for a task without
    held-out data); a task that declares some without an ``evaluate`` is a plugin error."""
    from .errors import PluginError

    metrics = tuple(getattr(task, "metrics", ()) or ())
    if metrics and not callable(getattr(task, "evaluate", None)):
        raise PluginError(f"task {type(task).__module__}.{type(task).__qualname__} declares held-out metrics "
                          f"{list(metrics)} but has no evaluate(params, split); add it or declare none")
    return metrics


@runtime_checkable
class Renderable(Protocol):
    """A task whose parameters can be shown as images (neural art's pixels).  A test cell
    of such a task saves each seed's final image, the references and the caption into the
    run directory (:mod:`l2obench.artifacts`), and the report shows them in a grid."""

    def render(self, params: Tensor) -> Tensor:
        """One image per seed, ``(S, H, W, C)`` with ``C`` 1 or 3, values in [0, 1]."""

    def references(self) -> Mapping[str, Tensor]:
        """Images shown beside the results, by name (``{"content: astronaut": ...}``), ``(H, W, C)``."""

    def caption(self) -> str:
        """One line said under the images: what made them (e.g. which feature net ran)."""


def seed_generator(seed: int, *salt: int | str) -> torch.Generator:
    """A CPU generator for one seed, salted (by split, purpose) so streams never collide."""
    import zlib

    mix = zlib.crc32(repr((int(seed), *salt)).encode())
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + mix) % (2**63 - 1))


class TaskConfig(pydantic.BaseModel):
    """Base of task-family configs: unknown keys are refused, configs are immutable."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class TaskFamily:
    """A validated config in, a :class:`Task` out.

    ``config`` is a :class:`TaskConfig` subclass whose fields, with defaults, are
    the family's parameters; ``build`` makes a Task from a validated config;
    ``sample`` (optional) draws a config from a generator, for families that are
    distributions over configs.
    """

    config: type[TaskConfig]
    build: Callable[[Any], Task]
    sample: Callable[[torch.Generator], Any] | None = None
    description: str = ""
    name: str = field(default="", compare=False)

    def validate(self, **params) -> TaskConfig:
        """The config for ``params``; a mistake raises a one-line :class:`ConfigError`."""
        return validate_model(self.config, params, where=f"task family {self.name!r}")

    def task(self, config: TaskConfig | None = None, **params) -> Task:
        if config is None:
            config = self.validate(**params)
        return self.build(config)
