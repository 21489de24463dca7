"""The paper's CIFAR protocol (Sec. 3.3) as the suites run it: the two-LSTM optimizer
(one LSTM for the conv parameters, one for the fully connected ones) learns on a tiny
batch-normalised conv net, and the suites that publish it and its cross-data-set tests load."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from cifar10_files import archive, install

from l2obench import get_registry
from l2obench.metatrain import MetaTrainConfig, meta_train
from l2obench.suite import load_suite

SUITES = Path(__file__).resolve().parent.parent / "suites"

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def small_cifar10(tmp_path, monkeypatch):
    """``L2OBENCH_DATA_DIR`` with a small archive in CIFAR-10's format (40 images a batch): 3-channel
    images like the paper's, read in no time."""
    monkeypatch.setenv("L2OBENCH_DATA_DIR", str(tmp_path))
    entries = get_registry().entries["dataset"]
    monkeypatch.setitem(entries, "cifar-10", replace(entries["cifar-10"], obj=install(tmp_path, archive(per_batch=40))))


def test_lstm_groups_lowers_its_meta_loss_on_a_batch_normalised_conv_net(small_cifar10):
    task = get_registry().task("image-conv", dataset="cifar-10", channels=[2, 2], kernel=3, hidden=8,
                               batch_norm=True, batch_size=16)
    assert set(task.groups) == {"conv", "fc"}
    torch.manual_seed(0)  # the meta-parameters' initialisation
    lopt = get_registry().learned("lstm-groups", hidden=8, output_scale=0.01)
    config = MetaTrainConfig(horizon=16, unroll=4, epochs=2, episodes_per_epoch=4, meta_batch=2, lr=0.01,
                             clip=1.0, validation_seeds=4, seed=0)
    result = meta_train(lopt, task, config, progress=False)
    assert result.skipped == 0
    assert result.best_val < result.validation[0], result.validation
    losses = [row["meta_loss"] for row in result.history]
    assert sum(losses[-4:]) < sum(losses[:4]), losses


def test_the_paper_conv_suite_holds_the_fig7_protocol():
    """Two LSTMs, one LSTM and LSTM-sub meta-trained within budget; LSTM-sub never sees the
    classes of the 5-class test subset."""
    suite = load_suite(SUITES / "paper-conv.toml")
    assert {name: spec.plugin for name, spec in suite.learned.items()} == \
        {"lstm-groups": "lstm-groups", "lstm": "lstm", "lstm-sub": "lstm-groups"}
    assert all(spec.train["time_limit_s"] <= 1800 for spec in suite.learned.values())
    held_out = set(suite.learned["lstm-sub"].task.config["classes"])
    tested = {tuple(test.task.config["classes"]) for test in suite.tests}
    assert tested == {tuple(range(10)), (0, 1, 2, 3, 4), (0, 1)}
    assert not held_out & {0, 1, 2, 3, 4}
    assert {"sgd", "nag", "rmsprop", "adam"} <= set(suite.baselines)


def test_the_cross_dataset_suite_tests_each_data_set_with_optimizers_trained_on_the_other():
    suite = load_suite(SUITES / "cross-dataset.toml")
    tested = {test.task.config["dataset"] for test in suite.tests}
    assert tested == {"mnist", "fashion-mnist"}
    assert {test.task.family for test in suite.tests} == {"image-mlp", "image-conv"}
