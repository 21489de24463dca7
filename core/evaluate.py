"""Run an optimizer on a task for many seeds at once.

The recorded loss at step ``t`` is ``f(theta_t)`` on the minibatch whose
gradient makes step ``t`` (``t = 0 .. steps-1``), as the paper's figures plot it;
its sum over the steps is the paper's summed loss.

A task with held-out data (:func:`l2obench.task.task_metrics`) is also evaluated on
its held-out split's fixed evaluation set at some steps (:func:`heldout_steps`: about
ten points a run and the last step): the metric at step ``t`` is that of ``theta_t``,
the parameters whose minibatch loss is recorded at ``t``.  A seed whose parameters are
no longer finite records NaN.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor

from .errors import PluginError
from .optimizer import Optimizer
from .task import Split, Task, heldout_metric, task_metrics


def check_updates(updates: Tensor, params: Tensor, optimizer: Optimizer, step: int) -> None:
    """Refuse updates whose shape, dtype or device differ from the params' (a ``(D,)``
    update would broadcast over ``(S, D)`` params unnoticed), naming the optimizer."""
    if (updates.shape, updates.dtype, updates.device) != (params.shape, params.dtype, params.device):
        raise PluginError(
            f"optimizer {optimizer_name(optimizer)} returned updates of shape {tuple(updates.shape)}, "
            f"{updates.dtype} on {updates.device} at step {step} for params of shape {tuple(params.shape)}, "
            f"{params.dtype} on {params.device}; update() must return updates shaped like params "
            f"(check it with l2obench.testing.check_optimizer)")


def optimizer_name(optimizer: Optimizer) -> str:
    """Where an optimizer's ``update`` is defined, for error messages (``module.function``)."""
    update = optimizer.update
    return f"{getattr(update, '__module__', '?')}.{getattr(update, '__qualname__', type(update).__name__)}"


def heldout_steps(horizon: int, every: Optional[int] = None) -> list[int]:
    """The steps at which a run of ``horizon`` steps records held-out metrics: every
    ``every``-th from 0 (default ``horizon // 10``, about ten points) and the last."""
    if horizon <= 0:
        return []
    every = every or max(1, horizon // 10)
    return sorted({*range(0, horizon, every), horizon - 1})


@dataclass
class Trajectory:
    """Per-seed losses ``(S, steps)`` and the first non-finite step per seed (-1: none);
    ``heldout``: per held-out metric (``heldout_loss``, ...) its ``(S, len(heldout_steps))``
    values at ``heldout_steps``; ``elapsed``: ``(steps,)`` seconds spent in optimizer steps
    before each step (held-out evaluation left out); ``params``: the parameters after the
    last step, ``(S, D)``."""

    losses: Tensor
    diverged_at: Tensor
    heldout: dict[str, Tensor] = field(default_factory=dict)
    heldout_steps: list[int] = field(default_factory=list)
    elapsed: Optional[Tensor] = None
    params: Tensor | None = None

    @property
    def final(self) -> Tensor:
        return self.losses[:, -1]

    @property
    def summed(self) -> Tensor:
        return self.losses.sum(dim=1)


def loss_and_grad(task: Task, params: Tensor, batch) -> tuple[Tensor, Tensor]:
    """Per-seed losses ``(S,)`` and their gradients ``(S, D)``; no graph is kept.  A task's
    own ``loss_and_grad`` (the Task protocol's optional written-out gradient) where it has
    one, else autograd through ``loss``."""
    own = getattr(task, "loss_and_grad", None)
    if own is not None:
        with torch.no_grad():
            return own(params.detach(), batch)
    with torch.enable_grad():
        p = params.detach().requires_grad_(True)
        loss = task.loss(p, batch)
        (grad,) = torch.autograd.grad(loss.sum(), p)
    return loss.detach(), grad


@torch.no_grad()
def run(
    optimizer: Optimizer,
    task: Task,
    seeds: Sequence[int],
    steps: int,
    split: Split = "test",
    device: torch.device | str = "cpu",
    heldout: Iterable[int] = (),
) -> Trajectory:
    """Optimize ``task`` from ``task.init(seeds)`` for ``steps`` steps, all seeds batched;
    a task with held-out metrics is evaluated on ``split`` at the steps ``heldout`` (a suite's
    cells ask for :func:`heldout_steps`; by default none, so meta-training's validation runs
    pay nothing for them)."""
    params = task.init(seeds, device=device)
    state = optimizer.init(params)
    stream = task.batches(split, seeds, device=device)
    losses = torch.empty(len(seeds), steps, dtype=params.dtype, device=params.device)
    metrics = task_metrics(task)
    at = sorted({t for t in heldout if 0 <= t < steps}) if metrics else []
    evaluated: dict[str, list[Tensor]] = {heldout_metric(m): [] for m in metrics}
    elapsed = torch.zeros(steps, dtype=torch.float64)
    spent, wanted = 0.0, set(at)
    for t in range(steps):
        if t in wanted:
            _record_heldout(task, params, split, metrics, evaluated)
        elapsed[t] = spent
        started = time.perf_counter()
        loss, grad = loss_and_grad(task, params, next(stream))
        losses[:, t] = loss
        updates, state = optimizer.update(grad, state, params)
        check_updates(updates, params, optimizer, t)
        params = params + updates
        spent += time.perf_counter() - started
    bad = ~torch.isfinite(losses)
    never = torch.full((len(seeds),), -1, dtype=torch.long, device=losses.device)
    first = torch.where(bad.any(dim=1), bad.float().argmax(dim=1), never) if steps else never
    heldout_values = {k: torch.stack(v, dim=1) if v else torch.empty(len(seeds), 0, dtype=losses.dtype)
                      for k, v in evaluated.items()}
    return Trajectory(losses.cpu(), first.cpu(), heldout_values, at, elapsed, params)


def _record_heldout(task: Task, params: Tensor, split: Split, metrics: tuple[str, ...],
                    into: dict[str, list[Tensor]]) -> None:
    """``task.evaluate`` at ``params``, each metric checked to be ``(S,)``; NaN for seeds whose
    parameters are no longer finite."""
    values = task.evaluate(params, split)
    finite = torch.isfinite(params).all(dim=1)
    S = params.shape[0]
    for name in metrics:
        value = values.get(name) if isinstance(values, dict) else None
        if not isinstance(value, Tensor) or tuple(value.shape) != (S,):
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise PluginError(f"task {type(task).__module__}.{type(task).__qualname__}.evaluate() gave {name!r} as "
                              f"{got}, expected a tensor of shape {(S,)} (it declares metrics {list(metrics)})")
        value = value.detach().to(params.dtype)
        into[heldout_metric(name)].append(torch.where(finite, value, torch.full_like(value, float("nan"))).cpu())
