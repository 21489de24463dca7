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
