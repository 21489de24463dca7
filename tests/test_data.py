"""The MNIST loader: the real files from L2OBENCH_DATA_DIR, and every way a file
can be missing or wrong, on small fake files in temporary directories (no network)."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from l2obench import DataError
from l2obench import data

REAL_DIR = os.environ.get(data.DATA_ENV)
needs_data = pytest.mark.skipif(not REAL_DIR, reason=f"{data.DATA_ENV} is not set (CI sets it to the MNIST files)")

LABELS = data.FILES["test-labels"]


def _assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture
def fake_dir(tmp_path, monkeypatch):
    """An empty L2OBENCH_DATA_DIR."""
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    return tmp_path


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """No L2OBENCH_DATA_DIR, the download cache in a temporary directory, and a
    fake ``pooch.retrieve`` that serves ``served[url]`` bytes (or fails)."""
    import pooch

    monkeypatch.delenv(data.DATA_ENV, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setattr(data, "cache_dir", lambda: cache)
    served: dict[str, bytes] = {}
    calls: list[tuple[str, str]] = []

    def retrieve(url, known_hash, fname, path, progressbar):
        calls.append((url, known_hash))
        if url not in served:
            raise ConnectionError(f"no route to {url}")
        Path(path).mkdir(parents=True, exist_ok=True)
        target = Path(path) / fname
        target.write_bytes(served[url])
        return str(target)

    monkeypatch.setattr(pooch, "retrieve", retrieve)
    return served, calls


@needs_data
def test_splits_have_the_documented_sizes_and_ranges():
    sizes = {"train": 50_000, "validation": 10_000, "test": 10_000}
    for split, n in sizes.items():
        images, labels = data.load_mnist(split)
        assert images.shape == (n, 28, 28) and images.dtype == torch.float32
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert float(images.min()) == 0.0 and float(images.max()) == 1.0
    counts = data.load_mnist("train")[1].bincount() + data.load_mnist("validation")[1].bincount()
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert data.load_mnist("test")[1][:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]


@needs_data
def test_train_and_validation_are_the_two_ends_of_the_training_file():
    train, _ = data.load_mnist("train")
    validation, _ = data.load_mnist("validation")
    whole = torch.from_numpy(data.read_file("train-images").copy()).float() / 255
    assert torch.equal(train[0], whole[0]) and torch.equal(train[-1], whole[49_999])
    assert torch.equal(validation[0], whole[50_000]) and torch.equal(validation[-1], whole[-1])


def test_to_float_gives_numpys_bits_for_every_pixel_value():
    pixels = np.arange(256, dtype=np.uint8)
    expected = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    assert torch.equal(data.to_float(torch.from_numpy(pixels)), expected)


@needs_data
def test_raw_images_are_the_uint8_pixels_of_the_float_ones():
    raw, labels = data.load_mnist("validation", raw=True)
    images, same_labels = data.load_mnist("validation")
    assert raw.dtype == torch.uint8 and raw.shape == images.shape
    assert torch.equal(data.to_float(raw), images) and torch.equal(labels, same_labels)


@needs_data
def test_loaded_once_per_process():
    first, second = data.load_mnist("test"), data.load_mnist("test")
    assert first[0].data_ptr() == second[0].data_ptr()


def test_unknown_split_is_a_config_error():
    with pytest.raises(data.ConfigError) as err:
        data.load_mnist("valid")
    _assert_one_line(err, "'valid'", "validation")


def test_missing_file_names_the_file_and_the_variable(fake_dir):
    with pytest.raises(DataError) as err:
        data.read_file("test-labels")
    _assert_one_line(err, LABELS.name, str(fake_dir), data.DATA_ENV)


def test_data_dir_that_is_not_a_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        data.read_file("test-labels")
    _assert_one_line(err, "nowhere", "not a directory")


@pytest.mark.parametrize("content", [b"not gzip at all", gzip.compress(b"\x00\x00\x08\x01" + bytes(20))[:15]],
                         ids=["not-gzip", "truncated"])
def test_unreadable_gzip_is_corrupted(fake_dir, content):
    (fake_dir / LABELS.name).write_bytes(content)
    with pytest.raises(DataError) as err:
        data.read_file("test-labels")
    _assert_one_line(err, str(fake_dir / LABELS.name), "corrupted", "replace it")


def test_wrong_content_fails_the_checksum(fake_dir):
    (fake_dir / LABELS.name).write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x02\x07\x02"))
    with pytest.raises(DataError) as err:
        data.read_file("test-labels")
    _assert_one_line(err, str(fake_dir / LABELS.name), "SHA-256", "replace it")


@needs_data
def test_uncompressed_and_regzipped_copies_are_accepted(fake_dir):
    with gzip.open(Path(REAL_DIR) / LABELS.name) as fh:
        raw = fh.read()
    (fake_dir / LABELS.name[:-3]).write_bytes(raw)
    plain = data.read_file("test-labels")
    (fake_dir / LABELS.name).write_bytes(gzip.compress(raw, compresslevel=1))
    regzipped = data.read_file("test-labels")
    assert plain.shape == (10_000,) and (plain == regzipped).all()


def test_download_tries_the_mirrors_in_order_with_md5(offline_cache):
    served, calls = offline_cache
    content = b"\x00\x00\x08\x01" + (10_000).to_bytes(4, "big") + bytes(10_000)
    served[data.MIRRORS[1] + LABELS.name] = gzip.compress(content)
    # the fake content is not MNIST: the mirror answered, the SHA-256 check refuses it
    with pytest.raises(DataError) as err:
        data.read_file("test-labels")
    _assert_one_line(err, str(data.cache_dir() / LABELS.name), "SHA-256", "delete it")
    assert calls == [(data.MIRRORS[0] + LABELS.name, f"md5:{LABELS.md5_gz}"),
                     (data.MIRRORS[1] + LABELS.name, f"md5:{LABELS.md5_gz}")]


@needs_data
def test_downloaded_file_is_read_from_the_cache(offline_cache):
    served, calls = offline_cache
    served[data.MIRRORS[0] + LABELS.name] = (Path(REAL_DIR) / LABELS.name).read_bytes()
    labels = data.read_file("test-labels")
    assert labels[:3].tolist() == [7, 2, 1]
    assert (data.cache_dir() / LABELS.name).is_file()
    assert len(calls) == 1


def test_every_mirror_failing_says_what_to_do(offline_cache):
    _, calls = offline_cache
    with pytest.raises(DataError) as err:
        data.read_file("test-labels")
    _assert_one_line(err, LABELS.name, "ConnectionError", data.DATA_ENV)
    assert [url for url, _ in calls] == [m + LABELS.name for m in data.MIRRORS]


def test_cache_dir_is_the_users_cache():
    import pooch

    assert data.cache_dir() == Path(pooch.os_cache("l2obench")) / "mnist"
