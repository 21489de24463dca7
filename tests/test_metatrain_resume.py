"""Meta-training saves its progress every epoch and resumes from it: an interrupted
run, resumed, gives the checkpoint an uninterrupted run gives, bit for bit; a SIGKILL
of ``l2obench run`` during meta-training loses at most the epoch it was in."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from l2obench import ConfigError, L2OWarning, Optimizer, Registry, hookimpl
from l2obench.checkpoint import checkpoint_bytes, read_checkpoint
from l2obench.metatrain import meta_train
from l2obench.plugins import quadratic
from l2obench.resolve import learned_optimizer
from l2obench.runner import Runner
from l2obench.suite import load_suite

from test_metatrain import QUAD, TinyLearned, small_config
from test_runner import ThreadExecutor

pytestmark = pytest.mark.usefixtures("single_thread")


class NoisyLearned(TinyLearned):
    """TinyLearned whose steps draw from torch's global generator, as dropout would."""

    def opt_fn(self, groups=None):
        base = super().opt_fn(groups)

        def update(g, state, params):
            step, state = base.update(g, state, params)
            return step * (1 + 0.1 * torch.rand_like(step)), state

        return Optimizer(base.init, update)


class TinyPlugin:
    @hookimpl
    def register_learned_optimizers(self, register):
        register("tiny", TinyLearned)
        register("noisy", NoisyLearned)


REGISTRY = Registry([TinyPlugin(), quadratic], entry_points=False)
CONFIG = small_config(epochs=4, episodes_per_epoch=3, validation_seeds=3)


class Interrupt(Exception):
    """Stands for a crash in the middle of an epoch."""


def train(name, progress_file=None, callback=None, config=CONFIG):
    """Meta-train ``name`` from scratch (or from ``progress_file``): ((content hash, tensor
    bytes) of its checkpoint, the training record)."""
    lopt = learned_optimizer(name, {"hidden": 4}, seed=config.seed, registry=REGISTRY)
    result = meta_train(lopt, QUAD, config, progress=False, progress_file=progress_file, callback=callback)
    training = {"best_epoch": result.best_epoch, "best_val": result.best_val, "skipped": result.skipped,
                "stopped": result.stopped, "optimizee_steps": result.optimizee_steps}
    data, digest = checkpoint_bytes(lopt, training, registry=REGISTRY)
    return (digest, _tensor_bytes(data)), result


def _tensor_bytes(data: bytes) -> bytes:
    """The tensors of a checkpoint, byte for byte (safetensors writes its metadata in no
    fixed order, so the file's bytes vary; the content hash and the tensors do not)."""
    import struct

    (n,) = struct.unpack("<Q", data[:8])
    return data[8 + n:]


def crash_at(episode):
    def callback(row):
        if row["episode"] == episode:
            raise Interrupt

    return callback


@pytest.mark.parametrize("name", ["tiny", "noisy"])
def test_interrupted_then_resumed_gives_the_same_checkpoint(tmp_path, name):
    expected, reference = train(name)
    progress = tmp_path / "progress.pt"
    with pytest.raises(Interrupt):  # in epoch 3: epochs 1 and 2 are saved
        train(name, progress, crash_at(7))
    assert progress.exists()
    seen = []
    resumed, result = train(name, progress, seen.append)
    assert [r["episode"] for r in seen] == [6, 7, 8, 9, 10, 11]  # only the epoch in progress was lost
    assert resumed == expected
    assert result.history == reference.history and result.validation == reference.validation
    assert (result.best_epoch, result.skipped, result.optimizee_steps) == \
        (reference.best_epoch, reference.skipped, reference.optimizee_steps)
    assert set(result.validation) == {0, 1, 2, 3, 4}


def test_interrupted_twice_and_at_an_epoch_boundary(tmp_path):
    expected, _ = train("noisy")
    progress = tmp_path / "progress.pt"
    for episode in (2, 5, 9):  # the last episode of epochs 1 and 2, the first of epoch 4
        with pytest.raises(Interrupt):
            train("noisy", progress, crash_at(episode))
    assert train("noisy", progress)[0] == expected


def test_a_finished_progress_file_returns_at_once(tmp_path):
    progress = tmp_path / "progress.pt"
    expected, _ = train("tiny", progress)
    seen = []
    again, result = train("tiny", progress, seen.append)
    assert again == expected and not seen and len(result.history) == 12


def test_a_stopped_run_resumes_as_stopped(tmp_path):
    progress = tmp_path / "progress.pt"
    stop = lambda row: row["episode"] == 4  # noqa: E731
    expected, first = train("tiny", progress, stop)
    again, result = train("tiny", progress)
    assert again == expected and result.stopped == first.stopped == "callback" and len(result.history) == 5


def test_progress_of_another_config_is_refused_in_one_line(tmp_path):
    progress = tmp_path / "progress.pt"
    with pytest.raises(Interrupt):
        train("tiny", progress, crash_at(4))
    with pytest.raises(ConfigError, match="saved for another meta-train config; delete it") as info:
        train("tiny", progress, config=small_config(epochs=4, episodes_per_epoch=3, validation_seeds=3, lr=0.1))
    assert "\n" not in str(info.value)


def test_an_unreadable_progress_file_starts_over_with_a_warning(tmp_path):
    expected, _ = train("tiny")
    progress = tmp_path / "progress.pt"
    progress.write_bytes(b"not a progress file")
    with pytest.warns(L2OWarning, match="unreadable"):
        assert train("tiny", progress)[0] == expected


def test_an_unwritable_progress_file_only_warns(tmp_path):
    expected, _ = train("tiny")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.warns(L2OWarning, match="cannot save meta-training progress"):
        assert train("tiny", blocker / "progress.pt")[0] == expected


def test_time_limit_counts_the_time_before_the_interruption(tmp_path, monkeypatch):
    progress = tmp_path / "progress.pt"
    config = small_config(epochs=50, episodes_per_epoch=2, time_limit_s=1000)
    with pytest.raises(Interrupt):
        train("tiny", progress, crash_at(3), config)
    saved = torch.load(progress, weights_only=True)
    saved["elapsed_s"] = 999.9999  # as if the first run had spent nearly all of it
    torch.save(saved, progress)
    _, result = train("tiny", progress, config=config)
    assert result.stopped == "time limit" and len(result.history) == 3 and result.wall_s >= 999.9999


# -- a real SIGKILL of `l2obench run` during meta-training ---------------------------

SUITE = """\
[suite]
name = "resume"
seeds = 2
validation_seeds = 2

[[meta_train]]
name = "lstm-tiny"
optimizer = "lstm"
params = { preprocess = false, hidden = 4, layers = 1 }
task = { family = "quadratic", dim = 5 }
horizon = 20
unroll = 5
epochs = 12
episodes_per_epoch = 4
meta_batch = 2
lr = 0.01
validation_seeds = 2

[baselines]
optimizers = ["sgd"]
lr_grid = [0.1]

[[test]]
task = { family = "quadratic", dim = 5 }
horizons = [10]
optimizers = ["lstm-tiny"]
"""


def _run(suite: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "l2obench.cli", "run", str(suite), "--out", str(out), "--workers", "1",
           "--no-progress"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _checkpoint_hash(out: Path) -> str:
    return read_checkpoint(out / "checkpoints" / "lstm-tiny.safetensors")[1].content_hash


def test_sigkill_during_meta_training_resumes_from_the_last_epoch(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    reference = tmp_path / "reference"  # uninterrupted, in this process (tiny tensors: threads do not matter)
    summary = Runner(load_suite(suite), reference).run(pool=ThreadExecutor(1), progress=False,
                                                       stream=open(os.devnull, "w"))
    assert not summary.failed and not list((reference / "progress").iterdir())  # removed once written

    out = tmp_path / "killed"
    proc = _run(suite, out)
    saved = None
    try:
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline:
            files = list((out / "progress").glob("*.pt")) if (out / "progress").is_dir() else []
            if files and torch.load(files[0], weights_only=True)["epoch"] >= 2:
                saved = files[0]
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its worker, no time to clean up
        proc.wait()
    assert saved is not None, "the kill should land during meta-training"
    at_kill = torch.load(saved, weights_only=True)["epoch"]
    assert 2 <= at_kill < 12 and not (out / "checkpoints" / "lstm-tiny.safetensors").exists()

    again = _run(suite, out)
    assert again.wait(300) == 0, again.stderr.read().decode()
    assert _checkpoint_hash(out) == _checkpoint_hash(reference)
    assert not saved.exists()


def test_progress_saved_before_newer_settings_existed_resumes(tmp_path):
    """A progress file whose config lacks the settings added since (estimator, objective,
    truncation_schedule, ... at their defaults) is the same config, as a cell's key is."""
    import json

    from l2obench.config import KEYLESS_DEFAULTS

    expected, _ = train("tiny")
    progress = tmp_path / "progress.pt"
    with pytest.raises(Interrupt):
        train("tiny", progress, crash_at(4))
    saved = torch.load(progress, weights_only=True)
    older = {k: v for k, v in json.loads(saved["config"]).items() if k not in KEYLESS_DEFAULTS}
    assert len(older) < len(json.loads(saved["config"]))
    saved["config"] = json.dumps(older, sort_keys=True)
    torch.save(saved, progress)
    seen = []
    again, result = train("tiny", progress, seen.append)
    assert again == expected and seen and seen[0]["episode"] > 0  # resumed, not started over
