"""Random quadratics f(theta) = ||W theta - y||^2 (paper Sec. 3.1).

Each seed draws its own ``functions`` pairs (W, y) and the optimizee's
parameters are one ``dim``-vector per pair; the loss is the mean over the pairs
(the DeepMind code's "batch of functions"; the paper uses one).  ``W`` and ``y``
are IID standard Gaussian as in the paper, or uniform on [0, 1) as in the
DeepMind code.  Splits only salt the seed: every draw is a fresh function.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pydantic
import torch

from l2obench.api import TaskConfig, TaskFamily, hookimpl, seed_generator


class QuadraticConfig(TaskConfig):
    dim: int = pydantic.Field(10, gt=0, description="dimension of theta and y")
    functions: int = pydantic.Field(1, gt=0, description="quadratics averaged into one optimizee")
    distribution: Literal["gaussian", "uniform"] = "gaussian"
    init_scale: float = pydantic.Field(0.01, ge=0, description="std of the Gaussian initial theta")


@dataclass(frozen=True)
class Quadratic:
    config: QuadraticConfig

    @property
    def dim(self) -> int:
        return self.config.dim * self.config.functions

    @property
    def groups(self):
        return {"all": slice(0, self.dim)}

    def init(self, seeds, device="cpu"):
        c = self.config
        rows = [torch.randn(self.dim, generator=seed_generator(s, "init")) * c.init_scale for s in seeds]
        return torch.stack(rows).to(device)

    def _draw(self, g: torch.Generator, *shape: int) -> torch.Tensor:
        if self.config.distribution == "gaussian":
            return torch.randn(*shape, generator=g)
        return torch.rand(*shape, generator=g)

    def batches(self, split, seeds, device="cpu"):
        c = self.config
        ws, ys = [], []
        for s in seeds:
            g = seed_generator(s, "quadratic", split)
            ws.append(self._draw(g, c.functions, c.dim, c.dim))
            ys.append(self._draw(g, c.functions, c.dim))
        batch = (torch.stack(ws).to(device), torch.stack(ys).to(device))
        while True:
            yield batch

    def _residual(self, params, batch):
        w, y = batch
        theta = params.reshape(params.shape[0], self.config.functions, self.config.dim)
        return torch.einsum("sfij,sfj->sfi", w, theta) - y

    def loss(self, params, batch):
        return self._residual(params, batch).pow(2).sum(-1).mean(-1)

    def loss_and_grad(self, params, batch):
        """The losses and their gradient ``(2 / F) W^T (W theta - y)``, written out (a run's
        steps then skip autograd's graph); the operations autograd would run, in its order."""
        w = batch[0]
        residual = self._residual(params, batch)
        loss = residual.pow(2).sum(-1).mean(-1)
        d_residual = (torch.ones_like(loss) / self.config.functions)[:, None, None].expand_as(residual) * (2 * residual)
        return loss, torch.einsum("sfij,sfi->sfj", w, d_residual).reshape(params.shape)


family = TaskFamily(QuadraticConfig, Quadratic, description=__doc__.splitlines()[0])


@hookimpl
def register_task_families(register):
    register("quadratic", family)
