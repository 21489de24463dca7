"""Held-out metrics of the image classifiers: the cross-entropy and the accuracy on a
fixed evaluation set, the first ``eval_examples`` images of a split (the same for every
seed and step, so curves over steps and optimizers compare like with like).

The set is read in chunks of the task's minibatch size, through the network the loss
uses, so a batch-normalised net normalises each chunk with its own statistics, per
seed, exactly as it does a training minibatch; its metrics are the averages over every
example of the set.
"""
from __future__ import annotations

from typing import Callable

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor

from l2obench.api import images_to_float

#: the metrics an image classifier reports on held-out data
METRICS = ("loss", "accuracy")

EvalExamples = pydantic.Field(
    500, gt=0, description="images of the held-out split's fixed evaluation set (its first ones; all of them "
                            "if the split has fewer) on which held-out loss and accuracy are measured")


def evaluate_classifier(logits: Callable[[Tensor, Tensor], Tensor], params: Tensor, images: Tensor, labels: Tensor,
                        chunk: int) -> dict[str, Tensor]:
    """Mean cross-entropy and accuracy per seed, ``(S,)`` each, of ``logits(params, x)``
    (``x`` ``(S, B, C*H*W)`` -> ``(S, B, classes)``) over uint8 ``images`` and their ``labels``,
    ``chunk`` examples at a time."""
    S, n = params.shape[0], len(labels)
    loss = torch.zeros(S, dtype=torch.float64, device=params.device)
    correct = torch.zeros(S, dtype=torch.float64, device=params.device)
    for start in range(0, n, chunk):
        x = images_to_float(images[start:start + chunk])
        y = labels[start:start + chunk]
        b = len(y)
        scores = logits(params, x.unsqueeze(0).expand(S, b, -1))
        ce = F.cross_entropy(scores.reshape(S * b, -1), y.repeat(S), reduction="none").view(S, b)
        loss += ce.sum(1, dtype=torch.float64)
        correct += (scores.argmax(-1) == y).sum(1, dtype=torch.float64)
    return {"loss": (loss / n).to(params.dtype), "accuracy": (correct / n).to(params.dtype)}
