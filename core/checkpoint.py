"""Checkpoints of meta-trained optimizers: safetensors files that never unpickle.

The tensors are the learned optimizer's ``state_dict``; the safetensors header
metadata records the plugin name, the distribution and version that registered
it, its hyperparameters and training config (JSON), the l2obench version, and a
sha256 content hash over the tensors and the metadata.  Loading rebuilds the
optimizer through the registry and refuses, in one line naming the file, a
truncated, corrupted or modified file, an unknown plugin, a plugin version other
than the one that saved it, metadata of any other shape, hyperparameters that
break the factory's declaration, or tensors that do not fit the hyperparameters
(names, shapes and dtypes, compared with the network built on the ``meta``
device first, so an edited hidden size of 10^12 allocates nothing).
The hash detects corruption and edits; it is not a signature.

A checkpoint travels as bytes as well as a file (:func:`checkpoint_bytes`, and
:func:`load_checkpoint` of the bytes), so a worker without the run directory's
file system receives and returns one as plain data.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from .atomic import atomic_write_bytes
from .errors import CheckpointError, L2OError
from .learned import LearnedOptimizer

FORMAT = "l2obench-checkpoint/1"
_KEYS = ("format", "plugin", "distribution", "version", "hyperparameters", "training", "l2obench_version")


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about itself."""

    path: str  #: the file, or ``"<bytes>"`` for a checkpoint read from memory
    plugin: str
    distribution: str
    version: str
    hyperparameters: dict[str, Any]
    training: dict[str, Any]
    l2obench_version: str
    content_hash: str


def content_hash(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """sha256 over the metadata (canonical JSON, without the hash) and every tensor's
    name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    meta = {k: v for k, v in metadata.items() if k != "sha256"}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checkpoint_bytes(lopt: LearnedOptimizer, training: Mapping[str, Any] | None = None, *,
                     registry=None) -> tuple[bytes, str]:
    """``lopt`` as the bytes of a checkpoint file, and their content hash.

    ``lopt`` must have been built through the registry, which records its ``name`` and
    ``hyperparameters`` (:class:`l2obench.learned.LearnedOptimizer`); ``training`` is
    what to remember of how it was trained (JSON-ready)."""
    from . import __version__
    from .registry import get_registry

    name = lopt.name
    if name is None:
        raise CheckpointError(f"cannot save a {type(lopt).__name__} that was not built through the registry "
                              f"(it has no registered name); build it with get_registry().learned(name, ...)")
    reg = registry if registry is not None else get_registry()
    try:
        entry = reg.get("learned", name)
    except L2OError as exc:
        raise CheckpointError(f"cannot save learned optimizer {name!r}: {exc}") from None
    try:
        hyper_json = json.dumps(dict(lopt.hyperparameters), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot save learned optimizer {name!r}: its hyperparameters are not JSON "
                              f"({exc})") from None
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in lopt.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "plugin": name,
        "distribution": entry.distribution,
        "version": entry.version,
        "hyperparameters": hyper_json,
        "training": json.dumps(dict(training or {}), sort_keys=True, default=str),
        "l2obench_version": __version__,
    }
    metadata["sha256"] = digest = content_hash(tensors, metadata)

    from safetensors.torch import save

    return save(tensors, metadata=metadata), digest


def save_checkpoint(path: str | os.PathLike, lopt: LearnedOptimizer, training: Mapping[str, Any] | None = None,
                    *, registry=None) -> str:
    """Write ``lopt`` (see :func:`checkpoint_bytes`) to ``path`` atomically; returns the content hash."""
    try:
        data, digest = checkpoint_bytes(lopt, training, registry=registry)
    except CheckpointError as exc:
        raise CheckpointError(f"checkpoint {path}: {exc}") from None
    atomic_write_bytes(Path(path), data)
    return digest


#: A checkpoint: a file, or the bytes of one (as :func:`checkpoint_bytes` gives them).
Source = Union[str, os.PathLike, bytes]
#: how messages name a checkpoint given as bytes
IN_MEMORY = "<bytes>"


def _read(source: Source) -> tuple[bytes, str]:
    """The bytes of ``source`` and how messages name it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), IN_MEMORY
    path = Path(source)
    try:
        return path.read_bytes(), str(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path}: cannot read ({exc.strerror or exc})") from None


def read_checkpoint(source: Source) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """The tensors and metadata of a checkpoint (a file or its bytes), integrity-checked
    (no plugin needed)."""
    data, name = _read(source)
    where = f"checkpoint {name}"
    if len(data) < 8:
        raise CheckpointError(f"{where}: truncated ({len(data)} bytes); re-create it with l2obench meta-train")
    (n,) = struct.unpack("<Q", data[:8])
    if n > 100_000_000:  # no checkpoint's header is near this: the file is something else
        raise CheckpointError(f"{where}: not a safetensors checkpoint (its first 8 bytes give a header of "
                              f"{n} bytes); give a file written by l2obench meta-train")
    if 8 + n > len(data):
        raise CheckpointError(f"{where}: truncated (header says {n} bytes, file has {len(data) - 8}); "
                              f"re-create it with l2obench meta-train")
    try:
        header = json.loads(data[8:8 + n])
    except ValueError:
        raise CheckpointError(f"{where}: not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: not a safetensors file (its header is a JSON "
                              f"{type(header).__name__}, not an object)")
    metadata = header.get("__metadata__")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{where}: not an l2obench checkpoint (its __metadata__ is not a table of "
                              f"strings); re-create it with l2obench meta-train")
    if metadata.get("format") != FORMAT or any(k not in metadata for k in _KEYS + ("sha256",)):
        raise CheckpointError(f"{where}: not an l2obench checkpoint (missing {FORMAT!r} metadata)")

    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error types for every malformation
        raise CheckpointError(f"{where}: truncated or corrupted ({_first_line(exc)})") from None
    digest = content_hash(tensors, metadata)
    if digest != metadata["sha256"]:
        raise CheckpointError(f"{where}: content hash mismatch (the file was modified or corrupted); "
                              f"re-create it with l2obench meta-train")
    try:
        hyper = json.loads(metadata["hyperparameters"])
        training = json.loads(metadata["training"])
    except ValueError:
        raise CheckpointError(f"{where}: metadata is not valid JSON") from None
    for key, value in (("hyperparameters", hyper), ("training", training)):
        if not isinstance(value, dict):
            raise CheckpointError(f"{where}: its {key} metadata is a JSON {type(value).__name__}, not an object; "
                                  f"re-create it with l2obench meta-train")
    info = CheckpointInfo(name, metadata["plugin"], metadata["distribution"], metadata["version"],
                          hyper, training, metadata["l2obench_version"], digest)
    return tensors, info


def load_checkpoint(source: Source, registry=None, *, check_version: bool = True):
    """Rebuild the learned optimizer saved in ``source`` (a file or its bytes):
    ``(LearnedOptimizer, CheckpointInfo)``.

    The plugin is looked up by name in ``registry`` (the installed plugins by
    default); its distribution and version must match the ones that saved the
    file unless ``check_version=False``.
    """
    from .registry import get_registry

    tensors, info = read_checkpoint(source)
    where = f"checkpoint {info.path}"
    reg = registry if registry is not None else get_registry()
    try:
        entry = reg.get("learned", info.plugin)
    except L2OError as exc:
        raise CheckpointError(f"{where}: saved by {info.distribution} {info.version}, but {exc}") from None
    if check_version and (entry.distribution, entry.version) != (info.distribution, info.version):
        raise CheckpointError(
            f"{where}: learned optimizer {info.plugin!r} was saved by {info.distribution} {info.version} "
            f"but {entry.distribution} {entry.version} is installed; install that version or re-train"
        )
    try:
        entry.check_parameters(info.hyperparameters)
    except L2OError as exc:
        raise CheckpointError(f"{where}: cannot rebuild from its hyperparameters: {exc}") from None
    _check_tensors(where, info, tensors, _state_on_meta(where, entry, info))
    try:
        lopt = entry.create(**info.hyperparameters)
    except L2OError as exc:
        raise CheckpointError(f"{where}: cannot rebuild from its hyperparameters: {exc}") from None
    except (RuntimeError, MemoryError) as exc:
        raise CheckpointError(f"{where}: cannot rebuild {info.plugin!r} from its hyperparameters "
                              f"({_first_line(exc)})") from None
    _check_tensors(where, info, tensors, lopt.state_dict())
    lopt.load_state_dict(tensors, strict=True)
    return lopt, info


def _state_on_meta(where: str, entry, info: CheckpointInfo) -> Optional[dict[str, torch.Tensor]]:
    """The ``state_dict`` the plugin builds from the checkpoint's hyperparameters, built on
    the ``meta`` device (shapes and dtypes, no memory), so that a hidden size of 10^12 is
    refused before anything is allocated; None for a plugin that cannot build there."""
    try:
        with torch.device("meta"):
            return dict(entry.create(**info.hyperparameters).state_dict())
    except L2OError as exc:
        raise CheckpointError(f"{where}: cannot rebuild from its hyperparameters: {exc}") from None
    except Exception:  # a factory that needs real data (.item(), numpy): checked after the real build
        return None


def _check_tensors(where: str, info: CheckpointInfo, tensors: Mapping[str, torch.Tensor],
                   expected: Optional[Mapping[str, torch.Tensor]]) -> None:
    """Refuse tensors whose names, shapes or dtypes differ from those the plugin builds."""
    if expected is None:
        return
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{where}: tensors do not match {info.plugin!r} with its hyperparameters "
                              f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for key, ref in expected.items():
        if tuple(ref.shape) != tuple(tensors[key].shape):
            raise CheckpointError(f"{where}: tensor {key!r} has shape {tuple(tensors[key].shape)} but "
                                  f"{info.plugin!r} with its hyperparameters expects {tuple(ref.shape)}")
        if ref.dtype != tensors[key].dtype:
            raise CheckpointError(f"{where}: tensor {key!r} has dtype {tensors[key].dtype} but "
                                  f"{info.plugin!r} with its hyperparameters expects {ref.dtype}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
