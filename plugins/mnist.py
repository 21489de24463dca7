"""Image-classification task families over any registered data set: ``image-mlp``, an
MLP (the paper's MNIST optimizee, Sec. 3.2, is its default), and ``image-conv``, a
conv net (the paper's CIFAR-10 net, Sec. 3.3, down to tiny ones for tests).

``mnist-mlp`` and ``mnist-conv`` are the same networks on MNIST, with the keys
they have always had (a class subset is ``digits="01234"``), so the suites and
results written with them keep their cells and numbers.  The general families
take ``dataset`` (a registered data set, default ``"mnist"``) and ``classes``
(e.g. ``[0, 1, 2, 3, 4]``: only those labels are kept, relabelled 0..k-1 in the
order given), so that "meta-train on five labels, test on the other five" is a
change of one key.

All weights and biases of one network are one flat parameter vector per seed,
so ``(S, dim)`` parameters are ``S`` independent networks evaluated in one
batched call (``bmm`` for the dense layers, a grouped convolution for the conv
layers).  Seed ``s`` draws its initial parameters from ``seed_generator(s,
"init")`` and its minibatches, uniformly with replacement from the split, from
``seed_generator(s, "batches", split)``.  The loss is the cross-entropy averaged
over the minibatch.  The splits are the data set's own (see ``l2obench list
--kind dataset``); its files are read and checked when the task is built.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from l2obench.api import (SPLITS, ConfigError, Dataset, TaskFamily, hookimpl,
                          images_to_float, seed_generator, select_classes)

from .image_configs import (ACTIVATION_GRADS, ACTIVATIONS, ConvConfig, ImageConfig, ImageConvConfig,  # noqa: F401
                            ImageMLPConfig, MLPConfig, MNISTConfig, dataset_named)
from .image_evaluation import METRICS, evaluate_classifier

#: minibatch indices are drawn this many steps at a time (a fixed number, so a
#: seed's stream does not depend on how long it is read)
_INDEX_CHUNK = 64
#: up to this many bytes of uint8 images (whole steps of a chunk) are gathered at once
_GATHER_BYTES = 4 << 20
#: the batch-norm epsilon (torch's default)
BN_EPS = 1e-5


# -- data ----------------------------------------------------------------------

_DATA: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}


def split_data(dataset: Dataset, split: str, classes: tuple[int, ...], device) -> tuple[Tensor, Tensor]:
    """Flat uint8 images ``(N, C*H*W)`` and labels ``(N,)`` (indices into ``classes``) of
    ``split`` on ``device``, kept once per process and device.  Pixels stay uint8
    until a minibatch is gathered: a quarter of the bytes to move."""
    images, labels = dataset.load(split)
    device = torch.empty(0, device=device).device
    # the loaded tensors' memory names them; the entry keeps it alive, so the key stays unique
    key = (images.data_ptr(), tuple(images.shape), classes, str(device))
    if key not in _DATA:
        flat = images.reshape(len(images), -1)
        if classes != tuple(range(dataset.classes)):
            flat, labels = select_classes(flat, labels, classes)
        _DATA[key] = (images, flat.to(device).contiguous(), labels.to(device).contiguous())
    return _DATA[key][1:]


def minibatches(images: Tensor, labels: Tensor, split: str, seeds: Sequence[int],
                batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless ``(x (S, B, C*H*W) float32, y (S, B))`` minibatches from uint8 ``images``,
    row ``i`` drawn with ``seed_generator(seeds[i], "batches", split)`` alone."""
    generators = [seed_generator(s, "batches", split) for s in seeds]
    n, S = images.shape[0], len(seeds)
    step_bytes = S * batch_size * images[:1].numel() * images.element_size()
    block = max(1, min(_INDEX_CHUNK, _GATHER_BYTES // max(1, step_bytes)))
    while True:
        index = torch.stack([torch.randint(n, (_INDEX_CHUNK, batch_size), generator=g) for g in generators], 1)
        index = index.to(images.device)
        for start in range(0, _INDEX_CHUNK, block):
            # one index_select over several steps' scattered rows instead of one a step
            flat = index[start:start + block].reshape(-1)
            xs, ys = images.index_select(0, flat), labels.index_select(0, flat)
            for x, y in zip(xs.view(-1, S, batch_size, xs.shape[-1]), ys.view(-1, S, batch_size)):
                yield images_to_float(x), y


# -- networks --------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One layer's weight shape (fan-out first for convs, fan-in first for dense) and its
    bias size; ``norm``: a batch-norm layer, its scale as the weight and its shift as the bias."""

    weight: tuple[int, ...]
    bias: int
    fan_in: int
    norm: bool = False

    @property
    def size(self) -> int:
        return math.prod(self.weight) + self.bias


def _unflatten(params: Tensor, layers: Sequence[Layer]) -> list[tuple[Tensor, Tensor]]:
    """Per-layer views ``(S, *weight)`` and ``(S, bias)`` of flat ``(S, dim)`` parameters,
    taken by one ``split`` (its backward writes every piece's gradient into one tensor)."""
    sizes = [n for layer in layers for n in (math.prod(layer.weight), layer.bias)]
    pieces = params.split(sizes, dim=1)
    return [(w.unflatten(1, layer.weight), b) for layer, w, b in zip(layers, pieces[0::2], pieces[1::2])]


def _init(config, layers: Sequence[Layer], seeds, device) -> Tensor:
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
        theta = theta * config.init_scale
        start = 0
        for layer in layers:
            if layer.norm:
                n = math.prod(layer.weight)
                theta[start:start + n] = 1.0
                theta[start + n:start + layer.size] = 0.0
            start += layer.size
        rows.append(theta)
    return torch.stack(rows).to(device)


def _cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Mean cross-entropy per seed: ``(S, B, C), (S, B) -> (S,)``."""
    S, B, C = logits.shape
    return F.cross_entropy(logits.reshape(S * B, C), y.reshape(S * B), reduction="none").view(S, B).mean(1)


class ImageTask:
    """What the image optimizees share: the data set and its kept classes (read and
    checked here, when the task is built), initialisation, the parameter layout, and
    held-out loss and accuracy on the first ``eval_examples`` images of a split
    (:mod:`l2obench.plugins.image_evaluation`) through each network's ``logits(params, x)``:
    class scores ``(S, B, classes)`` of flat float images ``x`` ``(S, B, C*H*W)``."""

    config: MNISTConfig | ImageConfig
    layers: tuple[Layer, ...]
    metrics = METRICS

    def __init__(self, config):
        self.config = config
        self.dataset = dataset_named(config.dataset)
        self.classes = tuple(range(self.dataset.classes)) if config.classes is None else tuple(config.classes)
        for split in SPLITS:
            if len(split_data(self.dataset, split, self.classes, "cpu")[1]) == 0:
                raise ConfigError(f"classes={list(self.classes)}: the {split} split of data set "
                                  f"{config.dataset!r} has no images of these classes; choose others")

    @property
    def dim(self) -> int:
        return sum(layer.size for layer in self.layers)

    def init(self, seeds, device="cpu") -> Tensor:
        return _init(self.config, self.layers, seeds, device)

    def batches(self, split, seeds, device="cpu"):
        images, labels = split_data(self.dataset, split, self.classes, device)
        return minibatches(images, labels, split, seeds, self.config.batch_size)

    def evaluate(self, params: Tensor, split) -> dict[str, Tensor]:
        images, labels = split_data(self.dataset, split, self.classes, params.device)
        n = self.config.eval_examples
        return evaluate_classifier(self.logits, params, images[:n], labels[:n], self.config.batch_size)


class MLP(ImageTask):
    """C*H*W - hidden x layers - classes, the activation after every hidden layer."""

    def __init__(self, config: MLPConfig | ImageMLPConfig):
        super().__init__(config)
        sizes = [math.prod(self.dataset.shape)] + [config.hidden] * config.layers + [len(self.classes)]
        self.layers = tuple(Layer((i, o), o, i) for i, o in zip(sizes[:-1], sizes[1:]))
        self.groups = {"fc": slice(0, self.dim)}

    def loss(self, params: Tensor, batch) -> Tensor:
        x, y = batch
        return F.cross_entropy(self._scores(params, x), y, reduction="none").mean(1)

    def loss_and_grad(self, params: Tensor, batch) -> tuple[Tensor, Tensor]:
        """The losses and their gradient written out, without autograd's graph: the
        backward autograd runs through :meth:`loss`, its operations in its order, so the
        numbers are the same bit for bit (the cross-entropy's through its log-softmax)."""
        x, y = batch
        act_grad = ACTIVATION_GRADS[self.config.activation]
        weights = _unflatten(params, self.layers)
        inputs, pre = [], []
        z = self._forward(weights, x, inputs, pre)
        log_p = torch.log_softmax(z, 1)
        per_example = F.nll_loss(log_p, y, reduction="none")
        loss = per_example.mean(1)
        # d loss / d log_p: -1/B at each example's class (the mean's, then nll_loss's backward)
        d_example = torch.ones_like(loss).unsqueeze(1).expand_as(per_example) / per_example.shape[1]
        d_log_p = torch.zeros_like(log_p).scatter_(1, y.unsqueeze(1), -d_example.unsqueeze(1))
        dz = torch._log_softmax_backward_data(d_log_p, log_p, 1, log_p.dtype)
        pieces = []
        for i in range(len(weights) - 1, -1, -1):
            w, h = weights[i][0], inputs[i]
            # baddbmm's backward: the weights' as (W^T)'s, the bias's as autograd sums a broadcast
            pieces.append((dz.bmm(h.transpose(1, 2)).transpose(1, 2).reshape(len(params), -1),
                           dz.sum(2, keepdim=True).squeeze(2)))
            if i > 0:
                dz = act_grad(w.bmm(dz), pre[i - 1], inputs[i])
        return loss, torch.cat([t for piece in reversed(pieces) for t in piece], 1)

    def logits(self, params: Tensor, x: Tensor) -> Tensor:
        return self._scores(params, x).transpose(1, 2)

    def _scores(self, params: Tensor, x: Tensor) -> Tensor:
        """Class scores ``(S, classes, B)``.  Feature-major activations (S, features, B): each
        layer is W^T h + b, the product shape that batched BLAS runs fastest here, forward
        and backward."""
        return self._forward(_unflatten(params, self.layers), x)

    def _forward(self, weights, x: Tensor, inputs: list | None = None, pre: list | None = None) -> Tensor:
        """:meth:`_scores` from the per-layer ``weights``; appends each layer's input
        ``(S, in, B)`` to ``inputs`` and each hidden layer's ``W^T h + b`` to ``pre`` where
        given (what :meth:`loss_and_grad`'s backward reads)."""
        act = ACTIVATIONS[self.config.activation]
        h = x.transpose(1, 2)
        for i, (w, b) in enumerate(weights):
            if inputs is not None:
                inputs.append(h)
            h = torch.baddbmm(b.unsqueeze(2), w.transpose(1, 2), h)
            if i < len(weights) - 1:
                if pre is not None:
                    pre.append(h)
                h = act(h)
        return h


class ConvNet(ImageTask):
    """Square convs (zero padding keeps the size), each with optional batch norm, the
    activation and 2x2 max pooling; then FC hidden, activation, FC classes.

    The paper's CIFAR net (Sec. 3.3) is three conv layers with batch norm and ReLU
    and 32 hidden units.  The seeds' networks run as one grouped convolution, the
    seed index folded into the channels; batch norm then normalises each channel of
    each seed over that seed's minibatch alone (training-mode statistics, on every
    split: the loss is always that of the minibatch at hand; no running statistics),
    so seeds batched give what they give one at a time.  Held-out metrics normalise
    each chunk of ``batch_size`` evaluation images the same way.
    """

    def __init__(self, config: ConvConfig | ImageConvConfig):
        super().__init__(config)
        c_in, height, width = self.dataset.shape
        self.image = (c_in, height, width)
        k = config.kernel
        layers = []
        for c_out in config.channels:
            layers.append(Layer((c_out, c_in, k, k), c_out, c_in * k * k))
            if config.batch_norm:
                layers.append(Layer((c_out,), c_out, 1, norm=True))
            c_in, height, width = c_out, height // 2, width // 2
        n_conv = sum(layer.size for layer in layers)
        flat = c_in * height * width
        classes = len(self.classes)
        layers.append(Layer((flat, config.hidden), config.hidden, flat))
        layers.append(Layer((config.hidden, classes), classes, config.hidden))
        self.layers = tuple(layers)
        self.groups = {"conv": slice(0, n_conv), "fc": slice(n_conv, self.dim)}

    def loss(self, params: Tensor, batch) -> Tensor:
        x, y = batch
        return _cross_entropy(self.logits(params, x), y)

    def logits(self, params: Tensor, x: Tensor) -> Tensor:
        S, B = x.shape[:2]
        C, H, W = self.image
        act = ACTIVATIONS[self.config.activation]
        pieces = iter(_unflatten(params, self.layers))
        h = x.view(S, B, C, H, W).transpose(0, 1).reshape(B, S * C, H, W)  # seeds' channels side by side
        for _ in self.config.channels:
            w, b = next(pieces)
            h = F.conv2d(h, w.flatten(0, 1), b.flatten(), padding=self.config.kernel // 2, groups=S)
            if self.config.batch_norm:
                scale, shift = next(pieces)
                h = F.batch_norm(h, None, None, scale.flatten(), shift.flatten(), training=True, eps=BN_EPS)
            h = F.max_pool2d(act(h), 2)
        h = h.reshape(B, S, -1).transpose(0, 1)  # (S, B, features)
        (w1, b1), (w2, b2) = pieces
        h = act(torch.baddbmm(b1.unsqueeze(1), h, w1))
        return torch.baddbmm(b2.unsqueeze(1), h, w2)


mlp = TaskFamily(MLPConfig, MLP, description="MLP on MNIST (paper Sec. 3.2)")
conv = TaskFamily(ConvConfig, ConvNet, description="small conv net on MNIST, conv and fc groups (paper Sec. 3.3)")
image_mlp = TaskFamily(ImageMLPConfig, MLP, description="MLP on any image data set, optionally a subset of its classes")
image_conv = TaskFamily(ImageConvConfig, ConvNet,
                        description="conv net on any image data set, batch norm optional, conv and fc groups "
                                    "(the paper's CIFAR-10 net, Sec. 3.3)")


@hookimpl
def register_task_families(register):
    register("mnist-mlp", mlp)
    register("mnist-conv", conv)
    register("image-mlp", image_mlp)
    register("image-conv", image_conv)
