"""The gradient-estimator interface of meta-training: how one episode of optimizees
turns into meta-gradients (learned_optimization's ``outer_trainers``).

An estimator is registered by a plugin (``register_estimators``) and chosen by name in
``[[meta_train]]`` (``estimator = "pes"``, ``estimator_params = {...}``).  For each
episode the meta-trainer calls :meth:`Estimator.episode` with a :class:`MetaProblem`
and iterates: every :class:`Estimate` it yields is one truncation's meta-gradient,
which the meta-trainer clips and steps with Adam before asking for the next, so an
estimator always reads the current meta-parameters from ``problem.lopt``.

The meta-objective (``objective``) is any recorded metric: ``"loss"``, the training
loss ``sum_t w_t f(theta_t)`` of Eq. 3 (the default), or ``"heldout_<name>"``, the value
``name`` of ``task.evaluate(params, "validation")`` (a task with held-out data,
:class:`HeldOutTask`) on the parameters that end each truncation; a metric named
``accuracy`` is maximised, every other one minimised.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from .config import HELDOUT_PREFIX, TRAIN_LOSS
from .errors import ConfigError
from .learned import LearnedOptimizer
from .task import Split, Task, task_metrics

#: metrics that are better higher; the meta-loss is their negative
MAXIMISED = ("accuracy",)


@runtime_checkable
class HeldOutTask(Protocol):
    """A task that also measures its optimizees on a fixed held-out evaluation set: the
    :class:`~l2obench.task.Task` protocol's optional ``metrics`` and ``evaluate``, given."""

    metrics: tuple[str, ...]

    def evaluate(self, params: Tensor, split: Split) -> Mapping[str, Tensor]:
        """``{name: (S,) tensor}`` for the ``(S, dim)`` params, e.g. ``loss`` and ``accuracy``."""


def differentiable_objective(objective: str) -> bool:
    """Whether gradients of ``objective`` flow through an unroll: only the training loss's do."""
    return objective == TRAIN_LOSS


def check_objective(objective: str, task: Task, where: str = "meta-train config") -> None:
    """Refuse a held-out objective whose metric ``task`` does not declare (:func:`task_metrics`), in
    one line (:class:`~l2obench.config.MetaTrainConfig` has checked the objective's form)."""
    if objective == TRAIN_LOSS:
        return
    name, metrics = objective.removeprefix(HELDOUT_PREFIX), task_metrics(task)
    if not metrics:
        raise ConfigError(f"{where}: objective={objective!r} needs a task with held-out data "
                          f"(metrics and evaluate(params, split)), and {type(task).__name__} has none; use "
                          f"objective = {TRAIN_LOSS!r}")
    if name not in metrics:
        raise ConfigError(f"{where}: objective={objective!r}: {type(task).__name__} has the held-out metrics "
                          f"{', '.join(metrics)}, not {name!r}; use one of "
                          f"{', '.join(HELDOUT_PREFIX + m for m in metrics)}")


def heldout_meta_loss(task: Task, params: Tensor, objective: str, rows: int) -> Tensor:
    """The held-out meta-loss of each block of ``rows`` optimizees: ``(params.shape[0] // rows,)``,
    the metric's mean over the block (negated for a maximised metric)."""
    name = objective.removeprefix(HELDOUT_PREFIX)
    values = task.evaluate(params, "validation")
    if name not in values:
        raise ConfigError(f"objective={objective!r}: {type(task).__name__}.evaluate gives "
                          f"{', '.join(sorted(values)) or 'nothing'}, not {name!r}")
    value = values[name].detach().to(params.dtype).reshape(-1, rows).mean(1)
    return -value if name in MAXIMISED else value


@dataclass
class MetaProblem:
    """What an estimator needs for one episode: the learned optimizer (its current
    meta-parameters), the episode's task and seeds, the loss weights ``w_t`` over the
    horizon, the default truncation (the config's ``unroll``), the objective, the
    generator its perturbations are drawn from, and where to run."""

    lopt: LearnedOptimizer
    task: Task
    seeds: Sequence[int]
    weights: Sequence[float]
    unroll: int
    objective: str
    generator: torch.Generator
    device: torch.device
    second_order: bool = False

    @property
    def horizon(self) -> int:
        return len(self.weights)

    @property
    def meta_params(self) -> list[Tensor]:
        """The trainable meta-parameters, in the order an estimate's ``grads`` follow."""
        return [p for p in self.lopt.parameters() if p.requires_grad]

    def spans(self, truncation: int | None) -> list[tuple[int, int]]:
        """``(start, stop)`` of each truncation of ``truncation`` steps (default: ``unroll``)."""
        k = truncation or self.unroll
        return [(s, min(s + k, self.horizon)) for s in range(0, self.horizon, k)]


@dataclass
class Estimate:
    """One truncation's outcome: the meta-gradient (one tensor or ``None`` per meta-parameter;
    ``grads=None``: nothing to learn from here), the logged meta-loss, the optimizee steps it
    ran (every particle's seeds counted), and whether it stayed finite (if not, the
    meta-trainer counts the episode as skipped and ends it)."""

    grads: list[Tensor | None] | None
    logged: float | Tensor
    steps: int
    finite: bool = True


@runtime_checkable
class Estimator(Protocol):
    """A gradient estimator: ``episode(problem)`` yields one :class:`Estimate` per truncation.

    ``differentiable``: it backpropagates through the unroll, so the objective must be
    differentiable (:func:`differentiable_objective`); ``truncation``: its steps per
    truncation (``None``: the config's ``unroll``), checked against the horizon."""

    differentiable: bool
    truncation: int | None

    def episode(self, problem: MetaProblem) -> Iterator[Estimate]:
        """Run the episode's optimizees through the horizon, yielding after each truncation."""


def check_estimator(estimator: Any, name: str, objective: str, horizon: int, where: str) -> None:
    """The cross-checks of an estimator against the settings it runs under, in one line."""
    if not isinstance(estimator, Estimator):
        raise ConfigError(f"{where}: estimator {name!r} built a {type(estimator).__name__} without "
                          f"'differentiable', 'truncation' and 'episode(problem)'; its plugin must return an "
                          f"l2obench.Estimator")
    if estimator.differentiable and not differentiable_objective(objective):
        raise ConfigError(f"{where}: estimator {name!r} backpropagates through the unroll, and objective="
                          f"{objective!r} is not differentiable there; use estimator = \"es\" or \"pes\", or "
                          f"objective = {TRAIN_LOSS!r}")
    if estimator.truncation is not None and estimator.truncation > horizon:
        raise ConfigError(f"{where}: estimator {name!r}: truncation={estimator.truncation} is longer than the "
                          f"horizon={horizon}; give at most {horizon}")
