"""MNIST from its four original IDX files, without torchvision.

The files are read from the directory named by ``L2OBENCH_DATA_DIR``; without
it they are downloaded once, with pooch, from the usual mirrors into a user
cache directory, checked against the mirrors' MD5 sums.  In both cases the
decompressed bytes are checked against the SHA-256 of the originals, so a
re-gzipped copy is accepted and a corrupted or foreign one is not.

The split is fixed: the first 50,000 training images are ``"train"``, the last
10,000 are ``"validation"``, and the 10,000 t10k images are ``"test"``.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError, DataError

DATA_ENV = "L2OBENCH_DATA_DIR"

#: Download mirrors, tried in order (torchvision's, Google's CVDF copy, the original site).
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


@dataclass(frozen=True)
class IDXFile:
    """One of the four files: its name, the MD5 of the mirrors' .gz and the SHA-256 of its content."""

    name: str
    md5_gz: str
    sha256: str


FILES = {
    "train-images": IDXFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
    "train-labels": IDXFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432",
                            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
    "test-images": IDXFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3",
                           "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
    "test-labels": IDXFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c",
                           "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
}

#: split -> (source file pair, slice of its examples)
SPLITS = {
    "train": ("train", slice(0, 50_000)),
    "validation": ("train", slice(50_000, 60_000)),
    "test": ("test", slice(0, 10_000)),
}

def cache_dir() -> Path:
    """Where downloaded files are kept (pooch's per-user cache)."""
    import pooch

    return Path(pooch.os_cache("l2obench")) / "mnist"


def _local_path(directory: Path, f: IDXFile) -> Path:
    """The file in ``L2OBENCH_DATA_DIR``: the .gz, or else an already decompressed copy."""
    gz = directory / f.name
    plain = directory / f.name[: -len(".gz")]
    if gz.is_file():
        return gz
    if plain.is_file():
        return plain
    raise DataError(
        f"MNIST file {f.name} not found in {directory} ({DATA_ENV}); put the four MNIST IDX .gz files "
        f"there, or unset {DATA_ENV} to download them"
    )


def _download(f: IDXFile) -> Path:
    """Fetch ``f`` into :func:`cache_dir`, trying each mirror; pooch checks the MD5."""
    import pooch

    failures = []
    for base in MIRRORS:
        try:
            return Path(pooch.retrieve(base + f.name, known_hash=f"md5:{f.md5_gz}", fname=f.name,
                                       path=cache_dir(), progressbar=False))
        except Exception as exc:  # network errors, HTTP errors, checksum mismatches
            failures.append(f"{base}: {type(exc).__name__}")
    raise DataError(
        f"could not download MNIST file {f.name} ({'; '.join(failures)}); download the four MNIST IDX "
        f".gz files by hand and set {DATA_ENV} to their directory"
    )


def _read_verified(path: Path, f: IDXFile, remedy: str) -> bytes:
    """The decompressed content of ``path``, refused unless its SHA-256 is MNIST's."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"MNIST file {path} is corrupted ({type(exc).__name__}: {exc}); {remedy}") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != f.sha256:
        raise DataError(
            f"MNIST file {path} is corrupted: the SHA-256 of its content is {digest[:12]}..., "
            f"expected {f.sha256[:12]}...; {remedy}"
        )
    return raw


def _parse_idx(raw: bytes) -> np.ndarray:
    """An IDX array of unsigned bytes (magic ``0 0 8 ndim``, big-endian sizes, data)."""
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_file(key: str) -> np.ndarray:
    """One verified IDX file (``"train-images"``, ...) as a uint8 array."""
    f = FILES[key]
    directory = os.environ.get(DATA_ENV)
    if directory:
        root = Path(directory).expanduser()
        if not root.is_dir():
            raise DataError(f"{DATA_ENV}={directory} is not a directory; point it at the folder holding "
                            f"the four MNIST IDX .gz files, or unset it to download them")
        path = _local_path(root, f)
        remedy = f"replace it with a fresh copy, or unset {DATA_ENV} to download MNIST"
    else:
        path = _download(f)
        remedy = "delete it so that it is downloaded again"
    return _parse_idx(_read_verified(path, f, remedy))


@functools.lru_cache(maxsize=None)
def _load_pair(source: str) -> tuple[Tensor, Tensor]:
    images = torch.from_numpy(read_file(f"{source}-images").copy())
    labels = torch.from_numpy(read_file(f"{source}-labels").astype(np.int64))
    return images, labels


def to_float(images: Tensor) -> Tensor:
    """uint8 pixels to float32 in [0, 1]: ``pixel / 255``, the same bits as numpy's
    ``astype(float32) / 255``."""
    return images.to(torch.float32).div_(255)


def load_mnist(split: str, *, raw: bool = False) -> tuple[Tensor, Tensor]:
    """Images ``(N, 28, 28)`` float32 in [0, 1] (``raw=True``: the uint8 pixels) and
    labels ``(N,)`` int64 of ``split``.

    Read and verified once per process; the tensors are shared, so do not
    change them in place.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown MNIST split {split!r}; allowed: {', '.join(SPLITS)}")
    source, rows = SPLITS[split]
    images, labels = _load_pair(source)
    if not raw:
        images = _float_images(source)
    return images[rows], labels[rows]


@functools.lru_cache(maxsize=None)
def _float_images(source: str) -> Tensor:
    return to_float(_load_pair(source)[0])


def clear_cache() -> None:
    """Forget the loaded data (tests, or after changing ``L2OBENCH_DATA_DIR``)."""
    _load_pair.cache_clear()
    _float_images.cache_clear()
