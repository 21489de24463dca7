"""Held-out metrics: what the image tasks report, what the evaluator records and when,
what tuning and ranking select on, time to target, and the suite settings' errors."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import l2obench
from l2obench import get_registry, store
from l2obench.cells import evaluation_cell, heldout_schedule, prefix_result
from l2obench.cli import main
from l2obench.errors import ConfigError
from l2obench.evaluate import heldout_steps, run
from l2obench.plugins.mnist import split_data
from l2obench.suite import TaskVariant, parse_suite
from l2obench.work import run_evaluation


def reference_mlp(params_row, x, layers, act):
    """The 784-h-10 MLP of one seed, its parameters unpacked by hand (weight (in, out), then bias)."""
    h, start = x, 0
    for i, (n_in, n_out) in enumerate(layers):
        w = params_row[start:start + n_in * n_out].view(n_in, n_out)
        start += n_in * n_out
        b = params_row[start:start + n_out]
        start += n_out
        h = h @ w + b
        if i < len(layers) - 1:
            h = act(h)
    return h


def test_mlp_held_out_metrics_equal_a_direct_computation_on_the_evaluation_set():
    task = get_registry().task("mnist-mlp", hidden=12, eval_examples=300, batch_size=64)
    params = task.init([3, 7]) * 30  # away from chance, so accuracy differs between seeds
    got = task.evaluate(params, "validation")
    images, labels = split_data(task.dataset, "validation", task.classes, "cpu")
    x, y = images[:300].float() / 255, labels[:300]
    for i in range(2):
        logits = reference_mlp(params[i], x, [(784, 12), (12, 10)], torch.sigmoid)
        assert float(got["loss"][i]) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
        assert float(got["accuracy"][i]) == pytest.approx(float((logits.argmax(1) == y).float().mean()), abs=1e-7)
    assert task.metrics == ("loss", "accuracy")
    assert got["loss"][0] != got["loss"][1]
    # the test split is another set
    assert not torch.equal(task.evaluate(params, "test")["loss"], got["loss"])


def test_batch_norm_nets_evaluate_each_minibatch_sized_chunk_with_its_own_statistics():
    family = "image-conv"
    task = get_registry().task(family, channels=[3], hidden=8, batch_norm=True, batch_size=50, eval_examples=120)
    params = task.init([0, 1, 2])
    got = task.evaluate(params, "test")
    images, labels = split_data(task.dataset, "test", task.classes, "cpu")
    total = torch.zeros(3, dtype=torch.float64)
    for start in (0, 50, 100):  # chunks of 50, 50, 20, each normalised over itself, per seed
        x = (images[start:min(start + 50, 120)].float() / 255).unsqueeze(0).expand(3, -1, -1)
        y = labels[start:min(start + 50, 120)].unsqueeze(0).expand(3, -1)
        total += task.loss(params, (x, y)).double() * y.shape[1]
    torch.testing.assert_close(got["loss"], (total / 120).float(), rtol=1e-5, atol=1e-6)
    alone = task.evaluate(params[1:2], "test")
    torch.testing.assert_close(alone["loss"], got["loss"][1:2])


def test_quadratics_have_no_held_out_metrics():
    task = get_registry().task("quadratic", dim=3)
    assert l2obench.task_metrics(task) == ()
    traj = run(get_registry().optimizer("sgd", lr=0.1), task, [0, 1], steps=5)
    assert traj.heldout == {} and traj.heldout_steps == []


def test_the_evaluator_records_held_out_metrics_of_theta_t_at_its_steps():
    reg = get_registry()
    task = reg.task("mnist-mlp", hidden=6, eval_examples=100, batch_size=16)
    sgd = reg.optimizer("sgd", lr=0.5)
    seeds = [0, 5]
    traj = run(sgd, task, seeds, steps=7, split="validation", heldout=[0, 3, 6])
    assert traj.heldout_steps == [0, 3, 6]
    assert set(traj.heldout) == {"heldout_loss", "heldout_accuracy"}
    assert traj.heldout["heldout_loss"].shape == (2, 3)
    # theta_3 by hand: three SGD steps on the validation minibatches
    params = task.init(seeds)
    stream = task.batches("validation", seeds)
    for _ in range(3):
        p = params.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(task.loss(p, next(stream)).sum(), p)
        params = params - 0.5 * grad
    direct = task.evaluate(params, "validation")
    torch.testing.assert_close(traj.heldout["heldout_loss"][:, 1], direct["loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(traj.heldout["heldout_accuracy"][:, 1], direct["accuracy"])
    torch.testing.assert_close(traj.heldout["heldout_loss"][:, 0], task.evaluate(task.init(seeds), "validation")["loss"])
    assert traj.elapsed.shape == (7,) and traj.elapsed[0] == 0 and (traj.elapsed.diff() >= 0).all()


def test_a_diverged_seed_records_nan_held_out_metrics():
    reg = get_registry()
    task = reg.task("mnist-mlp", hidden=6, eval_examples=50, batch_size=16)

    def update(grads, state, params):  # seed 1's parameters become NaN at step 2
        bad = (state["t"] >= 2).unsqueeze(1) & (torch.arange(len(params)) == 1).unsqueeze(1)
        return torch.where(bad, torch.full_like(params, float("nan")), -0.1 * grads), {"t": state["t"] + 1}

    breaks = l2obench.Optimizer(lambda params: {"t": torch.zeros(len(params))}, update)
    traj = run(breaks, task, [0, 1], steps=6, split="test", heldout=[0, 2, 5])
    assert torch.isfinite(traj.heldout["heldout_loss"][:, :2]).all()
    for metric in ("heldout_loss", "heldout_accuracy"):
        assert torch.isnan(traj.heldout[metric][1, 2]) and torch.isfinite(traj.heldout[metric][0]).all()


def test_heldout_steps_are_about_ten_points_and_the_last():
    assert heldout_steps(100) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99]
    assert heldout_steps(7) == [0, 1, 2, 3, 4, 5, 6]
    assert heldout_steps(10, every=4) == [0, 4, 8, 9]
    assert heldout_steps(0) == []
    spec = {"horizon": 10, "heldout": {"every": 4, "horizons": [6, 10]}}
    assert heldout_schedule(spec) == [0, 4, 5, 8, 9]


def mlp_variant(**config):
    task = get_registry().task("mnist-mlp", **config)
    return TaskVariant("mnist-mlp", config, json.loads(json.dumps(task.config.model_dump())), "l2obench 0.1.0")


def test_a_shorter_horizon_read_from_a_longer_run_has_its_own_held_out_rows():
    reg = get_registry()
    variant = mlp_variant(hidden=6, batch_size=16, eval_examples=40)
    adam = {"name": "adam", "id": "adam[lr=0.01]", "kind": "baseline", "plugin": "adam", "params": {"lr": 0.01},
            "version": reg.get("optimizer", "adam").origin}
    short = evaluation_cell("test", adam, variant, 6, "test", [0, 1], "cpu", heldout={"every": 4})
    long = evaluation_cell("test", adam, variant, 10, "test", [0, 1], "cpu", heldout={"every": 4})
    steps = sorted(set(heldout_schedule(short.spec)) | set(heldout_schedule(long.spec)))
    result = {**run_evaluation(long.spec, {"heldout_steps": steps}), "wall_time": 1.0}
    alone = {**run_evaluation(short.spec, {}), "wall_time": 1.0}
    read = store.cell_frame(short, prefix_result(result, 6))
    direct = store.cell_frame(short, alone)
    assert sorted(set(read.loc[read.metric == "heldout_loss", "step"])) == [0, 4, 5]
    cols = ["seed", "step", "metric", "loss"]
    pd.testing.assert_frame_equal(read[cols].reset_index(drop=True), direct[cols].reset_index(drop=True),
                                  rtol=1e-5)
    full = store.cell_frame(long, result)
    assert sorted(set(full.loc[full.metric == "heldout_accuracy", "step"])) == [0, 4, 8, 9]  # its own steps only


def curve_table(values: dict[str, list[list[float]]], metric="heldout_accuracy", steps=(0, 5, 10)):
    """A results table of test cells: per optimizer id, (seeds, steps) values of ``metric``."""
    rows = []
    for opt, table in values.items():
        kind = "learned" if opt == "lstm" else "baseline"
        for seed, row in enumerate(table):
            for step, v in zip(steps, row):
                rows.append({"cell_id": f"{opt} @ t @ T=11", "kind": "test", "task": "t", "horizon": 11,
                             "optimizer": opt.split("[")[0], "optimizer_id": opt, "optimizer_kind": kind,
                             "metric": metric, "seed": seed, "step": step, "loss": v, "elapsed": 0.1 * step})
    return pd.DataFrame(rows)


def test_time_to_target_on_a_constructed_curve():
    df = curve_table({"adam[lr=0.1]": [[0.1, 0.6, 0.8], [0.1, 0.8, 0.8]],    # mean 0.1, 0.7, 0.8
                      "sgd[lr=0.1]": [[0.1, 0.3, 0.5], [0.1, 0.5, 0.5]],     # never reaches 0.8
                      "lstm": [[0.1, 0.9, float("nan")], [0.1, 0.7, 0.9]]})  # mean 0.8 at step 5, then diverges
    got = l2obench.time_to_target(df, metric="heldout_accuracy").set_index("optimizer_id")
    assert (got["target"] == 0.8).all()  # derived: the best tuned baseline's final value
    assert got.loc["adam[lr=0.1]", "steps"] == 10 and got.loc["adam[lr=0.1]", "seconds"] == pytest.approx(1.0)
    assert got.loc["lstm", "steps"] == 5 and got.loc["lstm", "seconds"] == pytest.approx(0.5)
    assert math.isinf(got.loc["sgd[lr=0.1]", "steps"]) and not got.loc["sgd[lr=0.1]", "reached"]
    given = l2obench.time_to_target(df, target=0.65, metric="heldout_accuracy").set_index("optimizer_id")
    assert given.loc["adam[lr=0.1]", "steps"] == 5 and math.isinf(given.loc["sgd[lr=0.1]", "steps"])
    losses = curve_table({"adam[lr=0.1]": [[2.0, 1.0, 0.5]], "lstm": [[2.0, float("inf"), 0.1]]}, metric="loss")
    lost = l2obench.time_to_target(losses, target=0.2).set_index("optimizer_id")
    assert math.isinf(lost.loc["adam[lr=0.1]", "steps"])
    assert lost.loc["lstm", "steps"] == 10  # a non-finite mean on the way is not a hit
    with pytest.raises(ConfigError, match="no test rows of metric 'heldout_loss'; the table has loss"):
        l2obench.time_to_target(losses, metric="heldout_loss")


SUITE = """
[suite]
name = "tiny-heldout"
seeds = 3
validation_seeds = 2
rank = "heldout_accuracy"
heldout_every = 4

[baselines]
optimizers = ["sgd", "adam"]
lr_grid = [0.3, 0.01]
tune = "heldout_accuracy"

[[test]]
task = { family = "mnist-mlp", hidden = 6, batch_size = 16, eval_examples = 64 }
horizons = [6, 10]
"""


def test_a_suite_tuned_on_held_out_accuracy_runs_end_to_end(tmp_path):
    path = tmp_path / "suite.toml"
    path.write_text(SUITE)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--workers", "1", "--no-progress", "--report"]) == 0
    df = l2obench.load_results(out)
    held = df[df["metric"].isin(["heldout_loss", "heldout_accuracy"])]
    assert set(held.loc[held.kind == "tune", "split"]) == {"validation"}
    assert set(held.loc[held.kind == "test", "split"]) == {"test"}
    assert sorted(set(held.loc[(held.kind == "tune"), "step"])) == [0, 4, 5, 8, 9]
    manifest = store.read_manifest(out)
    tune = df[(df.kind == "tune") & (df.metric == "heldout_accuracy")]
    for record in manifest["tuning"].values():
        assert record["rule"] == "heldout_accuracy"
        at_end = tune[(tune.optimizer == record["baseline"]) & (tune.step == record["horizon"] - 1)]
        means = at_end.groupby("optimizer_id")["loss"].mean()
        ties_first = [o for o in record["scores"] if means[o] >= means.max() - 1e-12]  # the grid's order
        assert record["chosen"] == ties_first[0]
        assert record["scores"][record["chosen"]] == pytest.approx(means.max())
        assert record["budget"] == {"trials": 2, "validation_seeds": 2, "steps": 10, "search": "grid"}
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["rank_by"] == "heldout_accuracy").all()
    for _, part in summary.groupby(["task", "horizon"]):
        best = part.loc[part["heldout_accuracy_mean"].idxmax()]
        assert best["rank"] == 1
    text = (out / "REPORT.md").read_text()
    assert "## Time to target" in text and "held-out accuracy" in text and "Budget: sgd: 2 settings" in text
    assert "figures/heldout-" in text


@pytest.mark.parametrize("edit, fragments", [
    (('tune = "heldout_accuracy"', 'tune = "heldout_acc"'), ("baselines.tune", "heldout_acc", "'heldout_accuracy'")),
    (("heldout_every = 4", "heldout_every = 0"), ("suite.heldout_every", "greater than 0")),
    (('rank = "heldout_accuracy"', 'rank = "accuracy"'), ("suite.rank", "'accuracy'")),
    (("heldout_every = 4", 'target = { metric = "accuracy" }'), ("suite.target.metric", "'accuracy'")),
    (("heldout_every = 4", 'target = { value = 0.9, metrics = "loss" }'), ("suite.target.metrics", "unknown key",
                                                                         "did you mean 'metric'")),
    (('family = "mnist-mlp", hidden = 6, batch_size = 16, eval_examples = 64', 'family = "quadratic", dim = 3'),
     ("baselines.tune: 'heldout_accuracy' needs held-out metrics", "quadratic[dim=3] (test[0]) reports none")),
])
def test_bad_held_out_settings_are_one_line_errors(edit, fragments):
    text = SUITE.replace(*edit)
    assert text != SUITE
    with pytest.raises(ConfigError) as info:
        parse_suite(text, "suite.toml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("suite.toml: ")
    for fragment in fragments:
        assert fragment in message, message


def test_rank_on_held_out_data_is_refused_for_tasks_without_it():
    text = SUITE.replace('tune = "heldout_accuracy"', 'tune = "final"').replace(
        'family = "mnist-mlp", hidden = 6, batch_size = 16, eval_examples = 64', 'family = "quadratic", dim = 3')
    with pytest.raises(ConfigError, match=r"suite.rank: 'heldout_accuracy' needs held-out metrics"):
        parse_suite(text, "suite.toml")
    assert parse_suite(text.replace('rank = "heldout_accuracy"', 'rank = "summed"'), "s.toml").rank_rule == "summed"


SOBOL = """
[suite]
name = "sobol"

[baselines]
optimizers = ["sgd", "momentum", "adam"]
search = "sobol"
trials = 8
space = { lr = [1e-4, 1.0], momentum = [0.0, 0.99], beta1 = [0.5, 0.99] }
params = { adam = { beta2 = 0.99 } }

[[test]]
task = { family = "quadratic", dim = 3 }
horizons = [10]
"""


def test_a_sobol_search_draws_seeded_settings_within_the_space():
    suite = parse_suite(SOBOL, "s.toml")
    again = parse_suite(SOBOL, "s.toml")
    other = parse_suite(SOBOL.replace("trials = 8", "trials = 8\nsearch_seed = 1"), "s.toml")
    assert [o.id for o in suite.baselines["adam"]] == [o.id for o in again.baselines["adam"]]
    assert [o.id for o in suite.baselines["adam"]] != [o.id for o in other.baselines["adam"]]
    for name, keys in (("sgd", ["lr"]), ("momentum", ["lr", "momentum"]), ("adam", ["lr", "beta1", "beta2"])):
        specs = suite.baselines[name]
        assert len(specs) == 8 and len({o.id for o in specs}) == 8
        assert all(list(o.written) == keys for o in specs)
        assert all(1e-4 <= o.params["lr"] <= 1.0 for o in specs)
    lrs = sorted(o.params["lr"] for o in suite.baselines["sgd"])
    assert lrs[0] < 1e-3 and lrs[-1] > 0.1  # log-uniform: the decades are covered
    assert all(0.5 <= o.params["beta1"] <= 0.99 and o.params["beta2"] == 0.99 for o in suite.baselines["adam"])
    assert suite.search == "sobol"


@pytest.mark.parametrize("edit, fragments", [
    (("trials = 8\n", ""), ("baselines.trials: missing",)),
    (("lr = [1e-4, 1.0], ", ""), ("baselines.space: needs lr",)),
    (("momentum = [0.0, 0.99]", "momentun = [0.0, 0.99]"), ("baselines.space.momentun", "did you mean 'momentum'")),
    (("beta1 = [0.5, 0.99]", "beta1 = [0.99, 0.5]"), ("baselines.space.beta1: invalid range [0.99, 0.5]",)),
    (('search = "sobol"', 'search = "sobol"\nlr_grid = [0.1]'), ("baselines.lr_grid", "remove one")),
    (('search = "sobol"', 'search = "grid"\nlr_grid = [0.1]'), ("baselines.trials: only for search = \"sobol\"",)),
    (('search = "sobol"', 'search = "random"'), ("baselines.search", "'random'")),
])
def test_bad_search_settings_are_one_line_errors(edit, fragments):
    text = SOBOL.replace(*edit)
    assert text != SOBOL
    with pytest.raises(ConfigError) as info:
        parse_suite(text, "s.toml")
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_chosen_value_on_the_edge_of_its_grid_is_flagged():
    from l2obench.tuning import TuneGroup, choose, on_edge

    suite = parse_suite(SUITE, "suite.toml")
    specs = suite.baselines["adam"]  # lr 0.3, 0.01
    cells = [evaluation_cell("tune", {"id": o.id}, suite.tests[0].task, 10, "validation", [0, 1], "cpu")
             for o in specs]
    group = TuneGroup("adam", suite.tests[0].task, 10, specs, cells, [10])
    steps = np.array([0, 9])
    curves = {cells[0].key: {"heldout_accuracy": (steps, np.array([[0.1, 0.5], [0.1, 0.7]]))},
              cells[1].key: {"heldout_accuracy": (steps, np.array([[0.1, 0.2], [0.1, float("nan")]]))}}
    best, scores = choose(group, curves, 10, "heldout_accuracy")
    assert best == 0 and scores == [pytest.approx(0.6), pytest.approx(0.1)]  # a diverged seed scores 0
    assert on_edge(group, best) == ["lr=0.3 (largest tried)"]
    with pytest.raises(ConfigError, match="no heldout_loss rows"):
        choose(group, curves, 10, "heldout_loss")
