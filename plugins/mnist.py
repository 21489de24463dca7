"""MNIST task families: ``mnist-mlp``, the paper's MLP optimizee (Sec. 3.2), and
``mnist-conv``, a small conv net after the paper's CIFAR-10 architecture (Sec. 3.3).

Both flatten all weights and biases of one network into one parameter vector
per seed, so ``(S, dim)`` parameters are ``S`` independent networks evaluated in
one batched call (``bmm`` for the dense layers, a grouped convolution for the
conv layers).  Seed ``s`` draws its initial parameters from
``seed_generator(s, "init")`` and its minibatches, uniformly with replacement
from the split, from ``seed_generator(s, "batches", split)``.  The loss is the
cross-entropy averaged over the minibatch.  Splits are those of the ``mnist``
data set: train (first 50,000 training images), validation (last 10,000), test
(the 10,000 t10k images).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence

import pydantic
import torch
import torch.nn.functional as F
from torch import Tensor

from l2obench.api import TaskConfig, TaskFamily, get_registry, hookimpl, images_to_float, seed_generator

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

Init = Literal["gaussian", "he"]
INIT_DOC = ("gaussian: every parameter ~ N(0, init_scale^2); "
            "he: weights ~ N(0, init_scale^2 * 2 / fan_in), biases 0")

PIXELS = 28 * 28
#: minibatch indices are drawn this many steps at a time (a fixed number, so a
#: seed's stream does not depend on how long it is read)
_INDEX_CHUNK = 64


class MNISTConfig(TaskConfig):
    """Fields shared by the MNIST families."""

    batch_size: int = pydantic.Field(128, gt=0, description="examples per minibatch")
    digits: str = pydantic.Field(
        "0123456789", description="the classes kept, e.g. '01234' for a 5-class subset (the paper's CIFAR-5)"
    )
    init: Init = pydantic.Field("gaussian", description=INIT_DOC)
    init_scale: float = pydantic.Field(0.01, ge=0, description="std of the initial parameters (see init)")

    @pydantic.field_validator("digits")
    @classmethod
    def _distinct_digits(cls, v: str) -> str:
        if len(v) < 2 or len(set(v)) != len(v) or not all(c in "0123456789" for c in v):
            raise ValueError("expected at least two distinct digits 0-9, e.g. '01234'")
        return v


class _MLPArchitecture(TaskConfig):
    hidden: int = pydantic.Field(20, gt=0, description="units per hidden layer")
    layers: int = pydantic.Field(1, ge=0, description="hidden layers (0: logistic regression)")
    activation: Activation = "sigmoid"


class MLPConfig(MNISTConfig, _MLPArchitecture):
    """The paper's MNIST optimizee is the default: 784-20-10, sigmoid, minibatch 128,
    every parameter N(0, 0.01^2) as in the public reproductions."""


class _ConvArchitecture(TaskConfig):
    channels: tuple[pydantic.PositiveInt, ...] = pydantic.Field(
        (4, 8, 16), min_length=1, max_length=4,
        description="output channels of each 3x3 conv layer, each followed by 2x2 max pooling",
    )
    hidden: int = pydantic.Field(32, gt=0, description="units of the fully connected hidden layer")
    activation: Activation = "relu"


class ConvConfig(MNISTConfig, _ConvArchitecture):
    """Small enough for a cheap CPU step; He initialisation, since without batch
    norm a 0.01 Gaussian leaves the deeper layers' signal vanishingly small."""

    init: Init = pydantic.Field("he", description=INIT_DOC)
    init_scale: float = pydantic.Field(1.0, ge=0, description="std of the initial parameters (see init)")


# -- data ----------------------------------------------------------------------

_DATA: dict[tuple[str, str, str], tuple[Tensor, Tensor]] = {}


def split_data(split: str, digits: str, device) -> tuple[Tensor, Tensor]:
    """Flat uint8 images ``(N, 784)`` and labels ``(N,)`` (indices into ``digits``) of
    ``split`` on ``device``, kept once per process and device.  Pixels stay uint8
    until a minibatch is gathered: a quarter of the bytes to move."""
    device = torch.empty(0, device=device).device
    key = (split, digits, str(device))
    if key not in _DATA:
        images, labels = get_registry().dataset("mnist").load(split)
        images = images.reshape(-1, PIXELS)
        if digits != "0123456789":
            wanted = torch.tensor([int(c) for c in digits])
            keep = torch.isin(labels, wanted)
            images, labels = images[keep], labels[keep]
            relabel = torch.full((10,), -1, dtype=torch.long)
            relabel[wanted] = torch.arange(len(digits))
            labels = relabel[labels]
        _DATA[key] = (images.to(device).contiguous(), labels.to(device).contiguous())
    return _DATA[key]


def minibatches(images: Tensor, labels: Tensor, split: str, seeds: Sequence[int],
                batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless ``(x (S, B, 784) float32, y (S, B))`` minibatches from uint8 ``images``,
    row ``i`` drawn with ``seed_generator(seeds[i], "batches", split)`` alone."""
    generators = [seed_generator(s, "batches", split) for s in seeds]
    n, S = images.shape[0], len(seeds)
    while True:
        index = torch.stack([torch.randint(n, (_INDEX_CHUNK, batch_size), generator=g) for g in generators], 1)
        for rows in index.to(images.device):
            flat = rows.reshape(-1)
            x = images_to_float(images.index_select(0, flat)).view(S, batch_size, -1)
            yield x, labels.index_select(0, flat).view(S, batch_size)


# -- networks --------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One layer's weight shape (fan-out first for convs, fan-in first for dense) and its bias size."""

    weight: tuple[int, ...]
    bias: int
    fan_in: int

    @property
    def size(self) -> int:
        return math.prod(self.weight) + self.bias


def _unflatten(params: Tensor, layers: Sequence[Layer]) -> list[tuple[Tensor, Tensor]]:
    """Per-layer views ``(S, *weight)`` and ``(S, bias)`` of flat ``(S, dim)`` parameters,
    taken by one ``split`` (its backward writes every piece's gradient into one tensor)."""
    sizes = [n for layer in layers for n in (math.prod(layer.weight), layer.bias)]
    pieces = params.split(sizes, dim=1)
    return [(w.unflatten(1, layer.weight), b) for layer, w, b in zip(layers, pieces[0::2], pieces[1::2])]


def _init(config: MNISTConfig, layers: Sequence[Layer], seeds, device) -> Tensor:
    dim = sum(layer.size for layer in layers)
    rows = []
    for s in seeds:
        theta = torch.randn(dim, generator=seed_generator(s, "init"))
        if config.init == "he":
            start = 0
            for layer in layers:
                n = math.prod(layer.weight)
                theta[start:start + n] *= math.sqrt(2.0 / layer.fan_in)
                theta[start + n:start + layer.size] = 0.0
                start += layer.size
        rows.append(theta * config.init_scale)
    return torch.stack(rows).to(device)


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy per seed: ``(S, B, C), (S, B) -> (S,)``."""
    S, B, C = logits.shape
    return F.cross_entropy(logits.reshape(S * B, C), y.reshape(S * B), reduction="none").view(S, B).mean(1)


class MNISTTask:
    """What the MNIST optimizees share: data, initialisation and the parameter layout."""

    config: MNISTConfig
    layers: tuple[Layer, ...]

    @property
    def dim(self) -> int:
        return sum(layer.size for layer in self.layers)

    def init(self, seeds, device="cpu") -> Tensor:
        return _init(self.config, self.layers, seeds, device)

    def batches(self, split, seeds, device="cpu"):
        images, labels = split_data(split, self.config.digits, device)
        return minibatches(images, labels, split, seeds, self.config.batch_size)


class MLP(MNISTTask):
    """784 - hidden x layers - classes, the activation after every hidden layer."""

    def __init__(self, config: MLPConfig):
        self.config = config
        sizes = [PIXELS] + [config.hidden] * config.layers + [len(config.digits)]
        self.layers = tuple(Layer((i, o), o, i) for i, o in zip(sizes[:-1], sizes[1:]))
        self.groups = {"fc": slice(0, self.dim)}

    def loss(self, params: Tensor, batch) -> Tensor:
        # Feature-major activations (S, features, B): each layer is W^T h + b, the
        # product shape that batched BLAS runs fastest here, forward and backward.
        x, y = batch
        act = ACTIVATIONS[self.config.activation]
        h = x.transpose(1, 2)
        weights = _unflatten(params, self.layers)
        for i, (w, b) in enumerate(weights):
            h = torch.baddbmm(b.unsqueeze(2), w.transpose(1, 2), h)
            if i < len(weights) - 1:
                h = act(h)
        return F.cross_entropy(h, y, reduction="none").mean(1)


class ConvNet(MNISTTask):
    """3x3 convs (padding 1) each with activation and 2x2 max pooling, then FC hidden, activation, FC classes.

    The paper's CIFAR net (Sec. 3.3) without batch norm.  The seeds' networks
    run as one grouped convolution, the seed index folded into the channels.
    """

    def __init__(self, config: ConvConfig):
        self.config = config
        layers, c_in, side = [], 1, 28
        for c_out in config.channels:
            layers.append(Layer((c_out, c_in, 3, 3), c_out, c_in * 9))
            c_in, side = c_out, side // 2
        self.conv_layers = len(layers)
        flat = c_in * side * side
        layers.append(Layer((flat, config.hidden), config.hidden, flat))
        layers.append(Layer((config.hidden, len(config.digits)), len(config.digits), config.hidden))
        self.layers = tuple(layers)
        n_conv = sum(layer.size for layer in layers[:self.conv_layers])
        self.groups = {"conv": slice(0, n_conv), "fc": slice(n_conv, self.dim)}

    def loss(self, params: Tensor, batch) -> Tensor:
        x, y = batch
        S, B = y.shape
        act = ACTIVATIONS[self.config.activation]
        weights = _unflatten(params, self.layers)
        h = x.view(S, B, 28, 28).transpose(0, 1).contiguous()  # (B, S * 1 channel, 28, 28)
        for w, b in weights[:self.conv_layers]:
            h = F.conv2d(h, w.flatten(0, 1), b.flatten(), padding=1, groups=S)
            h = F.max_pool2d(act(h), 2)
        h = h.reshape(B, S, -1).transpose(0, 1)  # (S, B, features)
        (w1, b1), (w2, b2) = weights[self.conv_layers:]
        h = act(torch.baddbmm(b1.unsqueeze(1), h, w1))
        return _cross_entropy(torch.baddbmm(b2.unsqueeze(1), h, w2), y)


mlp = TaskFamily(MLPConfig, MLP, description="MLP on MNIST (paper Sec. 3.2)")
conv = TaskFamily(ConvConfig, ConvNet, description="small conv net on MNIST, conv and fc groups (paper Sec. 3.3)")


@hookimpl
def register_task_families(register):
    register("mnist-mlp", mlp)
    register("mnist-conv", conv)
