"""CIFAR-10 (Krizhevsky 2009): 32x32 colour images of 10 classes, from the binary
version ``cifar-10-binary.tar.gz``, read from the archive without unpacking it and
without unpickling anything.

The archive is read from ``L2OBENCH_DATA_DIR/cifar-10/``; without the variable it
is downloaded once from the authors' site into the user cache.  Either way it is
checked against the MD5 the authors publish before it is opened.

The archive holds ``data_batch_1.bin`` .. ``data_batch_5.bin`` (10,000 images each)
and ``test_batch.bin``; each record is one label byte and 3,072 pixel bytes (the
1,024 red, then green, then blue values of a 32x32 image, row by row).  The split
is fixed: ``"train"`` is batches 1-4 and the first half of batch 5 (45,000
images), ``"validation"`` the second half of batch 5 (5,000), ``"test"`` the test
batch (10,000), so validation is taken from the training images and the test
images are never seen before testing.
"""
from __future__ import annotations

import io
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import torch
from torch import Tensor

from l2obench.api import SPLITS, ConfigError, DataError, DataFile, data_dir, read_data_file

ARCHIVE = DataFile("cifar-10-binary.tar.gz", "md5:c32a1d4ab5d03f1284b67883e8d87530")
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_BATCH = "test_batch.bin"
SHAPE = (3, 32, 32)
#: bytes of one record: the label, then the pixels
RECORD = 1 + 3 * 32 * 32


@dataclass(frozen=True, eq=False)
class CIFAR10:
    """The :class:`l2obench.api.Dataset` of the binary CIFAR-10 archive ``archive``."""

    archive: DataFile = ARCHIVE
    mirrors: tuple[str, ...] = MIRRORS
    name: str = "cifar-10"
    description: str = ("CIFAR-10 objects, 32x32 colour (train 45,000 = batches 1-4 and half of 5 / "
                        "validation 5,000 / test 10,000)")
    classes: int = 10
    shape: tuple[int, int, int] = SHAPE
    _loaded: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def load(self, split: str) -> tuple[Tensor, Tensor]:
        if split not in SPLITS:
            raise ConfigError(f"unknown {self.name} split {split!r}; allowed: {', '.join(SPLITS)}")
        root = data_dir()
        if root not in self._loaded:  # kept per data directory
            self._loaded[root] = self._read()
        return self._loaded[root][split]

    def _read(self) -> dict[str, tuple[Tensor, Tensor]]:
        path, raw = read_data_file(self.name, self.archive, self.mirrors)
        where = f"{self.name}: {path}"
        batches = _members(raw, (*TRAIN_BATCHES, TEST_BATCH), where)
        *train, last = [self._records(batches[name], f"{where}: {name}") for name in TRAIN_BATCHES]
        half = len(last[1]) // 2
        train_images = torch.cat([b[0] for b in train] + [last[0][:half]])
        train_labels = torch.cat([b[1] for b in train] + [last[1][:half]])
        return {"train": (train_images, train_labels), "validation": (last[0][half:], last[1][half:]),
                "test": self._records(batches[TEST_BATCH], f"{where}: {TEST_BATCH}")}

    def _records(self, data: bytes, where: str) -> tuple[Tensor, Tensor]:
        """``(uint8 images (N, 3, 32, 32), int64 labels (N,))`` of one batch file."""
        if len(data) == 0 or len(data) % RECORD:
            raise DataError(f"{where} has {len(data)} bytes, not a whole number of {RECORD}-byte records; "
                            f"replace the archive with a fresh copy")
        records = np.frombuffer(data, np.uint8).reshape(-1, RECORD)
        labels = records[:, 0].astype(np.int64)
        if int(labels.max()) >= self.classes:
            raise DataError(f"{where} has the label {int(labels.max())}, expected 0-{self.classes - 1}; "
                            f"replace the archive with a fresh copy")
        images = records[:, 1:].reshape(-1, *self.shape).copy()
        return torch.from_numpy(images), torch.from_numpy(labels)

    def clear_cache(self) -> None:
        """Forget the loaded arrays (the archive is read and checked again on the next ``load``)."""
        self._loaded.clear()


def _members(raw: bytes, names: tuple[str, ...], where: str) -> dict[str, bytes]:
    """The contents of the regular files ``names`` (matched by base name) in the
    gzipped tar ``raw``, read in one pass; nothing is written to disk."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for member in tar:
                base = PurePosixPath(member.name).name
                if member.isfile() and base in names and base not in found:
                    found[base] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{where} is not a readable .tar.gz ({type(exc).__name__}: {exc}); "
                        f"replace it with a fresh copy") from None
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(f"{where} lacks {', '.join(missing)}; expected the binary version of CIFAR-10 "
                        f"(cifar-10-binary.tar.gz, not the python or matlab one)")
    return found


CIFAR_10 = CIFAR10()
