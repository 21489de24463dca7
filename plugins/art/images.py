"""The images of the neural-art optimizee: photographs and textures that scikit-image
ships with its wheel (``skimage.data``), so they are there offline.  scikit-image is the
optional extra ``l2obench[art]``; without it a neural-art task is refused in one line.

An image is centre-cropped to a square, resized to ``size x size`` with antialiased
bilinear interpolation, and returned as floats in [0, 1], ``(3, size, size)``; a
grey-level texture is repeated over the three channels."""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from l2obench.api import ConfigError

#: the bundled images by name (``skimage.data.<name>()``): photographs and textures; any
#: of them may be the content or the style
IMAGES: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket", "camera", "immunohistochemistry",
                           "hubble_deep_field", "brick", "grass", "gravel")
EXTRA = "pip install 'l2obench[art]'"


def skimage_data():
    """``skimage.data``, or a one-line error saying which extra to install."""
    try:
        import skimage.data
    except ImportError:
        raise ConfigError(f"task family 'neural-art' takes its content and style images from scikit-image, "
                          f"which is not installed; run {EXTRA}") from None
    return skimage.data


@lru_cache(maxsize=None)
def _raw(name: str) -> Tensor:
    """The bundled image as uint8 ``(3, H, W)``, read once per process."""
    array = getattr(skimage_data(), name)()
    image = torch.from_numpy(array.copy())
    if image.ndim == 2:
        image = image.unsqueeze(-1).expand(*image.shape, 3)
    return image[..., :3].permute(2, 0, 1).contiguous()


def load_image(name: str, size: int) -> Tensor:
    """Image ``name`` centre-cropped to a square and resized to ``(3, size, size)``, in [0, 1]."""
    if name not in IMAGES:
        raise ConfigError(f"neural-art: unknown image {name!r}; choose one of {', '.join(IMAGES)}")
    image = _raw(name)
    _, h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[:, top:top + side, left:left + side].float().div(255).unsqueeze(0)
    resized = F.interpolate(square, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized[0].clamp(0, 1)
