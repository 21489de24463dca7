"""The data-set layer (l2obench.datasets) and the IDX data sets: mnist and fashion-mnist
on their real files from L2OBENCH_DATA_DIR (one sub-directory per data set, or the
MNIST files directly in it as before), and every way a file can be missing or wrong,
on small fake files in temporary directories (no network)."""
from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from l2obench import DataError, get_registry
from l2obench import datasets as data
from l2obench.plugins.datasets import fashion_mnist, mnist

REAL_DIR = os.environ.get(data.DATA_ENV)
needs_data = pytest.mark.skipif(not REAL_DIR, reason=f"{data.DATA_ENV} is not set (CI sets it to the data sets)")


def real_files(name: str) -> Path:
    """Where the real files of ``name`` are: ``DIR/name/``, or for MNIST ``DIR`` itself (the old layout)."""
    root = Path(REAL_DIR)
    if (root / name).is_dir():
        return root / name
    if name != "mnist":
        pytest.skip(f"{data.DATA_ENV}={REAL_DIR} has no {name}/ sub-directory")
    return root


def has_real(name: str) -> bool:
    return bool(REAL_DIR) and ((Path(REAL_DIR) / name).is_dir() or name == "mnist")


LABELS = mnist.FILES["test-labels"]


def _assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def _idx(array: np.ndarray) -> bytes:
    """``array`` (uint8) as the bytes of an IDX file."""
    return bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape) + array.tobytes()


def _sha256(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@pytest.fixture
def fake_dir(tmp_path, monkeypatch):
    """An L2OBENCH_DATA_DIR with an empty ``mnist/`` sub-directory."""
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    (tmp_path / "mnist").mkdir()
    return tmp_path / "mnist"


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """No L2OBENCH_DATA_DIR, the download cache in a temporary directory, and a
    fake ``pooch.retrieve`` that serves ``served[url]`` bytes (or fails)."""
    import pooch

    monkeypatch.delenv(data.DATA_ENV, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setattr(data, "data_cache_dir", lambda dataset: cache / dataset)
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


# -- the real files ------------------------------------------------------------------

IDX_SETS = [
    pytest.param("mnist", [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
                 marks=pytest.mark.skipif(not has_real("mnist"), reason="no MNIST files")),
    pytest.param("fashion-mnist", [6000] * 10,
                 marks=pytest.mark.skipif(not has_real("fashion-mnist"), reason="no Fashion-MNIST files")),
]


@pytest.mark.parametrize("name,train_counts", IDX_SETS)
def test_idx_splits_have_the_documented_sizes_and_ranges(name, train_counts):
    dataset = get_registry().dataset(name)
    assert dataset.classes == 10 and dataset.shape == (1, 28, 28) and dataset.description
    sizes = {"train": 50_000, "validation": 10_000, "test": 10_000}
    for split, n in sizes.items():
        images, labels = dataset.load(split)
        assert images.shape == (n, 1, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert int(images.min()) == 0 and int(images.max()) == 255
        assert set(labels.unique().tolist()) == set(range(10))
    counts = dataset.load("train")[1].bincount() + dataset.load("validation")[1].bincount()
    assert counts.tolist() == train_counts


@needs_data
def test_mnist_test_labels_and_first_pixels_are_the_originals():
    images, labels = get_registry().dataset("mnist").load("test")
    assert labels[:8].tolist() == [7, 2, 1, 0, 4, 1, 4, 9]
    with gzip.open(real_files("mnist") / "t10k-images-idx3-ubyte.gz") as fh:
        raw = fh.read()
    assert images[0].flatten().tolist() == list(raw[16:16 + 784])


@pytest.mark.parametrize("name", [p.values[0] for p in IDX_SETS])
def test_train_and_validation_are_the_two_ends_of_the_training_file(name):
    if not has_real(name):
        pytest.skip(f"no {name} files")
    dataset = get_registry().dataset(name)
    train, _ = dataset.load("train")
    validation, _ = dataset.load("validation")
    with gzip.open(real_files(name) / "train-images-idx3-ubyte.gz") as fh:
        whole = torch.from_numpy(data.parse_idx(fh.read(), name).copy())
    assert torch.equal(train[0, 0], whole[0]) and torch.equal(train[-1, 0], whole[49_999])
    assert torch.equal(validation[0, 0], whole[50_000]) and torch.equal(validation[-1, 0], whole[-1])


@needs_data
def test_loaded_once_per_process():
    dataset = get_registry().dataset("mnist")
    first, second = dataset.load("test"), dataset.load("test")
    assert first[0].data_ptr() == second[0].data_ptr()


@needs_data
@pytest.mark.skipif(not REAL_DIR or not (Path(REAL_DIR) / "mnist").is_dir(),
                    reason="needs the layout with one sub-directory per data set")
def test_old_layout_with_the_mnist_files_directly_in_the_data_dir_still_works(monkeypatch):
    """``L2OBENCH_DATA_DIR=.../mnist`` (the files directly in it) reads the same MNIST as
    ``L2OBENCH_DATA_DIR=...`` with a ``mnist/`` sub-directory; other data sets are not
    looked for there."""
    new = get_registry().dataset("mnist").load("validation")
    monkeypatch.setenv(data.DATA_ENV, str(Path(REAL_DIR) / "mnist"))
    old = get_registry().dataset("mnist").load("validation")
    assert old[0].data_ptr() != new[0].data_ptr()  # read anew from the other directory
    assert torch.equal(old[0], new[0]) and torch.equal(old[1], new[1])
    with pytest.raises(DataError) as err:
        get_registry().dataset("fashion-mnist").load("test")
    _assert_one_line(err, "fashion-mnist", str(Path(REAL_DIR) / "mnist" / "fashion-mnist"))


def test_images_to_float_gives_numpys_bits_for_every_pixel_value():
    pixels = np.arange(256, dtype=np.uint8)
    expected = torch.from_numpy(pixels.astype(np.float32) / 255.0)
    assert torch.equal(data.images_to_float(torch.from_numpy(pixels)), expected)


def test_select_classes_keeps_the_order_and_relabels_by_position():
    images = torch.arange(8).view(8, 1)
    labels = torch.tensor([3, 7, 1, 7, 3, 0, 9, 3])
    kept, relabelled = data.select_classes(images, labels, [7, 3])
    assert kept.flatten().tolist() == [0, 1, 3, 4, 7]
    assert relabelled.tolist() == [1, 0, 0, 1, 1]


def test_unknown_split_is_a_config_error():
    with pytest.raises(data.ConfigError) as err:
        get_registry().dataset("mnist").load("valid")
    _assert_one_line(err, "'valid'", "validation")


def test_registered_data_sets_satisfy_the_protocol():
    for name in ("mnist", "fashion-mnist", "cifar-10"):
        entry = get_registry().get("dataset", name)
        assert isinstance(entry.obj, data.Dataset) and entry.distribution == "l2obench"


# -- missing and wrong files -----------------------------------------------------------


def test_missing_file_names_the_file_the_folder_and_the_variable(fake_dir):
    with pytest.raises(DataError) as err:
        data.read_data_file("mnist", LABELS, in_root=True)
    _assert_one_line(err, LABELS.name, str(fake_dir), data.DATA_ENV)


def test_missing_sub_directory_names_where_it_was_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    with pytest.raises(DataError) as err:
        data.read_data_file("mnist", LABELS, in_root=True)
    _assert_one_line(err, str(tmp_path / "mnist"), f"nor in {tmp_path}")
    with pytest.raises(DataError) as err:
        data.read_data_file("fashion-mnist", fashion_mnist.FILES["test-labels"])
    _assert_one_line(err, str(tmp_path / "fashion-mnist"), data.DATA_ENV)
    assert "nor in" not in str(err.value)


def test_data_dir_that_is_not_a_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError) as err:
        data.read_data_file("mnist", LABELS)
    _assert_one_line(err, "nowhere", "not a directory")


@pytest.mark.parametrize("content", [b"not gzip at all", gzip.compress(b"\x00\x00\x08\x01" + bytes(20))[:15]],
                         ids=["not-gzip", "truncated"])
def test_unreadable_gzip_is_corrupted(fake_dir, content):
    (fake_dir / LABELS.name).write_bytes(content)
    with pytest.raises(DataError) as err:
        data.read_data_file("mnist", LABELS)
    _assert_one_line(err, str(fake_dir / LABELS.name), "corrupted", "replace it")


def test_wrong_content_fails_the_checksum(fake_dir):
    (fake_dir / LABELS.name).write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x02\x07\x02"))
    with pytest.raises(DataError) as err:
        data.read_data_file("mnist", LABELS)
    _assert_one_line(err, str(fake_dir / LABELS.name), "SHA256", "replace it")


def test_a_file_in_the_old_layout_is_checked_too(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    (tmp_path / LABELS.name).write_bytes(gzip.compress(b"wrong"))
    with pytest.raises(DataError) as err:
        data.read_data_file("mnist", LABELS, in_root=True)
    _assert_one_line(err, str(tmp_path / LABELS.name), "SHA256")


@needs_data
def test_uncompressed_and_regzipped_copies_are_accepted(fake_dir):
    with gzip.open(real_files("mnist") / LABELS.name) as fh:
        raw = fh.read()
    (fake_dir / LABELS.name[:-3]).write_bytes(raw)
    path, plain = data.read_data_file("mnist", LABELS)
    assert path == fake_dir / LABELS.name[:-3]
    (fake_dir / LABELS.name).write_bytes(gzip.compress(raw, compresslevel=1))
    path, regzipped = data.read_data_file("mnist", LABELS)
    assert path == fake_dir / LABELS.name and plain == regzipped == raw


@pytest.mark.parametrize("raw,fragment", [
    (b"\x00\x00", "not an IDX file"),
    (b"\x00\x00\x0d\x01" + bytes(8), "not an IDX file"),  # float data
    (b"\x00\x00\x08\x03\x00\x00\x00\x02", "shorter than its 16-byte header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05" + bytes(4), "4 bytes of data for shape (5,)"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05" + bytes(6), "6 bytes of data for shape (5,)"),
])
def test_bad_idx_bytes_are_refused_naming_the_file(raw, fragment):
    with pytest.raises(DataError) as err:
        data.parse_idx(raw, "somewhere/labels.idx")
    _assert_one_line(err, "somewhere/labels.idx", fragment)


def test_idx_round_trip():
    array = (np.arange(2 * 3 * 4) % 256).astype(np.uint8).reshape(2, 3, 4)
    assert np.array_equal(data.parse_idx(_idx(array), "x"), array)


def _tiny_idx_dataset(tmp_path, monkeypatch, images: np.ndarray, labels: np.ndarray) -> data.IDXDataset:
    """An IDXDataset ``tiny`` of one pair of files written into ``DIR/tiny/``."""
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    (tmp_path / "tiny").mkdir()
    files = {}
    for key, array in (("all-images", images), ("all-labels", labels)):
        raw = _idx(array)
        (tmp_path / "tiny" / f"{key}.gz").write_bytes(gzip.compress(raw))
        files[key] = data.DataFile(f"{key}.gz", _sha256(raw), gunzip=True)
    n = len(labels)
    splits = {"train": ("all", slice(0, n - 2)), "validation": ("all", slice(n - 2, n - 1)),
              "test": ("all", slice(n - 1, n))}
    return data.IDXDataset("tiny", "a tiny test set", files, splits, classes=3, shape=(1, 2, 2))


def test_idx_dataset_reads_its_split_from_checked_files(tmp_path, monkeypatch):
    images = (np.arange(5 * 4) % 256).astype(np.uint8).reshape(5, 2, 2)
    labels = np.array([0, 2, 1, 1, 0], np.uint8)
    tiny = _tiny_idx_dataset(tmp_path, monkeypatch, images, labels)
    assert isinstance(tiny, data.Dataset)
    x, y = tiny.load("train")
    assert x.shape == (3, 1, 2, 2) and torch.equal(x[:, 0], torch.from_numpy(images[:3]))
    assert y.tolist() == [0, 2, 1] and tiny.load("test")[1].tolist() == [0]


def test_idx_dataset_refuses_labels_out_of_range_and_mismatched_pairs(tmp_path, monkeypatch):
    images = np.zeros((4, 2, 2), np.uint8)
    tiny = _tiny_idx_dataset(tmp_path, monkeypatch, images, np.array([0, 1, 5, 1], np.uint8))
    with pytest.raises(DataError) as err:
        tiny.load("train")
    _assert_one_line(err, "tiny", "all-images.gz", "all-labels.gz", "4 labels", "classes 0-2")


def test_idx_dataset_refuses_images_of_another_shape(tmp_path, monkeypatch):
    tiny = _tiny_idx_dataset(tmp_path, monkeypatch, np.zeros((4, 3, 3), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(DataError) as err:
        tiny.load("train")
    _assert_one_line(err, str(tmp_path / "tiny" / "all-images.gz"), "(3, 3)", "(2, 2)")


def test_data_file_checksum_notation_is_checked():
    with pytest.raises(ValueError, match="sha256:"):
        data.DataFile("x.gz", "crc32:1234")


# -- downloads -------------------------------------------------------------------------


def test_download_tries_the_mirrors_in_order_with_md5(offline_cache):
    served, calls = offline_cache
    content = b"\x00\x00\x08\x01" + (10_000).to_bytes(4, "big") + bytes(10_000)
    served[mnist.MIRRORS[1] + LABELS.name] = gzip.compress(content)
    # the fake content is not MNIST: the mirror answered, the SHA-256 check refuses it
    with pytest.raises(DataError) as err:
        data.read_data_file("mnist", LABELS, mnist.MIRRORS)
    _assert_one_line(err, str(data.data_cache_dir("mnist") / LABELS.name), "SHA256", "delete it")
    assert calls == [(mnist.MIRRORS[0] + LABELS.name, LABELS.download_hash),
                     (mnist.MIRRORS[1] + LABELS.name, LABELS.download_hash)]
    assert LABELS.download_hash == "md5:ec29112dd5afa0611ce80d1b7f02629c"


@needs_data
@pytest.mark.parametrize("name,module", [("mnist", mnist), ("fashion-mnist", fashion_mnist)])
def test_downloaded_file_is_read_from_the_cache(offline_cache, name, module):
    if not has_real(name):
        pytest.skip(f"no {name} files")
    served, calls = offline_cache
    labels = module.FILES["test-labels"]
    served[module.MIRRORS[0] + labels.name] = (real_files(name) / labels.name).read_bytes()
    path, raw = data.read_data_file(name, labels, module.MIRRORS)
    assert data.parse_idx(raw, name).shape == (10_000,)
    assert path == data.data_cache_dir(name) / labels.name and path.is_file()
    assert calls == [(module.MIRRORS[0] + labels.name, labels.download_hash)]


def test_every_mirror_failing_says_what_to_do(offline_cache):
    _, calls = offline_cache
    with pytest.raises(DataError) as err:
        data.read_data_file("mnist", LABELS, mnist.MIRRORS)
    _assert_one_line(err, LABELS.name, "ConnectionError", data.DATA_ENV, "mnist/")
    assert [url for url, _ in calls] == [m + LABELS.name for m in mnist.MIRRORS]


def test_fashion_mnist_downloads_from_zalandos_mirrors_with_the_upstream_md5(offline_cache):
    _, calls = offline_cache
    images = fashion_mnist.FILES["train-images"]
    with pytest.raises(DataError):
        data.read_data_file("fashion-mnist", images, fashion_mnist.MIRRORS)
    assert calls[0] == ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz",
                        "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d")


def test_cache_dir_is_the_users_cache():
    import pooch

    assert data.data_cache_dir("mnist") == Path(pooch.os_cache("l2obench")) / "mnist"


# -- the plugin side -------------------------------------------------------------------

#: what a built-in plugin may import: the public API, and torch, numpy, pydantic and the standard library
ALLOWED_IMPORTS = {"l2obench.api", "torch", "numpy", "pydantic"}


@pytest.mark.parametrize("module", ["l2obench.plugins.datasets", "l2obench.plugins.datasets.mnist",
                                    "l2obench.plugins.datasets.fashion_mnist", "l2obench.plugins.datasets.cifar10",
                                    "l2obench.plugins.mnist"])
def test_data_set_plugins_and_image_families_import_only_the_public_api(module):
    import ast
    import importlib
    import sys

    tree = ast.parse(Path(importlib.import_module(module).__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else []  # relative: the plugin's own modules
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert (name in ALLOWED_IMPORTS or top in ALLOWED_IMPORTS - {"l2obench.api"}
                    or top in sys.stdlib_module_names or name == "__future__"), f"{module} imports {name}"


def test_the_data_layer_names_no_data_set():
    import l2obench

    core = Path(l2obench.__file__).parent
    for module in ("datasets.py", "api.py"):
        text = (core / module).read_text().lower()
        for name in ("mnist", "cifar", "l2obench.plugins"):
            assert name not in text, f"{module} names {name}"


def test_list_shows_the_data_sets(capsys, plugin_env):
    import json

    from l2obench.cli import main

    assert main(["list", "--kind", "dataset"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[1]: line for line in lines[1:]}
    assert set(rows) >= {"mnist", "fashion-mnist", "cifar-10"}
    assert "classes=10, shape=3x32x32" in rows["cifar-10"] and "shape=1x28x28" in rows["mnist"]
    assert main(["list", "--kind", "dataset", "--json"]) == 0
    described = {r["name"]: r["description"] for r in json.loads(capsys.readouterr().out)}
    assert "45,000" in described["cifar-10"] and "Fashion-MNIST" in described["fashion-mnist"]
