"""Meta-training's progress file: what :func:`~l2obench.metatrain.meta_train` saves at the
end of every epoch (meta-parameters, meta-optimizer, best so far, counters, every random
stream), so that a rerun resumes and gives the checkpoint an uninterrupted run gives."""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from .atomic import atomic_write_bytes
from .config import MetaTrainConfig
from .errors import ConfigError, L2OWarning


#: What a progress file of :func:`meta_train` says it is.
PROGRESS_FORMAT = "l2obench-meta-train-progress/1"


def json_config(config: MetaTrainConfig) -> str:
    import json

    return json.dumps(config.describe(), sort_keys=True, default=str)


def same_config(saved: str, current: str) -> bool:
    """Whether two :func:`json_config` texts are one config, settings at their
    :data:`~l2obench.config.KEYLESS_DEFAULTS` left out of both: progress saved before a setting
    existed resumes under a version that has it, as a cell's key stays what it was."""
    import json

    from .config import KEYLESS_DEFAULTS

    def meaning(text: str) -> dict[str, Any]:
        data = json.loads(text)
        return {k: v for k, v in data.items() if not (k in KEYLESS_DEFAULTS and v == KEYLESS_DEFAULTS[k])}

    return meaning(saved) == meaning(current)


def generator_states(rng: torch.Generator, device: torch.device) -> dict[str, Tensor]:
    """Every random stream meta-training draws from: its own generator and torch's global ones."""
    states = {"meta_train": rng.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_generator_states(states: Mapping[str, Tensor], rng: torch.Generator, device: torch.device) -> None:
    rng.set_state(states["meta_train"])
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)


def read_progress(path: str | os.PathLike, config: MetaTrainConfig) -> dict[str, Any] | None:
    """The saved training state at ``path``, or ``None`` if there is none; one that cannot
    be read is set aside with a warning (training starts over), and one saved for another
    config is refused in one line."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or saved.get("format") != PROGRESS_FORMAT:
            raise ValueError(f"not a {PROGRESS_FORMAT} file")
    except Exception as exc:  # torch.load raises many types for a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"meta-training progress {path} is unreadable ({reason}); starting over", L2OWarning,
                      stacklevel=3)
        return None
    if not same_config(saved["config"], json_config(config)):
        raise ConfigError(f"meta-training progress {path} was saved for another meta-train config; "
                          f"delete it to start over")
    return saved


def write_progress(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Save ``state`` to ``path`` atomically; a failure warns and training goes on unsaved
    (not worth losing the training for)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        atomic_write_bytes(Path(path), buffer.getvalue())
    except OSError as exc:
        warnings.warn(f"cannot save meta-training progress to {path} "
                      f"({exc.strerror or exc}); training goes on without it", L2OWarning, stacklevel=4)
