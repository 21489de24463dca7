"""The configs of the image-classification task families (:mod:`l2obench.plugins.mnist`):
their keys, defaults, documentation and checks, apart from the networks that use them."""
from __future__ import annotations

from typing import Annotated, Literal, Optional

import pydantic
import torch
import torch.nn.functional as F

from l2obench.api import Dataset, TaskConfig, get_registry

from .image_evaluation import EvalExamples

ACTIVATIONS = {
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "elu": F.elu,
    "gelu": F.gelu,
    "softplus": F.softplus,
    "leaky_relu": F.leaky_relu,
}
Activation = Literal["sigmoid", "relu", "tanh", "elu", "gelu", "softplus", "leaky_relu"]

_aten = torch.ops.aten
#: each activation's backward ``(grad, z, act(z)) -> grad of z`` as autograd computes it
#: (torch's derivatives of these functions with their default arguments), for a gradient
#: written out that is autograd's bit for bit
ACTIVATION_GRADS = {
    "sigmoid": lambda grad, z, h: _aten.sigmoid_backward(grad, h),
    "relu": lambda grad, z, h: _aten.threshold_backward(grad, h, 0),
    "tanh": lambda grad, z, h: _aten.tanh_backward(grad, h),
    "elu": lambda grad, z, h: _aten.elu_backward(grad, 1.0, 1, 1, False, z),
    "gelu": lambda grad, z, h: _aten.gelu_backward(grad, z, approximate="none"),
    "softplus": lambda grad, z, h: _aten.softplus_backward(grad, z, 1, 20),
    "leaky_relu": lambda grad, z, h: _aten.leaky_relu_backward(grad, z, 0.01, False),
}

INIT_DOC = ("gaussian: every parameter ~ N(0, init_scale^2); "
            "he: weights ~ N(0, init_scale^2 * 2 / fan_in), biases 0")
BatchSize = Annotated[int, pydantic.Field(gt=0, description="examples per minibatch")]
Init = Annotated[Literal["gaussian", "he"], pydantic.Field(description=INIT_DOC)]
InitScale = Annotated[float, pydantic.Field(ge=0, description="std of the initial parameters (see init)")]
Hidden = Annotated[int, pydantic.Field(gt=0, description="units of the fully connected hidden layer")]



def dataset_named(name: str) -> Dataset:
    """The registered data set ``name``; an unknown one is a ConfigError listing those registered."""
    return get_registry().dataset(name)


# -- configs ------------------------------------------------------------------------


class MNISTConfig(TaskConfig):
    """Fields shared by the MNIST families; ``dataset`` and ``classes`` as the image
    families call them."""

    batch_size: BatchSize = 128
    digits: str = pydantic.Field(
        "0123456789", description="the classes kept, e.g. '01234' for a 5-class subset (the paper's CIFAR-5)"
    )
    init: Init = "gaussian"
    init_scale: InitScale = 0.01
    eval_examples: int = EvalExamples

    @pydantic.field_validator("digits")
    @classmethod
    def _distinct_digits(cls, v: str) -> str:
        if len(v) < 2 or len(set(v)) != len(v) or not all(c in "0123456789" for c in v):
            raise ValueError("expected at least two distinct digits 0-9, e.g. '01234'")
        return v

    @property
    def dataset(self) -> str:
        return "mnist"

    @property
    def classes(self) -> tuple[int, ...]:
        return tuple(int(c) for c in self.digits)


class ImageConfig(TaskConfig):
    """Fields shared by the image families: the data set and its classes, minibatches, initialisation."""

    dataset: str = pydantic.Field("mnist", description="a registered data set (l2obench list --kind dataset)")
    classes: Optional[tuple[pydantic.NonNegativeInt, ...]] = pydantic.Field(
        None, description="the labels kept, relabelled 0..k-1 in this order, e.g. [0, 1, 2, 3, 4]; None: all")
    batch_size: BatchSize = 128
    init: Init = "gaussian"
    init_scale: InitScale = 0.01
    eval_examples: int = EvalExamples

    @pydantic.field_validator("dataset")
    @classmethod
    def _registered(cls, name: str) -> str:
        dataset_named(name)
        return name

    @pydantic.field_validator("classes")
    @classmethod
    def _classes_of_the_dataset(cls, classes, info):
        if classes is None:
            return classes
        if len(classes) < 2:
            raise ValueError("a subset needs at least two classes, e.g. [0, 1, 2, 3, 4] (or none, for all)")
        if "dataset" not in info.data:
            return classes
        n = dataset_named(info.data["dataset"]).classes
        twice = sorted({c for c in classes if classes.count(c) > 1})
        if twice:
            raise ValueError(f"{', '.join(map(str, twice))} given more than once; list each class once")
        outside = [c for c in classes if c >= n]
        if outside:
            raise ValueError(f"{', '.join(map(str, outside))} out of range: data set {info.data['dataset']!r} "
                             f"has classes 0-{n - 1}")
        return classes


class _MLPArchitecture(TaskConfig):
    hidden: int = pydantic.Field(20, gt=0, description="units per hidden layer")
    layers: int = pydantic.Field(1, ge=0, description="hidden layers (0: logistic regression)")
    activation: Activation = "sigmoid"


class MLPConfig(MNISTConfig, _MLPArchitecture):
    """The paper's MNIST optimizee is the default: 784-20-10, sigmoid, minibatch 128,
    every parameter N(0, 0.01^2) as in the public reproductions."""


class ImageMLPConfig(_MLPArchitecture, ImageConfig):
    """``mnist-mlp``'s network and defaults on any data set (``classes`` for ``digits``)."""


class _ConvArchitecture(TaskConfig):
    channels: tuple[pydantic.PositiveInt, ...] = pydantic.Field(
        (4, 8, 16), min_length=1, max_length=4,
        description="output channels of each 3x3 conv layer, each followed by 2x2 max pooling",
    )
    hidden: Hidden = 32
    activation: Activation = "relu"


class ConvConfig(MNISTConfig, _ConvArchitecture):
    """Small enough for a cheap CPU step; He initialisation, since without batch
    norm a 0.01 Gaussian leaves the deeper layers' signal vanishingly small."""

    init: Init = "he"
    init_scale: InitScale = 1.0

    @property
    def kernel(self) -> int:
        return 3

    @property
    def batch_norm(self) -> bool:
        return False


class ImageConvConfig(ImageConfig):
    """``mnist-conv``'s defaults on any data set; the paper's CIFAR-10 net is
    ``dataset="cifar-10", channels=[16, 16, 16], kernel=5, batch_norm=true``."""

    channels: tuple[pydantic.PositiveInt, ...] = pydantic.Field(
        (4, 8, 16), min_length=1,
        description="output channels of each conv layer, each followed by 2x2 max pooling (halving the image's "
                    "sides, rounded down)",
    )
    kernel: Literal[1, 3, 5, 7] = pydantic.Field(
        3, description="side of the square conv kernels, zero-padded to keep the image's size")
    hidden: Hidden = 32
    activation: Activation = "relu"
    batch_norm: bool = pydantic.Field(
        False, description="batch normalisation after each conv layer (before the activation), with the "
                           "statistics of each seed's own minibatch; its scales start at 1, its shifts at 0")
    init: Init = "he"
    init_scale: InitScale = 1.0

    @pydantic.field_validator("channels")
    @classmethod
    def _poolings_fit_the_image(cls, channels, info):
        if "dataset" not in info.data:
            return channels
        _, height, width = dataset_named(info.data["dataset"]).shape
        if min(height, width) >> len(channels) == 0:
            sides = " -> ".join(str(min(height, width) >> i) for i in range(len(channels) + 1))
            fit = min(height, width).bit_length() - 1
            raise ValueError(f"{len(channels)} conv layers, each halving the image, leave nothing of the "
                             f"{height}x{width} images of data set {info.data['dataset']!r} ({sides}); "
                             f"give at most {fit} channel counts")
        return channels
