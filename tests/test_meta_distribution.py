"""Meta-training on a task distribution: a grid in a [[meta_train]] task is a set of
variants, one drawn per episode from the meta-training seed (the same draws for the
same seed), validated on a fixed sample of it; suites without one keep their keys."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from l2obench.config import KEYLESS_DEFAULTS
from l2obench.metatrain import _validation_tasks, MetaTrainConfig
from l2obench.plan import plan_suite
from l2obench.registry import get_registry
from l2obench.suite import parse_suite
from l2obench.work import meta_training_task

RESULTS = Path(__file__).resolve().parent.parent / "results"

SUITE = """\
[suite]
name = "dist"
seeds = 2
validation_seeds = 2

[[meta_train]]
name = "lstm-many"
optimizer = "lstm"
params = { preprocess = false, hidden = 4 }
task = { family = "quadratic", dim = [3, 5, 8], distribution = ["gaussian", "uniform"] }
horizon = 10
unroll = 5
epochs = 1
episodes_per_epoch = 2

[[test]]
task = { family = "quadratic", dim = 5 }
horizons = 10
"""


def draws(spec, seed, n=40):
    sample = meta_training_task(spec, get_registry())
    g = torch.Generator().manual_seed(seed)
    return [(t.config.dim, t.config.distribution) for t in (sample(g) for _ in range(n))]


def test_a_meta_train_grid_is_a_distribution_with_the_grid_as_its_id(tmp_path):
    suite = parse_suite(SUITE, tmp_path / "d.toml")
    spec = suite.learned["lstm-many"]
    assert len(spec.distribution) == 6
    (cell,) = plan_suite(suite, "cpu").meta.values()
    task = cell.spec["task"]
    assert task["id"] == 'quadratic[dim=[3,5,8],distribution=["gaussian","uniform"]]'
    assert [c["dim"] for c in task["grid"]] == [3, 3, 5, 5, 8, 8]
    assert task["config"]["dim"] == [3, 5, 8] and task["config"]["functions"] == 1


def test_the_sampler_is_deterministic_per_seed_and_covers_the_grid(tmp_path):
    suite = parse_suite(SUITE, tmp_path / "d.toml")
    spec = next(iter(plan_suite(suite, "cpu").meta.values())).spec["task"]
    first = draws(spec, 0)
    assert first == draws(spec, 0)
    assert first != draws(spec, 1)
    assert len(set(first)) == 6  # 40 draws reach every variant


def test_validation_is_a_fixed_sample_of_the_distribution(tmp_path):
    spec = next(iter(plan_suite(parse_suite(SUITE, tmp_path / "d.toml"), "cpu").meta.values())).spec["task"]
    sample = meta_training_task(spec, get_registry())
    config = MetaTrainConfig(validation_seeds=8, seed=3)
    one, two = _validation_tasks(sample, None, config), _validation_tasks(sample, None, config)
    assert [(t.config, s) for t, s in one] == [(t.config, s) for t, s in two]
    assert sum(len(s) for _, s in one) == 8 and len(one) > 1


def test_a_list_valued_task_parameter_in_meta_train_stays_a_value():
    text = (Path(__file__).resolve().parent.parent / "suites" / "paper-conv.toml").read_text()
    suite = parse_suite(text, "suites/paper-conv.toml")
    assert all(not spec.distribution for spec in suite.learned.values())


TRAINED_HERE = [p for p in sorted(RESULTS.glob("*/manifest.json")) if "[[meta_train]]" in json.loads(p.read_text())["suite_text"]]


@pytest.mark.parametrize("manifest", TRAINED_HERE, ids=lambda p: p.parent.name)
def test_estimator_settings_at_their_defaults_stay_out_of_published_keys(manifest):
    """Settings added with the estimators (estimator, estimator_params, objective, the truncation
    schedule), left at their defaults, are not part of a meta-train cell's definition, so they
    change no key: the published suites' meta-train cells are defined as they were written
    (a suite that gives one, results/estimators, has it in its key)."""
    m = json.loads(manifest.read_text())
    plan = plan_suite(parse_suite(m["suite_text"], m["suite_file"]), m.get("device") or "cpu")
    assert plan.meta
    for cell in plan.meta.values():
        train = cell.spec["train"]
        assert all(train[k] != KEYLESS_DEFAULTS[k] for k in set(KEYLESS_DEFAULTS) & set(train)), cell.id
    with_pes = m["suite_text"].replace("[[meta_train]]\n", "[[meta_train]]\nestimator = \"pes\"\n", 1)
    changed = plan_suite(parse_suite(with_pes, m["suite_file"]), m.get("device") or "cpu")
    assert {c.key for c in changed.meta.values()} != {c.key for c in plan.meta.values()}  # given, it counts
