"""The report, from a small results directory written by hand (the report reads only
the results table and the manifest)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from l2obench import store
from l2obench.cli import main
from l2obench.errors import ConfigError
from l2obench.report import write_report
from l2obench.runner import cell_frame, evaluation_cell, meta_train_cell
from l2obench.stats import mean_ci
from l2obench.suite import LearnedSpec, TaskVariant

T = 6
SEEDS = [0, 1, 2, 3]


def variant(dim: int) -> TaskVariant:
    config = {"dim": dim, "functions": 1, "distribution": "gaussian", "init_scale": 0.01}
    return TaskVariant("quadratic", {"dim": dim}, config, "l2obench 0.1.0")


def baseline(name: str, lr: float) -> dict:
    return {"name": name, "id": f"{name}[lr={lr}]", "kind": "baseline", "plugin": name,
            "params": {"lr": lr}, "version": "l2obench 0.1.0"}


LEARNED = {"name": "lstm-q", "id": "lstm-q", "kind": "learned", "plugin": "lstm", "params": {"hidden": 4},
           "version": "l2obench 0.1.0", "source": "meta-train:x"}


def losses(start: float, rate: float, seeds=SEEDS, diverge: dict | None = None):
    """Loss curves start * rate**t * (1 + seed/10); ``diverge`` maps a seed row to its first NaN step."""
    t = np.arange(T)
    out = np.array([start * rate ** t * (1 + s / 10) for s in seeds], dtype=float)
    first = np.full(len(seeds), -1)
    for row, step in (diverge or {}).items():
        out[row, step:] = np.nan
        first[row] = step
    return out, first


def write(tmp_path, cell, curves, first, wall=0.5):
    result = {"losses": curves, "diverged_at": first, "compute": (0.0, wall * 0.9), "wall_time": wall,
              "checkpoint": "abc" if cell.spec["optimizer"]["kind"] == "learned" else ""}
    store.write_cell(tmp_path, cell.key, cell_frame(cell, result))
    return cell.key


@pytest.fixture
def run_dir(tmp_path):
    keys = []
    for dim, lstm_rate in [(10, 0.5), (20, 0.95)]:
        task = variant(dim)
        keys.append(write(tmp_path, evaluation_cell("test", LEARNED, task, T, "test", SEEDS, "cpu"),
                          *losses(10.0, lstm_rate)))
        keys.append(write(tmp_path, evaluation_cell("test", baseline("adam", 0.1), task, T, "test", SEEDS, "cpu"),
                          *losses(10.0, 0.8)))
        keys.append(write(tmp_path, evaluation_cell("test", baseline("sgd", 0.01), task, T, "test", SEEDS, "cpu"),
                          *losses(10.0, 0.9, diverge={1: 3})))
        keys.append(write(tmp_path, evaluation_cell("tune", baseline("sgd", 1.0), task, T, "validation",
                                                    [1_000_000, 1_000_001], "cpu"),
                          *losses(10.0, 2.0, seeds=[0, 1], diverge={0: 2, 1: 4})))
    spec = LearnedSpec("lstm-q", "lstm", {"hidden": 4}, "l2obench 0.1.0", task=variant(10), train={"epochs": 2})
    meta = meta_train_cell(spec, "cpu")
    store.write_cell(tmp_path, meta.key, cell_frame(meta, {
        "history": [(0, 50.0), (1, 30.0), (2, 20.0), (3, 18.0)], "validation": [(0, 60.0), (1, 25.0), (2, 22.0)],
        "seed": 0, "compute": (0.0, 2.0), "wall_time": 2.1, "checkpoint": "abc", "horizon": T}))
    keys.append(meta.key)
    store.write_manifest(tmp_path, {
        "suite": "mini", "description": "A hand-written results directory.", "status": "complete",
        "cells": keys, "variants": [{"task": "quadratic[dim=10]", "horizons": [T]},
                                    {"task": "quadratic[dim=20]", "horizons": [T]}],
        "baselines": ["sgd", "adam"], "learned": ["lstm-q"], "tune_rule": "final",
        "test_seeds": SEEDS, "validation_seeds": [1_000_000, 1_000_001],
        "tuning": {"sgd @ quadratic[dim=10] @ T=6": {
            "baseline": "sgd", "task": "quadratic[dim=10]", "horizon": T, "rule": "final", "chosen": "sgd[lr=0.01]",
            "params": {"lr": 0.01}, "scores": {"sgd[lr=1.0]": math.inf, "sgd[lr=0.01]": 3.0}}},
        "references": [{"problem": "small quadratic", "task": "quadratic[dim=10]", "horizon": T,
                        "optimizer": "adam", "summed_loss": 12.5, "final_loss": None, "lr": 0.1,
                        "source": "somebody's reproduction"}],
        "versions": {"l2obench": "0.1.0", "torch": "2", "python": "3", "plugins": {"l2obench": "0.1.0"}},
        "device": "cpu", "executor": "local", "workers": 1, "command": ["l2obench", "run", "mini.toml"]})
    store.combine(tmp_path, keys)
    return tmp_path


def test_report_files_and_numbers(run_dir):
    paths = write_report(run_dir)
    for name in ("REPORT.md", "index.html", "summary.csv", "figures/heatmap.png", "figures/meta-training.png",
                 "figures/curves-quadratic-dim-10-t-6.png", "figures/curves-quadratic-dim-20-t-6.png"):
        assert (run_dir / name).stat().st_size > 0, name
    assert paths["markdown"] == run_dir / "REPORT.md"

    summary = pd.read_csv(run_dir / "summary.csv")
    assert list(zip(summary["task"], summary["optimizer"]))[:3] == [
        ("quadratic[dim=10]", "lstm-q"), ("quadratic[dim=10]", "adam"), ("quadratic[dim=10]", "sgd")]
    row = summary[(summary["task"] == "quadratic[dim=10]") & (summary["optimizer"] == "adam")].iloc[0]
    curves, _ = losses(10.0, 0.8)
    expected = mean_ci(curves[:, -1])
    assert row["final_mean"] == pytest.approx(expected.mean)
    assert row["final_high"] - row["final_low"] == pytest.approx(2 * expected.half_width)
    assert row["summed_mean"] == pytest.approx(curves.sum(axis=1).mean())
    assert row["lr"] == 0.1 and row["log10_vs_best_baseline"] == pytest.approx(0.0)
    lstm10 = summary[(summary["task"] == "quadratic[dim=10]") & (summary["optimizer"] == "lstm-q")].iloc[0]
    assert lstm10["rank_final"] == 1 and lstm10["log10_vs_best_baseline"] < 0
    lstm20 = summary[(summary["task"] == "quadratic[dim=20]") & (summary["optimizer"] == "lstm-q")].iloc[0]
    assert lstm20["rank_final"] == 2 and lstm20["log10_vs_best_baseline"] > 0
    sgd = summary[summary["optimizer"] == "sgd"]
    assert (sgd["diverged"] == 1).all() and (sgd["rank_final"] == 3).all()
    # paired over the same test seeds against the best tuned baseline (adam: sgd has a diverged seed)
    lstm_curves, _ = losses(10.0, 0.5)
    paired = mean_ci(lstm_curves[:, -1] - curves[:, -1])
    assert lstm10["final_vs_best_mean"] == pytest.approx(paired.mean)
    assert lstm10["final_vs_best_high"] - lstm10["final_vs_best_low"] == pytest.approx(2 * paired.half_width)
    assert lstm10["final_vs_best_high"] < 0 and lstm10["summed_vs_best_high"] < 0
    assert lstm20["final_vs_best_low"] > 0
    assert np.isnan(row["final_vs_best_mean"]) and sgd["final_vs_best_mean"].isna().all()

    text = (run_dir / "REPORT.md").read_text()
    assert ("**lstm-q** has a lower mean final loss than every tuned baseline on 1 of 2 test variants, and "
            "lower final and summed losses with 95% confidence (paired over the same test optimizees) on 1") in text
    assert "(lower)" in text and "(higher)" in text
    assert "sgd[lr=0.01] @ quadratic[dim=10] @ T=6" in text  # a diverged test run, listed
    assert "tune sgd[lr=1.0] @ quadratic[dim=20] @ T=6" in text  # and diverged tuning runs
    assert "somebody's reproduction" in text and "12.5" in text
    assert "![" in text and "figures/heatmap.png" in text
    html = (run_dir / "index.html").read_text()
    assert html.startswith("<!doctype html>") and 'src="figures/heatmap.png"' in html and "<table>" in html


def test_report_cli_and_errors(run_dir, tmp_path_factory, capsys):
    assert main(["report", str(run_dir)]) == 0
    assert "REPORT.md" in capsys.readouterr().out
    empty = tmp_path_factory.mktemp("empty")
    assert main(["report", str(empty)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "manifest.json" in err
    store.write_manifest(empty, {"status": "running", "cells": []})
    (empty / "cells").mkdir()
    with pytest.raises(ConfigError, match="no test results"):
        write_report(empty)


def test_report_renders_diverged_failed_and_missing_cells(tmp_path):
    """Every combination renders and is said as such: an optimizer diverged on some seeds,
    one on every seed, a variant where every baseline diverged, cells that failed, whose
    tuning failed or that never ran, and a variant with no results at all."""
    keys = []
    ten, twenty = variant(10), variant(20)
    every = {row: 2 for row in range(len(SEEDS))}
    keys.append(write(tmp_path, evaluation_cell("test", LEARNED, ten, T, "test", SEEDS, "cpu"),
                      *losses(10.0, 0.5, diverge={0: 4})))
    keys.append(write(tmp_path, evaluation_cell("test", baseline("adam", 0.1), ten, T, "test", SEEDS, "cpu"),
                      *losses(10.0, 0.8)))
    keys.append(write(tmp_path, evaluation_cell("test", baseline("sgd", 1e6), ten, T, "test", SEEDS, "cpu"),
                      *losses(10.0, 9.0, diverge=every)))
    keys.append(write(tmp_path, evaluation_cell("test", LEARNED, twenty, T, "test", SEEDS, "cpu"),
                      *losses(10.0, 0.5)))
    keys.append(write(tmp_path, evaluation_cell("test", baseline("adam", 1e6), twenty, T, "test", SEEDS, "cpu"),
                      *losses(10.0, 9.0, diverge=every)))
    keys.append(write(tmp_path, evaluation_cell("test", baseline("sgd", 1e6), twenty, T, "test", SEEDS, "cpu"),
                      *losses(10.0, 9.0, diverge={0: 1, 1: 3, 2: 3})))
    store.write_manifest(tmp_path, {
        "suite": "broken", "status": "incomplete", "cells": keys, "learned": ["lstm-q"], "baselines": ["sgd", "adam"],
        "variants": [{"task": f"quadratic[dim={d}]", "horizons": [T], "optimizers": ["lstm-q", "sgd", "adam"]}
                     for d in (10, 20, 30)],
        "test_seeds": SEEDS, "validation_seeds": [1_000_000], "tune_rule": "final", "tuning": {},
        "failures": [{"cell": f"sgd[lr=0.01] @ quadratic[dim=30] @ T={T}", "error": "RuntimeError: out of memory"},
                     {"cell": f"tune adam[lr=1.0] @ quadratic[dim=30] @ T={T}", "error": "ValueError: boom"}]})
    write_report(tmp_path)
    text = (tmp_path / "REPORT.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}

    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 6 and summary["diverged"].tolist().count(4) == 2
    assert "diverged (1 of 4 seeds); the others" in text  # lstm-q at dim=10, with the mean of the rest
    assert "diverged (4 of 4 seeds)" in text and "diverged (3 of 4 seeds)" in text
    assert "sgd[lr=1000000.0] diverged on every one of 4 seeds" in text
    assert "no interval: diverged on every one of 4 seeds" in text
    assert "no interval: diverged on 1 of 4 seeds" in text
    # every baseline of dim=20 diverged: the learned optimizer has no paired interval, said why
    assert "even the best tuned baseline, sgd[lr=1000000.0], diverged" in text
    assert "no interval: the best baseline sgd[lr=1000000.0] diverged on 3 of 4 seeds" in text
    lstm20 = summary[(summary["task"] == "quadratic[dim=20]") & (summary["optimizer"] == "lstm-q")].iloc[0]
    assert lstm20["rank_final"] == 1 and np.isnan(lstm20["final_vs_best_mean"])
    # the variant without any result and its failed, untuned and not-run cells
    assert "### quadratic[dim=30] @ T=6" in text and "## Missing and failed cells" in text
    assert "3 test cells of the suite have no results: 2 failed and 1 were not run" in text
    assert "RuntimeError: out of memory" in text and "its tuning failed" in text and "not run yet" in text
    assert "| sgd | failed |" in text and "| lstm-q | missing |" in text
    assert "(the best baseline)" in rows["adam[lr=0.1]"]
    assert (tmp_path / "index.html").read_text().count("<table>") >= 4


def test_report_with_only_failed_cells(tmp_path):
    """A run whose every test cell failed still gets a report that lists the failures."""
    (tmp_path / "cells").mkdir()
    store.write_manifest(tmp_path, {
        "suite": "failing", "status": "incomplete", "cells": [], "learned": [], "baselines": ["adam"],
        "variants": [{"task": "quadratic[dim=10]", "horizons": [T], "optimizers": ["adam"]}],
        "failures": [{"cell": f"tune adam[lr=1.0] @ quadratic[dim=10] @ T={T}", "error": "ValueError: boom"}]})
    write_report(tmp_path)
    text = (tmp_path / "REPORT.md").read_text()
    assert "1 test cells of the suite have no results: 1 failed" in text and "ValueError: boom" in text


def test_report_of_a_real_suite_where_sgd_diverges_everywhere(tmp_path, capsys):
    """End to end: sgd at lr=1e6 diverges on every test quadratic; `run --report` and
    `report` both write the report and say so."""
    suite = tmp_path / "diverge.toml"
    suite.write_text('[suite]\nname = "diverge"\nseeds = 3\nvalidation_seeds = 2\n\n'
                     '[baselines]\noptimizers = ["sgd", "adam"]\nlr_grid = [1e6]\n\n'
                     '[[test]]\ntask = { family = "quadratic", dim = 5 }\nhorizons = [30]\n')
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--report", "--no-progress", "--workers", "1"]) == 0
    text = (out / "REPORT.md").read_text()
    assert "| sgd[lr=1000000.0] | diverged (3 of 3 seeds) |" in text
    assert "no interval: diverged on every one of 3 seeds" in text
    capsys.readouterr()
    assert main(["report", str(out)]) == 0 and "REPORT.md" in capsys.readouterr().out
