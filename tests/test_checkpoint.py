"""Checkpoints: a round trip gives the same optimizer, through a file or as bytes; a
truncated, tampered or mismatched file is refused with one line naming it; nothing is
unpickled."""
from __future__ import annotations

import dataclasses
import json
import pickle
import struct

import pytest
import torch

from l2obench import CheckpointError, Registry
from l2obench.checkpoint import IN_MEMORY, checkpoint_bytes, load_checkpoint, read_checkpoint, save_checkpoint

from test_metatrain import QUAD, TinyLearned, TinyPlugin


TRAINING = {"task": "quadratic", "config": {"horizon": 20}}


@pytest.fixture
def registry():
    return Registry([TinyPlugin()], entry_points=False)


@pytest.fixture
def saved(tmp_path, registry):
    torch.manual_seed(0)
    lopt = registry.learned("tiny", hidden=6, init_log_lr=-3.0)
    path = tmp_path / "tiny.safetensors"
    digest = save_checkpoint(path, lopt, TRAINING, registry=registry)
    return path, lopt, digest


def refused(path, registry, match, **kw) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path, registry, **kw)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_round_trip(saved, registry, tmp_path):
    path, lopt, digest = saved
    loaded, info = load_checkpoint(path, registry)
    assert isinstance(loaded, TinyLearned)
    for k, v in lopt.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    assert info.plugin == "tiny" and info.content_hash == digest
    assert info.hyperparameters == {"hidden": 6, "init_log_lr": -3.0}
    assert info.training == {"task": "quadratic", "config": {"horizon": 20}}
    assert info.distribution == "<inline>" and info.l2obench_version
    params = QUAD.init([1, 2])
    grads = torch.randn_like(params)
    a, _ = lopt.opt_fn().update(grads, lopt.opt_fn().init(params), params)
    b, _ = loaded.opt_fn().update(grads, loaded.opt_fn().init(params), params)
    assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]  # no temporary file left


def test_truncated_file_is_refused(saved, registry):
    path, _, _ = saved
    data = path.read_bytes()
    for cut in (0, 5, 8, 40, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        refused(path, registry, "truncated|corrupted|not a safetensors")


def test_tampered_tensor_is_refused(saved, registry):
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40
    path.write_bytes(bytes(data))
    refused(path, registry, "content hash mismatch")


def test_tampered_metadata_is_refused(saved, registry):
    path, _, _ = saved
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = data[8:8 + n].decode()
    edited = header.replace('\\"horizon\\": 20', '\\"horizon\\": 99')
    assert edited != header and len(edited) == len(header)
    path.write_bytes(data[:8] + edited.encode() + data[8 + n:])
    refused(path, registry, "content hash mismatch")


def test_unknown_plugin_is_refused(saved):
    path, _, _ = saved
    msg = refused(path, Registry(entry_points=False), "not installed|unknown learned optimizer 'tiny'")
    assert "<inline>" in msg


def test_version_mismatch_is_refused(saved):
    path, _, _ = saved
    other = Registry(entry_points=False)
    other.add_plugin(TinyPlugin(), name="tinyplug", distribution="tiny-dist", version="2.0")
    other._collect()
    refused(path, other, "saved by <inline> - but tiny-dist 2.0 is installed")
    lopt, info = load_checkpoint(path, other, check_version=False)
    assert isinstance(lopt, TinyLearned)


def test_hyperparameters_not_matching_tensors_are_refused(tmp_path, registry):
    lopt = registry.learned("tiny", hidden=8)
    lopt.hyperparameters = {"hidden": 4, "init_log_lr": -6.0}
    path = tmp_path / "bad.safetensors"
    save_checkpoint(path, lopt, registry=registry)
    refused(path, registry, "has shape .* expects")


def test_files_that_are_not_checkpoints_are_refused(tmp_path, registry):
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(3)}, plain)
    refused(plain, registry, "not an l2obench checkpoint")
    pickled = tmp_path / "evil.pt"
    pickled.write_bytes(pickle.dumps({"x": 1}))
    refused(pickled, registry, "truncated|not a safetensors")
    refused(tmp_path / "missing.safetensors", registry, "no such file")


def test_saving_checks_its_inputs(tmp_path, registry):
    path = tmp_path / "x.safetensors"
    with pytest.raises(CheckpointError, match="not built through the registry") as info:
        save_checkpoint(path, TinyLearned(), registry=registry)  # no registered name to rebuild it by
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    renamed = registry.learned("tiny")
    renamed.name = "nope"
    with pytest.raises(CheckpointError, match="unknown learned optimizer 'nope'"):
        save_checkpoint(path, renamed, registry=registry)
    lopt = registry.learned("tiny")
    lopt.hyperparameters = {"hidden": object()}
    with pytest.raises(CheckpointError, match="not JSON"):
        save_checkpoint(path, lopt, registry=registry)
    assert not list(tmp_path.iterdir())


def test_overwrite_is_atomic_and_metadata_is_readable_without_the_plugin(saved, registry):
    path, lopt, first = saved
    with torch.no_grad():
        lopt.log_lr.add_(1.0)
    second = save_checkpoint(path, lopt, registry=registry)
    assert second != first
    tensors, info = read_checkpoint(path)
    assert info.content_hash == second and torch.equal(tensors["log_lr"], lopt.log_lr.detach())
    assert json.loads(json.dumps(info.training)) == {}


def test_bytes_round_trip_without_files(saved, registry, tmp_path, monkeypatch):
    """A checkpoint as bytes is the file's bytes, and loads from memory alone: workers
    send and receive checkpoints as data, with no temporary file."""
    import tempfile

    path, lopt, digest = saved
    monkeypatch.setattr(tempfile, "mkstemp", lambda *a, **k: pytest.fail("a temporary file was made"))
    data, same = checkpoint_bytes(lopt, TRAINING, registry=registry)
    assert same == digest  # (safetensors may order the header differently: the hash is over canonical JSON)
    assert read_checkpoint(data)[1] == dataclasses.replace(read_checkpoint(path)[1], path=IN_MEMORY)
    loaded, info = load_checkpoint(data, registry)
    assert info.path == IN_MEMORY and info.content_hash == digest and info.training == TRAINING
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in lopt.state_dict().items())
    assert loaded.name == "tiny" and loaded.hyperparameters == lopt.hyperparameters
    with pytest.raises(CheckpointError, match=f"checkpoint {IN_MEMORY}: truncated"):
        load_checkpoint(data[: len(data) // 2], registry)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]


# -- checkpoints edited by hand: every shape of metadata, every path refuses in one line --
def rewrite_header(path, edit, *, rehash: bool = True) -> None:
    """Rewrite the safetensors header of ``path`` (8-byte little-endian length, then JSON):
    ``edit(header)`` changes it in place (or returns a replacement); with ``rehash``, the
    content hash is recomputed as someone covering their tracks would."""
    from safetensors.torch import load

    from l2obench.checkpoint import content_hash

    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.get("__metadata__")
    header = edit(header) or header
    if rehash and isinstance(header, dict) and isinstance(header.get("__metadata__"), dict) and meta is not None:
        header["__metadata__"]["sha256"] = content_hash(load(data), header["__metadata__"])
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])


def set_meta(key, value):
    def edit(header):
        header["__metadata__"][key] = value
    return edit


def set_hyper(**changes):
    def edit(header):
        meta = header["__metadata__"]
        meta["hyperparameters"] = json.dumps({**json.loads(meta["hyperparameters"]), **changes}, sort_keys=True)
    return edit


BAD_CHECKPOINTS = {
    "header is a list": (lambda h: [h], "header is a JSON list"),
    "header is a string": (lambda h: "text", "header is a JSON str"),
    "metadata is a list": (lambda h: {**h, "__metadata__": ["a", "b"]}, "not a table of strings"),
    "metadata is a string": (lambda h: {**h, "__metadata__": "l2obench"}, "not a table of strings"),
    "metadata value is a number": (set_meta("plugin", 3), "not a table of strings"),
    "hyperparameters are a list": (set_meta("hyperparameters", "[1, 2]"), "hyperparameters metadata is a JSON list"),
    "training is a string": (set_meta("training", '"long"'), "training metadata is a JSON str"),
    "hidden of the wrong type": (set_hyper(hidden="big"), "hidden='big'"),
    "hidden is a float": (set_hyper(hidden=2.5), "must be an integer"),
    "hidden of zero": (set_hyper(hidden=0), "hidden=0"),
    "unknown hyperparameter": (set_hyper(width=3), "unknown parameter 'width'"),
    "hidden of 10^6": (set_hyper(hidden=10 ** 6), "expects"),
    "hidden of 10^12": (set_hyper(hidden=10 ** 12), "cannot rebuild"),
    "a tensor's dtype changed": (None, "dtype"),
}


@pytest.fixture
def lstm_checkpoint(tmp_path):
    from l2obench.registry import get_registry

    torch.manual_seed(0)
    lopt = get_registry().learned("lstm", hidden=2, layers=1)
    path = tmp_path / "lstm.safetensors"
    save_checkpoint(path, lopt, {"note": "tiny"})
    return path


def make_bad_checkpoint(path, case: str) -> None:
    edit, _ = BAD_CHECKPOINTS[case]
    if edit is None:  # a tensor saved as float64: hash and hyperparameters all consistent
        from safetensors.torch import load, save

        from l2obench.checkpoint import content_hash

        data = path.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        meta = json.loads(data[8:8 + n])["__metadata__"]
        tensors = load(data)
        first = sorted(tensors)[0]
        tensors[first] = tensors[first].double()
        meta["sha256"] = content_hash(tensors, meta)
        path.write_bytes(save(tensors, metadata=meta))
        return
    rewrite_header(path, edit)


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_edited_checkpoints_are_refused_by_load_checkpoint(lstm_checkpoint, case):
    """Whatever its header holds, load_checkpoint refuses it with one line naming the file,
    from the file and from its bytes; a hidden size of 10^6 or 10^12 is refused from
    shapes computed on the meta device, without allocating the network."""
    make_bad_checkpoint(lstm_checkpoint, case)
    match = BAD_CHECKPOINTS[case][1]
    for source, name in ((lstm_checkpoint, str(lstm_checkpoint)), (lstm_checkpoint.read_bytes(), IN_MEMORY)):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(source)
        msg = str(info.value)
        assert "\n" not in msg and name in msg and match in msg, msg


def test_a_huge_hidden_size_is_refused_before_the_real_network_is_built(lstm_checkpoint, monkeypatch):
    from l2obench.registry import get_registry

    make_bad_checkpoint(lstm_checkpoint, "hidden of 10^6")
    entry = get_registry().get("learned", "lstm")
    built = []
    real_create = type(entry).create

    def create(self, *a, **kw):
        built.append(str(torch.get_default_device()))
        return real_create(self, *a, **kw)

    monkeypatch.setattr(type(entry), "create", create)
    with pytest.raises(CheckpointError, match="expects"):
        load_checkpoint(lstm_checkpoint)
    assert built == ["meta"]


@pytest.mark.parametrize("case", ["metadata is a list", "hidden of the wrong type", "hidden of 10^12",
                                  "a tensor's dtype changed"])
def test_edited_checkpoints_are_refused_by_every_command(lstm_checkpoint, case, tmp_path, capsys):
    """`l2obench evaluate --checkpoint` and a suite's [[checkpoint]]: one line, exit 2."""
    from l2obench.cli import main

    make_bad_checkpoint(lstm_checkpoint, case)
    suite = tmp_path / "suite.toml"
    suite.write_text('[suite]\nname = "ckpt"\nseeds = 2\n\n[[checkpoint]]\nname = "mine"\n'
                     f'path = "{lstm_checkpoint.name}"\n\n'
                     '[[test]]\ntask = { family = "quadratic", dim = 3 }\nhorizons = [3]\n')
    for argv in (["evaluate", "--checkpoint", str(lstm_checkpoint), "--task", "quadratic", "--steps", "2",
                  "--seeds", "1"],
                 ["run", str(suite), "--out", str(tmp_path / "run"), "--no-progress", "--workers", "1"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("l2obench: error:") and "lstm.safetensors" in err, err
        assert "Traceback" not in err
