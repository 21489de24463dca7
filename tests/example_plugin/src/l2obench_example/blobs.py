"""An MLP with batch norm classifying Gaussian blobs: a task family written as an
ordinary ``torch.nn.Module``, made a seed-batched Task by ``module_task``.

The data set is fixed (the same for every seed): ``classes`` blobs in
``features`` dimensions, their centres drawn once, ``samples`` examples per split.
Seeds give the network's initial parameters (torch's own initialisation, drawn
for each seed) and the minibatches; ``module_task`` batches the seeds with
``torch.func`` and keeps the batch-norm buffers per seed.
"""
from __future__ import annotations

import pydantic
import torch
import torch.nn.functional as F
from torch import nn

from l2obench.api import SPLITS, TaskConfig, TaskFamily, module_task, seed_generator


class BlobsConfig(TaskConfig):
    features: int = pydantic.Field(8, gt=0, description="inputs per example")
    classes: int = pydantic.Field(3, ge=2, description="blobs, one per class")
    hidden: int = pydantic.Field(16, gt=0, description="units of the hidden layer")
    samples: int = pydantic.Field(512, gt=0, description="examples in each split")
    batch_size: int = pydantic.Field(32, ge=2, description="examples in a minibatch (batch norm needs two)")


def blobs(config: BlobsConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split's inputs ``(samples, features)`` and labels: unit Gaussians around fixed centres."""
    centres = 2 * torch.randn(config.classes, config.features, generator=seed_generator(0, "blob-centres"))
    g = seed_generator(0, "blobs", split)
    labels = torch.randint(config.classes, (config.samples,), generator=g)
    return centres[labels] + torch.randn(config.samples, config.features, generator=g), labels


def build(config: BlobsConfig):
    def network() -> nn.Module:
        return nn.Sequential(nn.Linear(config.features, config.hidden), nn.BatchNorm1d(config.hidden), nn.ReLU(),
                             nn.Linear(config.hidden, config.classes))

    data = {split: blobs(config, split) for split in SPLITS}
    return module_task(network, data, F.cross_entropy, batch_size=config.batch_size)


family = TaskFamily(BlobsConfig, build, description=__doc__.splitlines()[0])
