"""A failed meta-training is a failure: when no episode gives a finite meta-loss, or no
validation beats the initialisation's, the untrained initialisation is never tested as
if trained; the run reports the meta-train cell and its tests failed with the reason,
and the report lists it instead of saying that no run diverged."""
from __future__ import annotations

import os

import pytest

from l2obench.errors import MetaTrainingError
from l2obench.metatrain import meta_train
from l2obench.report import write_report
from l2obench.runner import Runner
from l2obench.suite import load_suite
from l2obench.work import run_meta_training

from test_metatrain import QUAD, TinyLearned, small_config
from test_runner import ThreadExecutor

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("lr, validation_seeds, reason", [
    (1e30, 3, "no finite meta-loss in 6 episodes (every one diverged); lower the meta learning rate lr=1e+30"),
    (1e30, 0, "no finite meta-loss in 6 episodes"),
    (1e-30, 3, "no validation loss better than the initialisation's"),
])
def test_a_meta_training_that_learned_nothing_is_a_failure(lr, validation_seeds, reason):
    result = meta_train(TinyLearned(), QUAD, small_config(epochs=2, episodes_per_epoch=3, lr=lr,
                                                          validation_seeds=validation_seeds), progress=False)
    assert result.failure is not None and reason in result.failure
    if validation_seeds:
        assert 0 in result.validation and result.best_epoch == 0  # the initialisation was validated


def test_a_meta_training_that_learned_is_not_a_failure():
    result = meta_train(TinyLearned(), QUAD, small_config(), progress=False)
    assert result.best_epoch > 0 and result.failure is None


SUITE = """\
[suite]
name = "failing"
seeds = 2
validation_seeds = 2

[[meta_train]]
name = "lstm-bad"
optimizer = "lstm"
params = { preprocess = false, hidden = 4, layers = 1 }
task = { family = "quadratic", dim = 5 }
horizon = 10
unroll = 5
epochs = 2
episodes_per_epoch = 2
meta_batch = 2
lr = 1e30
validation_seeds = 2

[baselines]
optimizers = ["sgd"]
lr_grid = [0.1]

[[test]]
task = { family = "quadratic", dim = 5 }
horizons = [10, 20]
"""


def test_a_failed_meta_training_fails_its_cell_and_tests_and_the_report_says_so(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    out = tmp_path / "run"
    runner = Runner(load_suite(suite), out)
    summary = runner.run(pool=ThreadExecutor(1), progress=False, stream=open(os.devnull, "w"))
    failed = dict(summary.failed)
    assert failed.pop("meta-train lstm-bad").startswith("MetaTrainingError: meta-training of lstm-bad failed: "
                                                        "no finite meta-loss")
    assert sorted(failed) == ["lstm-bad @ quadratic[dim=5] @ T=10", "lstm-bad @ quadratic[dim=5] @ T=20"]
    assert all(r.startswith("meta-training of lstm-bad failed: no finite meta-loss") for r in failed.values())
    assert not (out / "checkpoints" / "lstm-bad.safetensors").exists()

    report = write_report(out)["markdown"].read_text()
    assert "No run diverged." not in report
    assert "Meta-training failed" in report and "| lstm-bad | MetaTrainingError: meta-training of lstm-bad" in report

    # the rerun fails again at once, from the progress kept, and still tests nothing untrained
    again = Runner(load_suite(suite), out).run(pool=ThreadExecutor(1), progress=False,
                                               stream=open(os.devnull, "w"))
    assert dict(again.failed) == dict(summary.failed) and again.ran == 0


def test_the_cell_function_raises_one_line(tmp_path):
    spec = {"name": "bad", "plugin": "lstm", "params": {"preprocess": False, "hidden": 4, "layers": 1},
            "task": {"family": "quadratic", "config": {"dim": 5}},
            "train": {"horizon": 10, "unroll": 5, "epochs": 1, "episodes_per_epoch": 2, "meta_batch": 2,
                      "lr": 1e30, "validation_seeds": 2},
            "device": "cpu"}
    with pytest.raises(MetaTrainingError, match="^meta-training of bad failed: no finite meta-loss") as info:
        run_meta_training(spec, tmp_path / "progress.pt")
    assert "\n" not in str(info.value)
    assert (tmp_path / "progress.pt").exists()  # the failed training's record is kept for a rerun
