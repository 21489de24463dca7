"""The feature network of the neural-art optimizee: VGG-19's convolutional layers
(Simonyan and Zisserman 2015), as Gatys et al. (2016) use them for style transfer.

Two sources of weights, one architecture (blocks of 2, 2, 4, 4 and 4 3x3 convs, each
followed by a ReLU, a 2x2 pooling between blocks):

- a VGG-19 weights file the user names, in torchvision's state-dict format (keys
  ``features.<i>.weight`` and ``features.<i>.bias``), read with
  ``torch.load(..., weights_only=True)`` (no code is unpickled) or from a
  ``.safetensors`` file; only the convs up to the deepest layer used are read, and
  their keys and shapes are checked;
- otherwise a fixed, randomly initialised net of the same shape, narrower (``width``
  channels in the first block, doubling per block up to 8x) and seeded, He-initialised,
  biases zero: style transfer and texture synthesis with random features is a known,
  working method (Ustyuzhaninov et al. 2017, "What does it take to generate natural
  textures?").

A layer is named after its conv, ``conv<block>_<index>`` (``conv4_2``), and its
features are taken after the ReLU.  Inputs in [0, 1] are normalised with ImageNet's
channel means and standard deviations, as torchvision's VGG-19 expects."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from l2obench.api import ConfigError

BLOCKS = (2, 2, 4, 4, 4)
VGG19_WIDTHS = (64, 128, 256, 512, 512)
#: every conv layer, in order: conv1_1, conv1_2, conv2_1, ...
LAYERS: tuple[str, ...] = tuple(f"conv{b + 1}_{i + 1}" for b, n in enumerate(BLOCKS) for i in range(n))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def block_of(layer: str) -> int:
    """The block (1-5) of a layer; its features are ``2 ** (block - 1)`` times smaller than the image."""
    return int(layer[4])


def torchvision_index(layer: str) -> int:
    """The index of ``layer`` in torchvision's ``vgg19().features`` (conv, ReLU, ..., pool)."""
    index = 0
    for b, n in enumerate(BLOCKS):
        for i in range(n):
            if layer == f"conv{b + 1}_{i + 1}":
                return index
            index += 2
        index += 1
    raise ValueError(layer)


@dataclass(frozen=True)
class FeatureNet:
    """The convs up to the deepest layer used, as ``(weight, bias)`` pairs, and the pooling."""

    convs: tuple[tuple[Tensor, Tensor], ...]
    pooling: Literal["avg", "max"]
    description: str

    def to(self, device) -> "FeatureNet":
        return FeatureNet(tuple((w.to(device), b.to(device)) for w, b in self.convs), self.pooling, self.description)

    def features(self, images: Tensor, layers: Iterable[str]) -> dict[str, Tensor]:
        """The features ``(N, C, h, w)`` of ``images`` ``(N, 3, H, W)`` at ``layers``."""
        wanted = set(layers)
        mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        x = (images - mean) / std
        pool = F.avg_pool2d if self.pooling == "avg" else F.max_pool2d
        out: dict[str, Tensor] = {}
        for name, (w, b) in zip(LAYERS, self.convs):
            if name.endswith("_1") and name != "conv1_1":
                x = pool(x, 2)
            x = torch.relu(F.conv2d(x, w, b, padding=1))
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break
        return out


def _shapes(widths: tuple[int, ...], depth: int) -> list[tuple[int, int]]:
    """(in, out) channels of the first ``depth`` convs."""
    shapes, c_in = [], 3
    for b, n in enumerate(BLOCKS):
        for _ in range(n):
            shapes.append((c_in, widths[b]))
            c_in = widths[b]
    return shapes[:depth]


def random_net(width: int, seed: int, depth: int, pooling: Literal["avg", "max"]) -> FeatureNet:
    """VGG-19's first ``depth`` convs, ``width`` channels in block 1 (doubling per block up to
    ``8 * width``), He-initialised from ``seed``, biases zero."""
    widths = tuple(width * m for m in (1, 2, 4, 8, 8))
    g = torch.Generator().manual_seed(int(seed))
    convs = []
    for c_in, c_out in _shapes(widths, depth):
        w = torch.randn(c_out, c_in, 3, 3, generator=g) * (2.0 / (c_in * 9)) ** 0.5
        convs.append((w, torch.zeros(c_out)))
    return FeatureNet(tuple(convs), pooling,
                      f"a random VGG-19-style net (width {width}, seed {seed}; no weights file given)")


def read_state_dict(path: str) -> Mapping[str, Tensor]:
    """The tensors of a weights file, without unpickling code; a problem is one line."""
    file = Path(path).expanduser()
    where = f"neural-art: weights={path!r}"
    if not file.is_file():
        raise ConfigError(f"{where}: no such file; give a VGG-19 state dict saved by torch.save (torchvision's "
                          f"format) or a .safetensors file")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on a bad file
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"{where}: cannot be read as tensors without unpickling code ({type(exc).__name__}: "
                          f"{first}); save the model's state_dict(), not the model") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{where}: holds a {type(state).__name__}, not a state dict of tensors; save "
                          f"vgg19.state_dict()")
    return state


def vgg19_net(path: str, depth: int, pooling: Literal["avg", "max"]) -> FeatureNet:
    """VGG-19's first ``depth`` convs from the torchvision state dict at ``path``, checked."""
    state = read_state_dict(path)
    where = f"neural-art: weights={path!r}"
    convs = []
    for layer, (c_in, c_out) in zip(LAYERS, _shapes(VGG19_WIDTHS, depth)):
        i = torchvision_index(layer)
        for key, shape in ((f"features.{i}.weight", (c_out, c_in, 3, 3)), (f"features.{i}.bias", (c_out,))):
            if key not in state:
                near = sorted(state)[:3]
                hint = ("; its keys lack the 'features.' prefix: save the whole model's state_dict()"
                        if f"{i}.weight" in state else "")
                raise ConfigError(f"{where}: no tensor {key!r} (layer {layer}); expected torchvision's VGG-19 "
                                  f"state dict, found keys {', '.join(near)}{', ...' if len(state) > 3 else ''}"
                                  f"{hint}")
            if tuple(state[key].shape) != shape:
                raise ConfigError(f"{where}: {key!r} (layer {layer}) has shape {tuple(state[key].shape)}, "
                                  f"VGG-19's is {shape}; is this VGG-19's state dict?")
        convs.append((state[f"features.{i}.weight"].float().contiguous(), state[f"features.{i}.bias"].float()))
    return FeatureNet(tuple(convs), pooling, f"VGG-19 from {Path(path).name}")


def gram(features: Tensor) -> Tensor:
    """Gram matrices ``F F^T / (h w)`` of features ``(N, C, h, w)``: ``(N, C, C)``."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return torch.bmm(flat, flat.transpose(1, 2)) / (h * w)
