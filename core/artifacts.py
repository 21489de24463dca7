"""Images a test cell leaves in the run directory, for the report to show.

A task that is :class:`~l2obench.task.Renderable` (its parameters are, or can be shown
as, images) has each test cell save, next to its rows::

    DIR/artifacts/<cell key>/seed-<seed>.png   the final image of each test seed
    DIR/artifacts/<cell key>/ref-<i>.png       the task's reference images (content, style, ...)
    DIR/artifacts/<cell key>/index.json        {"cell_id", "seeds": {seed: file}, "references":
                                               {name: file}, "caption"}

The worker encodes the PNGs (:func:`render_artifacts`) and returns them as bytes with
its results, so a worker needs no shared file system; the runner writes them
(:func:`write_artifacts`) before the cell's rows, which mark the cell done.  A test cell
whose results are read from a longer run's prefix (another horizon) has none of its own.
The report reads them back with :func:`read_artifacts`.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .atomic import atomic_write_bytes
from .errors import PluginError

if TYPE_CHECKING:
    from torch import Tensor

ARTIFACTS = "artifacts"
INDEX = "index.json"


def png_bytes(image: Tensor, where: str = "render()") -> bytes:
    """An ``(H, W, C)`` (C 1 or 3) or ``(H, W)`` image with values in [0, 1] as PNG bytes."""
    import numpy as np
    from PIL import Image

    array = image.detach().float().cpu().numpy()
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise PluginError(f"{where} gave an image of shape {tuple(image.shape)}; expected (H, W, 1) or (H, W, 3)")
    pixels = (np.clip(np.nan_to_num(array, nan=0.0), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def render_artifacts(task: Any, params: Tensor, seeds: Sequence[int], cell_id: str) -> dict[str, bytes]:
    """The files of a test cell of a renderable ``task`` whose seeds ended at ``params``."""
    name = type(task).__name__
    images = task.render(params)
    if len(images) != len(seeds):
        raise PluginError(f"{name}.render() gave {len(images)} images for {len(seeds)} seeds; give one per seed")
    files = {f"seed-{s}.png": png_bytes(img, f"{name}.render()") for s, img in zip(seeds, images)}
    references = {}
    for i, (label, img) in enumerate(task.references().items()):
        references[str(label)] = f"ref-{i}.png"
        files[f"ref-{i}.png"] = png_bytes(img, f"{name}.references()[{label!r}]")
    index = {"cell_id": cell_id, "seeds": {str(s): f"seed-{s}.png" for s in seeds}, "references": references,
             "caption": str(task.caption())}
    files[INDEX] = json.dumps(index, indent=1).encode()
    return files


def artifacts_dir(directory: str | os.PathLike, key: str) -> Path:
    return Path(directory) / ARTIFACTS / key


def write_artifacts(directory: str | os.PathLike, key: str, files: Mapping[str, bytes]) -> None:
    """Write a cell's files, each atomically, the index last."""
    folder = artifacts_dir(directory, key)
    folder.mkdir(parents=True, exist_ok=True)
    for name in sorted(files, key=lambda n: n == INDEX):
        atomic_write_bytes(folder / name, files[name])


def read_artifacts(directory: str | os.PathLike, key: str) -> dict[str, Any] | None:
    """A cell's index with absolute file paths (``seeds``: seed -> path, ``references``:
    name -> path, ``caption``), or ``None`` where it has none or they are unreadable."""
    folder = artifacts_dir(directory, key)
    try:
        index = json.loads((folder / INDEX).read_text())
        seeds = {int(s): folder / f for s, f in index["seeds"].items() if (folder / f).is_file()}
        refs = {str(n): folder / f for n, f in index["references"].items() if (folder / f).is_file()}
        return {"cell_id": str(index.get("cell_id", "")), "seeds": seeds, "references": refs,
                "caption": str(index.get("caption", ""))}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
