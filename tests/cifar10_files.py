"""Small archives in exactly the format of CIFAR-10's binary version, for the tests
of the loader and of the task families on 3-channel 32x32 images."""
from __future__ import annotations

import hashlib
import io
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from l2obench.plugins.datasets import cifar10

PIXELS = 3 * 32 * 32


def records(batch: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` records of batch ``batch`` (0 is the test batch): labels and pixels that say where they are from."""
    labels = ((np.arange(n) + batch) % 10).astype(np.uint8)
    pixels = ((np.arange(n * PIXELS) * 7 + 31 * batch) % 256).astype(np.uint8).reshape(n, PIXELS)
    return labels, pixels


def archive(per_batch: int = 6, *, members: dict[str, bytes] | None = None) -> bytes:
    """A gzipped tar in the layout of cifar-10-binary.tar.gz, ``per_batch`` records a batch."""
    if members is None:
        members = {}
        for batch, name in enumerate(["test_batch.bin", *cifar10.TRAIN_BATCHES]):
            labels, pixels = records(batch, per_batch)
            members[name] = np.concatenate([labels[:, None], pixels], 1).tobytes()
        members["batches.meta.txt"] = b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def install(root: Path, raw: bytes) -> cifar10.CIFAR10:
    """``raw`` as ``root/cifar-10/cifar-10-binary.tar.gz``, and a CIFAR10 that expects its MD5."""
    (root / "cifar-10").mkdir(exist_ok=True)
    (root / "cifar-10" / cifar10.ARCHIVE.name).write_bytes(raw)
    return cifar10.CIFAR10(archive=replace(cifar10.ARCHIVE, checksum="md5:" + hashlib.md5(raw).hexdigest()))
