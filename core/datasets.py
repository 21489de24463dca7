"""The data-set layer that task families share: the :class:`Dataset` contract, and
the tools a data-set plugin is built from (reading IDX files, checksummed
downloads into the user cache, ``L2OBENCH_DATA_DIR``).

A data set is registered by a plugin (hook ``register_datasets``) and chosen by
name in a task config (``dataset = "fashion-mnist"``); no core module names one.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

DATA_ENV = "L2OBENCH_DATA_DIR"


@runtime_checkable
class Dataset(Protocol):
    """Labelled images with a fixed, documented split.

    ``load(split)`` returns ``(images, labels)``: ``uint8`` images of shape
    ``(N, *shape)`` and ``int64`` labels in ``0 .. classes - 1``.
    """

    #: number of labels
    classes: int
    #: shape of one image, ``(channels, height, width)``
    shape: tuple[int, ...]

    def load(self, split: str) -> tuple[Tensor, Tensor]:
        """The images and labels of ``split`` (``"train"``, ``"validation"`` or ``"test"``)."""
