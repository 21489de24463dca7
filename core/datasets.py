"""The data-set layer that task families share: the :class:`Dataset` contract, and
the tools a data-set plugin is built from: where its files are (``L2OBENCH_DATA_DIR``
or a checksummed download into the user cache, :func:`read_data_file`), the IDX reader
(:func:`parse_idx`, :class:`IDXDataset`), class subsets (:func:`select_classes`).

A data set is registered by a plugin (hook ``register_datasets``) and chosen by
name in a task config (``dataset = "<name>"``); no core module names one.

``L2OBENCH_DATA_DIR=DIR`` holds one sub-directory per data set, named as it is
registered (``DIR/<name>/``); a data set that allows it
(:func:`read_data_file`'s ``in_root``) is also found directly in ``DIR``, the layout
from before there was more than one.  Without the variable, files are downloaded
once into the user cache.  Either way their content is checked against checksums
before it is used, so a corrupted, truncated or foreign file is refused in one line.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, DataError

DATA_ENV = "L2OBENCH_DATA_DIR"


@runtime_checkable
class Dataset(Protocol):
    """Labelled images with a fixed, documented split.

    ``load(split)`` returns ``(images, labels)``: ``uint8`` images of shape
    ``(N, *shape)`` and ``int64`` labels in ``0 .. classes - 1``, read and checked
    once per process (the tensors are shared: do not change them in place).  A
    missing or corrupted file raises :class:`DataError`.
    """

    #: one line for ``l2obench list``
    description: str
    #: number of labels
    classes: int
    #: shape of one image, ``(channels, height, width)``
    shape: tuple[int, int, int]

    def load(self, split: str) -> tuple[Tensor, Tensor]:
        """The images and labels of ``split`` (``"train"``, ``"validation"`` or ``"test"``)."""


# -- files: the data directory, downloads, checksums ----------------------------------


@dataclass(frozen=True)
class DataFile:
    """One file of a data set, by the name it has in the data directory and on the mirrors.

    ``checksum`` (``"sha256:<hex>"`` or ``"md5:<hex>"``) is of the bytes :func:`read_data_file`
    returns: with ``gunzip``, those of the decompressed content, so that any gzip of
    the same content is accepted (and an already decompressed copy, named without
    ``.gz``).  ``download_hash``, in the same notation, is of the bytes the mirrors
    serve, checked while downloading; without it, downloads are checked by
    ``checksum`` alone (which is the served bytes' own when not ``gunzip``).
    """

    name: str
    checksum: str
    gunzip: bool = False
    download_hash: str | None = None

    def __post_init__(self):
        for value in (self.checksum, self.download_hash):
            if value is not None and value.partition(":")[0] not in ("sha256", "md5"):
                raise ValueError(f"data file {self.name}: checksum {value!r} must start with 'sha256:' or 'md5:'")


def data_dir() -> Path | None:
    """The directory ``L2OBENCH_DATA_DIR`` names, or None when it is unset (download)."""
    directory = os.environ.get(DATA_ENV)
    if not directory:
        return None
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise DataError(f"{DATA_ENV}={directory} is not a directory; point it at the folder holding one "
                        f"sub-directory per data set, named as it is registered (l2obench list --kind dataset), "
                        f"or unset it to download them")
    return root


def data_cache_dir(dataset: str) -> Path:
    """Where the downloaded files of ``dataset`` are kept (pooch's per-user cache)."""
    import pooch

    return Path(pooch.os_cache("l2obench")) / dataset


def _local_path(root: Path, dataset: str, file: DataFile, in_root: bool) -> Path:
    """``file`` in ``root/dataset/`` (or, with ``in_root`` and no such folder, in ``root``):
    the name as given, or for a gzipped file an already decompressed copy."""
    names = [file.name] + ([file.name[: -len(".gz")]] if file.gunzip and file.name.endswith(".gz") else [])
    folder = root / dataset
    folders = [folder] if folder.is_dir() or not in_root else [folder, root]
    for directory in folders:
        for name in names:
            if (directory / name).is_file():
                return directory / name
    where = f"{folder} (nor in {root})" if len(folders) == 2 else str(folder)
    raise DataError(f"{dataset}: {file.name} not found in {where}; put it in {folder}, "
                    f"or unset {DATA_ENV} to download it")


def _download(dataset: str, file: DataFile, mirrors: Sequence[str]) -> Path:
    """Fetch ``file`` into :func:`data_cache_dir`, trying each mirror in order; pooch checks the
    download hash (a file already there with the right hash is not fetched again)."""
    import pooch

    known = file.download_hash or (None if file.gunzip else file.checksum)
    failures = []
    for base in mirrors:
        try:
            return Path(pooch.retrieve(base + file.name, known_hash=known, fname=file.name,
                                       path=data_cache_dir(dataset), progressbar=False))
        except Exception as exc:  # network errors, HTTP errors, checksum mismatches
            failures.append(f"{base}: {type(exc).__name__}")
    tried = "; ".join(failures) or "no download mirror is known"
    raise DataError(f"{dataset}: could not download {file.name} ({tried}); download the files of {dataset} "
                    f"by hand and put them in DIR/{dataset}/, with {DATA_ENV}=DIR")


def _verified(path: Path, dataset: str, file: DataFile, remedy: str) -> bytes:
    """The content of ``path`` (decompressed if it is a gzip of a ``gunzip`` file), refused
    unless it has ``file.checksum``."""
    try:
        if file.gunzip and path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{dataset}: file {path} is corrupted ({type(exc).__name__}: {exc}); {remedy}") from None
    algorithm, _, expected = file.checksum.partition(":")
    digest = hashlib.new(algorithm, raw).hexdigest()
    if digest != expected.lower():
        of = "its content" if file.gunzip else "the file"
        raise DataError(f"{dataset}: file {path} is corrupted or not {file.name}: the {algorithm.upper()} of "
                        f"{of} is {digest[:12]}..., expected {expected[:12]}...; {remedy}")
    return raw


def read_data_file(dataset: str, file: DataFile, mirrors: Sequence[str] = (), *,
                   in_root: bool = False) -> tuple[Path, bytes]:
    """Where one file of ``dataset`` was read from (for messages) and its checked bytes:
    from ``L2OBENCH_DATA_DIR/dataset/`` when the variable is set (with ``in_root``, also
    directly from the directory it names), else downloaded once from the first of
    ``mirrors`` (base URLs) that serves it.  A missing, unreadable or wrong file raises
    a one-line :class:`DataError` that names it and says what to do."""
    root = data_dir()
    if root is not None:
        path = _local_path(root, dataset, file, in_root)
        remedy = f"replace it with a fresh copy, or unset {DATA_ENV} to download it"
    else:
        path = _download(dataset, file, mirrors)
        remedy = "delete it so that it is downloaded again"
    return path, _verified(path, dataset, file, remedy)


# -- IDX ---------------------------------------------------------------------------


def parse_idx(raw: bytes, where: str) -> np.ndarray:
    """An IDX array of unsigned bytes (magic ``0 0 8 ndim``, big-endian ``uint32`` sizes,
    the data), read-only and without a copy; anything else is a :class:`DataError`
    naming ``where``."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] == 0:
        raise DataError(f"{where} is not an IDX file of unsigned bytes (it starts with {raw[:4].hex() or 'nothing'}, "
                        f"expected 000008 and the number of dimensions)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{where} is truncated: {len(raw)} bytes, shorter than its {header}-byte header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != math.prod(shape):
        raise DataError(f"{where} is truncated or too long: {len(raw) - header} bytes of data for shape "
                        f"{shape}, expected {math.prod(shape)}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


@dataclass(frozen=True, eq=False)
class IDXDataset:
    """A :class:`Dataset` stored as pairs of IDX files (images ``(N, H, W)``, labels
    ``(N,)``), with a fixed split: ``splits[split] = (pair, rows)``, ``rows`` a slice
    of that pair's examples.  ``files`` maps ``"<pair>-images"`` and ``"<pair>-labels"``
    to their :class:`DataFile`; ``in_root`` as for :func:`read_data_file`."""

    name: str
    description: str
    files: Mapping[str, DataFile]
    splits: Mapping[str, tuple[str, slice]]
    mirrors: Sequence[str] = ()
    classes: int = 10
    shape: tuple[int, int, int] = (1, 28, 28)
    in_root: bool = False
    _loaded: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def load(self, split: str) -> tuple[Tensor, Tensor]:
        if split not in self.splits:
            raise ConfigError(f"unknown {self.name} split {split!r}; allowed: {', '.join(self.splits)}")
        pair, rows = self.splits[split]
        images, labels = self._pair(pair, data_dir())
        return images[rows], labels[rows]

    def _pair(self, pair: str, root: Path | None) -> tuple[Tensor, Tensor]:
        # Kept per data directory, so that pointing L2OBENCH_DATA_DIR elsewhere reads anew.
        key = (pair, root)
        if key not in self._loaded:
            images = self._read(f"{pair}-images").reshape(-1, *self.shape)
            labels = self._read(f"{pair}-labels").astype(np.int64)
            if len(images) != len(labels) or (len(labels) and int(labels.max()) >= self.classes):
                raise DataError(f"{self.name}: {self.files[f'{pair}-images'].name} and "
                                f"{self.files[f'{pair}-labels'].name} do not match ({len(images)} images, "
                                f"{len(labels)} labels, classes 0-{self.classes - 1}); replace them with fresh copies")
            self._loaded[key] = (torch.from_numpy(images.copy()), torch.from_numpy(labels))
        return self._loaded[key]

    def _read(self, key: str) -> np.ndarray:
        file = self.files[key]
        path, raw = read_data_file(self.name, file, self.mirrors, in_root=self.in_root)
        array = parse_idx(raw, f"{self.name}: {path}")
        if key.endswith("-images") and array.shape[1:] != self.shape[1:]:
            raise DataError(f"{self.name}: {path} holds images of shape {array.shape[1:]}, expected "
                            f"{self.shape[1:]}; replace it with a fresh copy")
        return array

    def clear_cache(self) -> None:
        """Forget the loaded arrays (they are read and checked again on the next ``load``)."""
        self._loaded.clear()


# -- what task families do with a data set --------------------------------------------


def images_to_float(images: Tensor) -> Tensor:
    """uint8 pixels to float32 in [0, 1]: ``pixel / 255``, the same bits as numpy's
    ``astype(float32) / 255``."""
    return images.to(torch.float32).div_(255)


def select_classes(images: Tensor, labels: Tensor, classes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The examples whose label is one of ``classes``, relabelled by position in
    ``classes`` (``classes=[7, 3]``: sevens are 0, threes 1); the order of the
    examples is kept."""
    wanted = torch.as_tensor(list(classes), dtype=torch.long)
    keep = torch.isin(labels, wanted)
    relabel = torch.empty(int(wanted.max()) + 1, dtype=torch.long)
    relabel[wanted] = torch.arange(len(wanted))
    return images[keep], relabel[labels[keep]]
