"""The CIFAR-10 loader on archives written here in exactly the binary version's format
(``cifar-10-binary.tar.gz``: ``cifar-10-batches-bin/data_batch_1..5.bin`` and
``test_batch.bin``, records of one label byte and 3,072 pixel bytes), read through
the same code as the real archive, which no test machine can download."""
from __future__ import annotations

import gzip
import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar10_files import archive, install, records

from l2obench import DataError, get_registry
from l2obench import datasets as data
from l2obench.plugins.datasets import cifar10

@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    return tmp_path


def _assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_split_and_pixel_layout(data_dir):
    cifar = install(data_dir, archive(per_batch=6))
    assert isinstance(cifar, data.Dataset) and cifar.shape == (3, 32, 32) and cifar.classes == 10
    train, validation, test = (cifar.load(s) for s in ("train", "validation", "test"))
    # train: batches 1-4 and the first half of batch 5; validation: its second half
    assert train[0].shape == (27, 3, 32, 32) and train[0].dtype == torch.uint8 and train[1].dtype == torch.int64
    assert validation[0].shape == (3, 3, 32, 32) and test[0].shape == (6, 3, 32, 32)
    expected_train = [records(b, 6) for b in (1, 2, 3, 4)] + [tuple(a[:3] for a in records(5, 6))]
    assert train[1].tolist() == np.concatenate([labels for labels, _ in expected_train]).tolist()
    assert validation[1].tolist() == records(5, 6)[0][3:].tolist()
    assert test[1].tolist() == records(0, 6)[0].tolist()
    # a record's pixels are the 1,024 red, then green, then blue values, row by row
    _, pixels = records(0, 6)
    image = test[0][2]
    assert int(image[0, 0, 0]) == pixels[2, 0] and int(image[0, 0, 1]) == pixels[2, 1]
    assert int(image[0, 1, 0]) == pixels[2, 32] and int(image[1, 0, 0]) == pixels[2, 1024]
    assert int(image[2, 31, 31]) == pixels[2, 3071]
    assert torch.equal(image.flatten(), torch.from_numpy(pixels[2]))


def test_read_once_per_data_directory(data_dir):
    cifar = install(data_dir, archive())
    assert cifar.load("train")[0].data_ptr() == cifar.load("train")[0].data_ptr()


def test_the_real_checksum_refuses_another_archive(data_dir):
    install(data_dir, archive())
    with pytest.raises(DataError) as err:
        cifar10.CIFAR_10.load("test")
    _assert_one_line(err, str(data_dir / "cifar-10" / cifar10.ARCHIVE.name), "MD5", "c32a1d4ab5d0", "replace it")


def test_missing_archive_says_where_to_put_it(data_dir):
    with pytest.raises(DataError) as err:
        cifar10.CIFAR_10.load("train")
    _assert_one_line(err, "cifar-10-binary.tar.gz", str(data_dir / "cifar-10"), data.DATA_ENV)


@pytest.mark.parametrize("raw,fragments", [
    (archive()[:300], ["not a readable .tar.gz"]),
    (b"definitely not gzip", ["not a readable .tar.gz"]),
    (gzip.compress(b"not a tar either" * 100), ["not a readable .tar.gz"]),
    (archive(members={"data_batch_1.bin": bytes(3073)}), ["lacks", "data_batch_2.bin", "test_batch.bin", "binary"]),
    (archive(members={**{n: bytes(3073) for n in cifar10.TRAIN_BATCHES}, "test_batch.bin": bytes(3000)}),
     ["test_batch.bin", "3000 bytes", "3073-byte records"]),
    (archive(members={**{n: bytes(3073) for n in cifar10.TRAIN_BATCHES}, "test_batch.bin": b"\x0a" + bytes(3072)}),
     ["test_batch.bin", "label 10", "0-9"]),
], ids=["truncated", "not-gzip", "not-tar", "missing-batches", "partial-record", "bad-label"])
def test_corrupt_archives_with_a_matching_checksum_are_refused_in_one_line(data_dir, raw, fragments):
    cifar = install(data_dir, raw)
    with pytest.raises(DataError) as err:
        cifar.load("train")
    _assert_one_line(err, str(data_dir / "cifar-10" / cifar10.ARCHIVE.name), *fragments)


def test_download_goes_to_the_user_cache_and_is_checked(tmp_path, monkeypatch):
    import pooch

    monkeypatch.delenv(data.DATA_ENV, raising=False)
    monkeypatch.setattr(data, "data_cache_dir", lambda dataset: tmp_path / "cache" / dataset)
    raw = archive()
    calls = []

    def retrieve(url, known_hash, fname, path, progressbar):
        calls.append((url, known_hash))
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / fname).write_bytes(raw)
        return str(Path(path) / fname)

    monkeypatch.setattr(pooch, "retrieve", retrieve)
    with pytest.raises(DataError) as err:
        cifar10.CIFAR_10.load("test")
    _assert_one_line(err, str(tmp_path / "cache" / "cifar-10" / cifar10.ARCHIVE.name), "MD5", "delete it")
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                      "md5:c32a1d4ab5d03f1284b67883e8d87530")]
    ours = cifar10.CIFAR10(archive=replace(cifar10.ARCHIVE, checksum="md5:" + hashlib.md5(raw).hexdigest()))
    assert ours.load("test")[1].tolist() == records(0, 6)[0].tolist()


def test_registered_as_cifar_10():
    assert get_registry().dataset("cifar-10") is cifar10.CIFAR_10
