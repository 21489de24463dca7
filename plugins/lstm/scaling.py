"""RNNprop's random scaling of training tasks (Lv et al. 2017, Sec. 3.2): a learned
optimizer meta-trained on ``f(c * theta)`` for random ``c`` cannot rely on the scale
of one training function's gradients."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


class RandomlyScaled:
    """``f(c * theta)`` with ``c = exp(U(-r, r))`` drawn per coordinate (Lv et al. 2017, Sec. 3.2:
    random scaling), started from ``theta_0 / c`` so the optimizee starts at the same function value."""

    def __init__(self, task, scale: Tensor):
        self.task, self.scale = task, scale
        self.dim, self.groups = task.dim, task.groups
        self.metrics = tuple(getattr(task, "metrics", ()) or ())
        if self.metrics:  # held-out metrics of the scaled function, as the loss is
            self.evaluate = lambda params, split: task.evaluate(params * self.scale.to(params.device), split)
        if getattr(task, "loss_and_grad", None) is not None:  # its written-out gradient, by the chain rule
            self.loss_and_grad = self._loss_and_grad

    def init(self, seeds, device="cpu"):
        return self.task.init(seeds, device=device) / self.scale.to(device)

    def batches(self, split, seeds, device="cpu"):
        return self.task.batches(split, seeds, device=device)

    def loss(self, params, batch):
        return self.task.loss(params * self.scale.to(params.device), batch)

    def _loss_and_grad(self, params, batch):
        scale = self.scale.to(params)
        loss, grad = self.task.loss_and_grad(params * scale, batch)
        return loss, grad * scale


def random_scaling(r: float) -> Callable:
    """A ``task_transform`` drawing a fresh :class:`RandomlyScaled` task per episode (``r = 0``: off)."""

    def transform(task, generator: torch.Generator):
        if r == 0:
            return task
        c = torch.exp((torch.rand(task.dim, generator=generator) * 2 - 1) * r)
        return RandomlyScaled(task, c)

    return transform
