"""Run an optimizer on a task for many seeds at once.

The recorded loss at step ``t`` is ``f(theta_t)`` on the minibatch whose
gradient makes step ``t`` (``t = 0 .. steps-1``), as the paper's figures plot it;
its sum over the steps is the paper's summed loss.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from .errors import PluginError
from .optimizer import Optimizer
from .task import Split, Task


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


@dataclass
class Trajectory:
    """Per-seed losses ``(S, steps)``, the first non-finite step per seed (-1: none) and
    the parameters after the last step, ``(S, D)``."""

    losses: Tensor
    diverged_at: Tensor
    params: Tensor | None = None

    @property
    def final(self) -> Tensor:
        return self.losses[:, -1]

    @property
    def summed(self) -> Tensor:
        return self.losses.sum(dim=1)


def loss_and_grad(task: Task, params: Tensor, batch) -> tuple[Tensor, Tensor]:
    """Per-seed losses ``(S,)`` and their gradients ``(S, D)``; no graph is kept."""
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
) -> Trajectory:
    """Optimize ``task`` from ``task.init(seeds)`` for ``steps`` steps, all seeds batched."""
    params = task.init(seeds, device=device)
    state = optimizer.init(params)
    stream = task.batches(split, seeds, device=device)
    losses = torch.empty(len(seeds), steps, dtype=params.dtype, device=params.device)
    for t in range(steps):
        loss, grad = loss_and_grad(task, params, next(stream))
        losses[:, t] = loss
        updates, state = optimizer.update(grad, state, params)
        check_updates(updates, params, optimizer, t)
        params = params + updates
    bad = ~torch.isfinite(losses)
    never = torch.full((len(seeds),), -1, dtype=torch.long, device=losses.device)
    first = torch.where(bad.any(dim=1), bad.float().argmax(dim=1), never) if steps else never
    return Trajectory(losses.cpu(), first.cpu(), params)
