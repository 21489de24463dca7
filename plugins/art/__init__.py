"""``neural-art``: the paper's style transfer as an optimizee (Andrychowicz et al. 2016,
Sec. 3.4, after Gatys et al. 2016).  The parameters are the pixels of an image; the loss
is a content loss plus Gram-matrix style losses on the features of a conv net
(:mod:`.features`), against a content and a style image that scikit-image ships
(:mod:`.images`; the extra ``l2obench[art]``).

Seeds are images: seed ``s`` starts from the content image (``init="content"``) or from
grey (``init="noise"``), plus ``init_scale`` times Gaussian noise drawn from
``seed_generator(s, "init")``, so each seed is its own image to optimize.  The task is
deterministic: every minibatch, on every split, is the same pair of targets (the content
features and the style Gram matrices, computed once per device when first asked for),
so the loss of an image is a fixed function of its pixels.  Pixels are not clipped while
optimizing; :meth:`NeuralArt.render` clips them to [0, 1] to show them.

With ``F_l`` the features at layer ``l`` (after its ReLU) and ``G_l = F_l F_l^T / (h w)``
their Gram matrix::

    loss = content_weight * mean_{l in content_layers} mean (F_l(x) - F_l(content))^2
         + style_weight   * mean_{l in style_layers}   mean (G_l(x) - G_l(style))^2
"""
from __future__ import annotations

from typing import Literal, Optional

import pydantic
import torch
from torch import Tensor

from l2obench.api import TaskConfig, TaskFamily, hookimpl, seed_generator

from .features import LAYERS, FeatureNet, block_of, gram, random_net, vgg19_net
from .images import IMAGES, load_image

Image = Literal[IMAGES]  # type: ignore[valid-type]
Layer = Literal[LAYERS]  # type: ignore[valid-type]
Layers = tuple[Layer, ...]


class NeuralArtConfig(TaskConfig):
    """The image, its targets, the loss and the feature net."""

    size: int = pydantic.Field(64, ge=8, description="side of the square image in pixels; the content and style "
                                                      "images are centre-cropped and resized to it")
    content: Image = pydantic.Field("astronaut", description=f"content image, one of {', '.join(IMAGES)}")
    style: Image = pydantic.Field("brick", description=f"style image, one of {', '.join(IMAGES)}")
    content_weight: float = pydantic.Field(1.0, ge=0, description="weight of the content loss")
    style_weight: float = pydantic.Field(10.0, ge=0, description="weight of the style loss")
    content_layers: Layers = pydantic.Field(("conv3_1",), min_length=1, description="layers of the content loss")
    style_layers: Layers = pydantic.Field(("conv1_1", "conv2_1", "conv3_1"), min_length=1,
                                          description="layers of the style loss, weighted equally")
    init: Literal["content", "noise"] = pydantic.Field(
        "content", description="start from the content image or from grey (0.5), plus seeded noise")
    init_scale: float = pydantic.Field(0.1, ge=0, description="std of the Gaussian noise added at init, per seed")
    weights: Optional[str] = pydantic.Field(
        None, description="a VGG-19 weights file (torchvision's state dict, or .safetensors); none: a seeded "
                          "random VGG-19-style net")
    width: int = pydantic.Field(8, gt=0, description="random net only: channels of its first block (VGG-19: 64)")
    net_seed: int = pydantic.Field(0, ge=0, description="random net only: the seed of its weights")
    pooling: Literal["avg", "max"] = pydantic.Field(
        "avg", description="pooling between blocks (Gatys et al. prefer avg to VGG's max)")

    @pydantic.model_validator(mode="after")
    def _fits(self):
        deepest = max(block_of(layer) for layer in (*self.content_layers, *self.style_layers))
        if self.size >> (deepest - 1) == 0:
            raise ValueError(f"size={self.size} leaves no pixel at block {deepest} (halved {deepest - 1} times); "
                             f"give size >= {2 ** (deepest - 1)} or shallower layers")
        if self.weights is not None and {"width", "net_seed"} & self.model_fields_set:
            raise ValueError("width and net_seed shape the random feature net only; with weights given the net is "
                             "VGG-19's")
        return self


class NeuralArt:
    """One content and one style image at ``size``; parameters ``(S, 3 * size * size)``."""

    def __init__(self, config: NeuralArtConfig):
        self.config = config
        self.dim = 3 * config.size ** 2
        self.groups = {"pixels": slice(0, self.dim)}
        layers = (*config.content_layers, *config.style_layers)
        depth = max(LAYERS.index(layer) for layer in layers) + 1
        self.net: FeatureNet = (vgg19_net(config.weights, depth, config.pooling) if config.weights is not None
                                else random_net(config.width, config.net_seed, depth, config.pooling))
        self.content = load_image(config.content, config.size)
        self.style = load_image(config.style, config.size)
        self._targets: dict[str, tuple] = {}

    def targets(self, device) -> tuple[FeatureNet, dict[str, Tensor], dict[str, Tensor]]:
        """The feature net on ``device`` with the content features and style Grams, computed once."""
        key = str(torch.empty(0, device=device).device)
        if key not in self._targets:
            net = self.net.to(device)
            with torch.no_grad():
                content = net.features(self.content.unsqueeze(0).to(device), self.config.content_layers)
                style = {k: gram(v) for k, v in
                         net.features(self.style.unsqueeze(0).to(device), self.config.style_layers).items()}
            self._targets[key] = (net, content, style)
        return self._targets[key]

    def init(self, seeds, device="cpu") -> Tensor:
        start = self.content if self.config.init == "content" else torch.full_like(self.content, 0.5)
        rows = [start.flatten() + self.config.init_scale * torch.randn(self.dim, generator=seed_generator(s, "init"))
                for s in seeds]
        return torch.stack(rows).to(device) if rows else torch.empty(0, self.dim, device=device)

    def batches(self, split, seeds, device="cpu"):
        """The same targets every step, on every split: the task is deterministic."""
        targets = self.targets(device)
        while True:
            yield targets

    def loss(self, params: Tensor, batch) -> Tensor:
        net, content, style = batch
        c = self.config
        images = params.reshape(-1, 3, c.size, c.size)
        feats = net.features(images, (*c.content_layers, *c.style_layers))
        content_loss = torch.stack([(feats[l] - content[l]).pow(2).flatten(1).mean(1) for l in c.content_layers])
        style_loss = torch.stack([(gram(feats[l]) - style[l]).pow(2).flatten(1).mean(1) for l in c.style_layers])
        return c.content_weight * content_loss.mean(0) + c.style_weight * style_loss.mean(0)

    # -- rendering: the images the test cells save (l2obench.Renderable) -------------
    def render(self, params: Tensor) -> Tensor:
        """Each seed's image, ``(S, size, size, 3)`` in [0, 1]."""
        size = self.config.size
        return params.detach().reshape(-1, 3, size, size).permute(0, 2, 3, 1).clamp(0, 1).cpu()

    def references(self) -> dict[str, Tensor]:
        return {f"content: {self.config.content}": self.content.permute(1, 2, 0),
                f"style: {self.config.style}": self.style.permute(1, 2, 0)}

    def caption(self) -> str:
        return f"features: {self.net.description}; {self.config.size}x{self.config.size} pixels"


neural_art = TaskFamily(NeuralArtConfig, NeuralArt,
                        description="style transfer: the pixels of an image, content and Gram style losses on "
                                    "conv features (paper Sec. 3.4); images from scikit-image, l2obench[art]")


@hookimpl
def register_task_families(register):
    register("neural-art", neural_art)
