"""Logistic regression on synthetic data, one data set per seed.

Each seed draws true weights ``w*``; each split draws ``samples`` Gaussian
feature vectors with labels ``1[x . w* + noise * eps > 0]``.  The optimizee's
parameters are the weights and a bias (groups ``weights`` and ``bias``); the
loss is the mean binary cross-entropy on a minibatch.  Everything is batched
over seeds, and row ``i`` depends on ``seeds[i]`` alone, as l2obench's Task
contract asks.
"""
from __future__ import annotations

from dataclasses import dataclass

import pydantic
import torch
import torch.nn.functional as F

from l2obench.api import TaskConfig, TaskFamily, seed_generator


class LogisticConfig(TaskConfig):
    features: int = pydantic.Field(10, gt=0, description="number of input features")
    samples: int = pydantic.Field(1000, gt=0, description="examples in each split, per seed")
    batch_size: int = pydantic.Field(32, gt=0, description="examples in a minibatch")
    noise: float = pydantic.Field(0.5, ge=0, description="std of the label noise added to x . w*")
    init_scale: float = pydantic.Field(0.01, ge=0, description="std of the Gaussian initial parameters")


@dataclass(frozen=True)
class LogisticRegression:
    config: LogisticConfig

    @property
    def dim(self) -> int:
        return self.config.features + 1

    @property
    def groups(self):
        f = self.config.features
        return {"weights": slice(0, f), "bias": slice(f, f + 1)}

    def init(self, seeds, device="cpu"):
        rows = [torch.randn(self.dim, generator=seed_generator(s, "init")) for s in seeds]
        return (torch.stack(rows) * self.config.init_scale).to(device)

    def data(self, seed: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(samples, features)`` inputs and ``(samples,)`` labels of one seed's split."""
        c = self.config
        w_true = torch.randn(c.features, generator=seed_generator(seed, "logistic-truth"))
        g = seed_generator(seed, "logistic-data", split)
        x = torch.randn(c.samples, c.features, generator=g)
        y = (x @ w_true + c.noise * torch.randn(c.samples, generator=g) > 0).float()
        return x, y

    def batches(self, split, seeds, device="cpu"):
        c = self.config
        data = [self.data(s, split) for s in seeds]
        xs = torch.stack([x for x, _ in data]).to(device)
        ys = torch.stack([y for _, y in data]).to(device)
        samplers = [seed_generator(s, "logistic-batches", split) for s in seeds]
        rows = torch.arange(len(seeds), device=device).unsqueeze(-1)
        while True:
            idx = torch.stack([torch.randint(c.samples, (c.batch_size,), generator=g) for g in samplers]).to(device)
            yield xs[rows, idx], ys[rows, idx]

    def loss(self, params, batch):
        x, y = batch
        f = self.config.features
        logits = torch.einsum("sbf,sf->sb", x, params[:, :f]) + params[:, f:]
        return F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(-1)


def sample(generator: torch.Generator) -> LogisticConfig:
    """A random problem size and noise level, for meta-training over a distribution of tasks."""
    features = int(torch.randint(2, 33, (1,), generator=generator))
    noise = float(torch.rand(1, generator=generator)) * 2
    return LogisticConfig(features=features, noise=noise)


family = TaskFamily(LogisticConfig, LogisticRegression, sample=sample, description=__doc__.splitlines()[0])
