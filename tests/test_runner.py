"""The runner: dependency order, resumability (rerun, SIGKILL), tuning per variant and
horizon, divergences recorded, failures reported; the CLI end to end."""
from __future__ import annotations

import concurrent.futures as cf
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import l2obench
from l2obench import store
from l2obench.cli import main
from l2obench.cells import CellKind, cell_key
from l2obench.runner import Runner
from l2obench.suite import load_suite, parse_suite

HEAD = """\
[suite]
name = "tiny"
seeds = 4
validation_seeds = 2
"""
META = """
[[meta_train]]
name = "lstm-tiny"
optimizer = "lstm"
params = { preprocess = false, hidden = 4, layers = 1 }
task = { family = "quadratic", dim = 5 }
horizon = 10
unroll = 5
epochs = 1
episodes_per_epoch = 2
meta_batch = 2
validation_seeds = 2
"""
BODY = """
[baselines]
optimizers = ["sgd", "adam"]
lr_grid = [1000.0, 0.1, 0.01]

[[test]]
task = { family = "quadratic", dim = [5, 8] }
horizons = [10, 20]
"""
TINY = HEAD + META + BODY
CELLS = 1 + 2 * 3 * 2 + 2 * 2 + 2 * 2 * 2  # meta-train, tuning, learned tests, baseline tests
VOLATILE = ["wall_time", "compute_time", "elapsed"]


class ThreadExecutor:
    """Cells in threads of this process: the runner's logic without process start-up."""

    threads = None

    def __init__(self, workers: int = 2):
        self._pool = cf.ThreadPoolExecutor(workers)

    def submit(self, fn, *args):
        return self._pool.submit(fn, *args)

    def shutdown(self, cancel: bool = False):
        self._pool.shutdown(wait=True, cancel_futures=cancel)


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """A results table without timings, in a fixed row order, for comparing runs."""
    frame = frame.drop(columns=VOLATILE)
    return frame.sort_values(["cell_key", "metric", "seed", "step"], kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def reference(suite_file, tmp_path_factory):
    """The tiny suite run once, uninterrupted, by the real CLI (a pool of one worker)."""
    out = tmp_path_factory.mktemp("reference")
    assert main(["run", str(suite_file), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    return out


def test_cli_run_twice_the_second_does_no_work_and_says_so(suite_file, reference, capsys):
    before = {p: p.stat().st_mtime_ns for p in (reference / "cells").iterdir()}
    assert len(before) == CELLS
    assert main(["run", str(suite_file), "--out", str(reference), "--workers", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"tiny: {CELLS} cells done already, 0 to run" in out
    assert "0 cells run" in out
    assert {p: p.stat().st_mtime_ns for p in (reference / "cells").iterdir()} == before
    assert main(["run", str(suite_file), "--out", str(reference), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("done") for line in lines) == CELLS and not any("to run  " in x for x in lines)
    assert any("adam[lr=" in x and "@ quadratic[dim=8] @ T=20" in x for x in lines)


def test_cli_run_with_report_writes_the_report_after_the_last_cell(suite_file, reference, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    runner = Runner(load_suite(suite_file), copy)
    store.cell_path(copy, runner.plan.learned_tests[0].key).unlink()
    assert main(["run", str(suite_file), "--out", str(copy), "--workers", "1", "--no-progress", "--report"]) == 0
    out = capsys.readouterr().out
    assert "1 cells run" in out and "time with the report:" in out and "outside optimizer steps" in out
    assert (copy / "REPORT.md").stat().st_size > 0 and (copy / "figures" / "heatmap.png").exists()


def test_the_manifest_and_checkpoint(reference):
    manifest = store.read_manifest(reference)
    assert manifest["status"] == "complete" and len(manifest["cells"]) == CELLS
    assert manifest["suite_sha256"] and "[[meta_train]]" in manifest["suite_text"]
    assert {"l2obench", "torch", "python", "plugins"} <= set(manifest["versions"])
    assert manifest["started"] and manifest["ended"] and manifest["device"] == "cpu"
    assert 0 <= manifest["timing"]["outside_fraction"] <= 1
    assert (reference / "checkpoints" / "lstm-tiny.safetensors").exists()
    assert (reference / "results.parquet").exists()


def test_the_table_is_tidy(reference):
    df = l2obench.load_results(reference)
    assert set(df["kind"]) == {"meta-train", "tune", "test"}
    test = df[df["kind"] == "test"]
    assert set(test["optimizer"]) == {"lstm-tiny", "sgd", "adam"}
    assert set(test["task"]) == {"quadratic[dim=5]", "quadratic[dim=8]"}
    # one row per (cell, seed, step): T steps for each of the 4 test seeds
    counts = test.groupby("cell_id").size()
    assert all(counts[c] == 4 * int(c.rsplit("T=", 1)[1]) for c in counts.index)
    assert set(test["seed"]) == {0, 1, 2, 3} and set(test["split"]) == {"test"}
    tune = df[df["kind"] == "tune"]
    assert set(tune["seed"]) == {1_000_000, 1_000_001} and set(tune["split"]) == {"validation"}
    assert (tune["horizon"] == 20).all()  # tuned once, to the longest horizon
    assert {"dim", "functions", "distribution", "init_scale"} <= set(df.columns)
    assert test["cell_id"].str.contains(" @ quadratic\\[dim=").all()
    learned = test[test["optimizer"] == "lstm-tiny"]
    assert learned["lr"].isna().all() and (learned["checkpoint"].str.len() == 64).all()


def test_a_divergence_is_recorded_with_its_step_and_the_suite_goes_on(reference):
    df = l2obench.load_results(reference)
    huge = df[(df["kind"] == "tune") & (df["optimizer"] == "sgd") & (df["lr"] == 1000.0)]
    assert len(huge) and (huge["status"] == "diverged").all()
    first = huge.groupby(["task", "seed"])["diverged_step"].first()
    assert (first >= 0).all() and len(first) == 4
    for (task, seed), step in first.items():
        rows = huge[(huge["task"] == task) & (huge["seed"] == seed)].sort_values("step")
        assert np.isfinite(rows["loss"].to_numpy()[:step]).all()
        assert not np.isfinite(rows["loss"].to_numpy()[step])
    ok = df[(df["kind"] == "test") & (df["optimizer"] == "sgd")]
    assert (ok["status"] == "ok").all() and (ok["lr"] != 1000.0).all()


def test_baselines_use_the_setting_tuning_chose_for_each_variant_and_horizon(reference):
    df = l2obench.load_results(reference)
    tune = df[df["kind"] == "tune"]
    test = df[(df["kind"] == "test") & (df["optimizer_kind"] == "baseline")]
    for (name, task, horizon), cell in test.groupby(["optimizer", "task", "horizon"]):
        grid = tune[(tune["optimizer"] == name) & (tune["task"] == task) & (tune["step"] == horizon - 1)]
        score = grid.assign(loss=grid["loss"].where(np.isfinite(grid["loss"]), np.inf)) \
            .groupby("lr", sort=False)["loss"].mean()
        assert cell["lr"].iloc[0] == score.idxmin(), (name, task, horizon, score)


def test_sigkill_midway_then_rerun_gives_the_same_table(suite_file, reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "l2obench.cli", "run", str(suite_file), "--out", str(out), "--workers", "1",
           "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not store.done_keys(out) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its workers, no time to clean up
        proc.wait()
    done_at_kill = store.done_keys(out)
    assert 0 < len(done_at_kill) < CELLS, "the kill should land midway"
    assert main(["run", str(suite_file), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert done_at_kill <= store.done_keys(out)
    pd.testing.assert_frame_equal(canonical(l2obench.load_results(out)),
                                  canonical(l2obench.load_results(reference)), check_exact=False, rtol=1e-6)


def test_thread_executor_gives_the_same_table_and_plans_resume(suite_file, reference, tmp_path):
    suite = load_suite(suite_file)
    runner = Runner(suite, tmp_path)
    assert runner.count() == (0, CELLS)
    summary = runner.run(pool=ThreadExecutor(2), progress=False, stream=open(os.devnull, "w"))
    assert summary.ran == CELLS and not summary.failed
    pd.testing.assert_frame_equal(canonical(l2obench.load_results(tmp_path)),
                                  canonical(l2obench.load_results(reference)), check_exact=False, rtol=1e-6)
    assert Runner(load_suite(suite_file), tmp_path).count() == (CELLS, 0)
    assert Runner(load_suite(suite_file), tmp_path, force=True).count() == (0, CELLS)


def test_resume_with_a_tuning_group_half_done(suite_file, reference, tmp_path):
    """A run stopped between two tuning cells of one group resumes from the cells on disk."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    runner = Runner(load_suite(suite_file), copy)
    group = next(iter(runner.plan.groups.values()))
    removed = [group.cells[-1].key] + [c.key for c in runner.chosen.values()]
    for key in removed:
        store.cell_path(copy, key).unlink()
    runner = Runner(load_suite(suite_file), copy)
    assert not any(k[0] == next(iter(runner.plan.groups)) for k in runner.chosen)
    summary = runner.run(pool=ThreadExecutor(1), progress=False, stream=open(os.devnull, "w"))
    assert summary.ran == len(removed) and not summary.failed
    pd.testing.assert_frame_equal(canonical(l2obench.load_results(copy)),
                                  canonical(l2obench.load_results(reference)), check_exact=False, rtol=1e-6)


def test_cells_differing_only_in_horizon_run_once_and_the_shorter_read_the_prefix(suite_file, reference, tmp_path):
    """Learned tests at T=10 and T=20 are one run to 20 steps, and so are a baseline's when
    tuning chose the same settings for both; the T=10 rows are those of a run of 10 steps."""
    from l2obench.work import run_cell

    class Counting(ThreadExecutor):
        submitted: list[str] = []

        def submit(self, fn, kind, spec, runtime):
            self.submitted.append(f"{kind} {spec.get('horizon')}")
            return super().submit(fn, kind, spec, runtime)

    runner = Runner(load_suite(suite_file), tmp_path)
    summary = runner.run(pool=Counting(2), progress=False, stream=open(os.devnull, "w"))
    assert summary.ran == CELLS and not summary.failed
    tests = [c for c in runner.all_known_cells() if c.kind is CellKind.TEST]
    shared = {(c.spec["optimizer"]["id"], c.spec["task"]["id"]) for c in tests if c.spec["horizon"] == 10} \
        & {(c.spec["optimizer"]["id"], c.spec["task"]["id"]) for c in tests if c.spec["horizon"] == 20}
    assert len(shared) >= 2  # at least the learned optimizer on both variants
    assert Counting.submitted.count("test 10") == len(tests) // 2 - len(shared)
    assert Counting.submitted.count("test 20") == len(tests) // 2
    short = next(c for c in runner.plan.learned_tests if c.spec["horizon"] == 10)
    lines = Runner(load_suite(suite_file), tmp_path, force=True).describe()
    assert any(short.id in x and "(read from the first 10 steps of [" in x for x in lines)
    alone = run_cell(CellKind.TEST, short.spec, {"checkpoint": runner.checkpoint_bytes("lstm-tiny")})
    rows = store.read_cell(tmp_path, short.key, ["seed", "step", "loss", "diverged_step"])
    np.testing.assert_array_equal(rows["loss"].to_numpy().reshape(4, 10), alone["losses"])
    np.testing.assert_array_equal(rows["diverged_step"].to_numpy()[::10], alone["diverged_at"])
    pd.testing.assert_frame_equal(canonical(l2obench.load_results(tmp_path)),
                                  canonical(l2obench.load_results(reference)), check_exact=False, rtol=1e-6)


def test_a_prefix_keeps_only_the_divergences_inside_it():
    from l2obench.cells import prefix_result

    losses = np.array([[1.0, 2.0, np.inf, np.nan], [1.0, 1.0, 1.0, 1.0], [np.nan] * 4])
    cut = prefix_result({"losses": losses, "diverged_at": np.array([2, -1, 0]), "compute": (0, 1)}, 2)
    np.testing.assert_array_equal(cut["losses"], losses[:, :2])
    assert cut["diverged_at"].tolist() == [-1, -1, 0] and cut["compute"] == (0, 1)


def test_a_deleted_checkpoint_means_meta_training_again(suite_file, reference, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    (copy / "checkpoints" / "lstm-tiny.safetensors").unlink()
    runner = Runner(load_suite(suite_file), copy)
    assert runner.count() == (CELLS - 1, 1)
    assert any(line.startswith("to run") and "meta-train lstm-tiny" in line for line in runner.describe())


def test_a_failing_cell_is_reported_and_the_others_finish(suite_file, tmp_path, monkeypatch):
    from l2obench import work

    real = work.run_evaluation

    def flaky(spec, runtime):
        if spec["optimizer"]["id"] == "adam[lr=0.1]" and spec["task"]["config"]["dim"] == 8:
            raise RuntimeError("a plugin bug")
        return real(spec, runtime)

    monkeypatch.setattr(work, "run_evaluation", flaky)
    suite = parse_suite(HEAD + BODY, tmp_path / "s.toml")
    summary = Runner(suite, tmp_path / "out").run(pool=ThreadExecutor(2), progress=False,
                                                   stream=open(os.devnull, "w"))
    assert [c for c, _ in summary.failed] == ["tune adam[lr=0.1] @ quadratic[dim=8] @ T=20"]
    assert "RuntimeError: a plugin bug" in summary.failed[0][1]
    manifest = store.read_manifest(tmp_path / "out")
    assert manifest["status"] == "incomplete"
    df = l2obench.load_results(tmp_path / "out")
    assert "sgd" in set(df[(df["kind"] == "test") & (df["task"] == "quadratic[dim=8]")]["optimizer"])
    assert "adam" not in set(df[(df["kind"] == "test") & (df["task"] == "quadratic[dim=8]")]["optimizer"])


def test_cell_keys_are_stable_and_editing_the_suite_keeps_finished_cells(tmp_path):
    base = Runner(parse_suite(TINY, tmp_path / "s.toml"), tmp_path)
    again = Runner(parse_suite(TINY, tmp_path / "s.toml"), tmp_path)
    keys = [c.key for c in base.all_known_cells()]
    assert keys == [c.key for c in again.all_known_cells()] and len(set(keys)) == len(keys)
    grown = TINY + '\n[[test]]\ntask = { family = "quadratic", dim = 12 }\nhorizons = [10]\n'
    more = {c.key for c in Runner(parse_suite(grown, tmp_path / "s.toml"), tmp_path).all_known_cells()}
    assert set(keys) < more
    fewer_seeds = {c.key for c in Runner(parse_suite(TINY.replace("seeds = 4", "seeds = 5"), tmp_path / "s.toml"),
                                         tmp_path).all_known_cells()}
    assert set(keys) & fewer_seeds == {c.key for c in base.all_known_cells() if c.kind is not CellKind.TEST}
    spec = base.plan.meta["lstm-tiny"].spec
    assert cell_key(CellKind.META_TRAIN, {**spec, "version": "l2obench 9.9"}) != base.plan.meta["lstm-tiny"].key


def test_overlapping_test_entries_share_cells(tmp_path):
    overlap = TINY + '\n[[test]]\ntask = { family = "quadratic", dim = 8 }\nhorizons = [30, 10]\noptimizers = ["sgd"]\n'
    runner = Runner(parse_suite(overlap, tmp_path / "s.toml"), tmp_path)
    cells = runner.all_known_cells()
    assert len({c.key for c in cells}) == len(cells)
    tune8 = [c for g in runner.plan.groups.values() if g.task.id == "quadratic[dim=8]" for c in g.cells]
    assert {c.spec["horizon"] for c in tune8 if c.spec["optimizer"]["name"] == "sgd"} == {30}
    assert {c.spec["horizon"] for c in tune8 if c.spec["optimizer"]["name"] == "adam"} == {20}
    lines = runner.describe()
    assert sum("sgd[tuned] @ quadratic[dim=8] @ T=10" in x for x in lines) == 1
    assert sum("sgd[tuned] @ quadratic[dim=8] @ T=30" in x for x in lines) == 1


def _torch_sum_in_worker(n: int) -> tuple[int, float]:
    import torch

    return os.getpid(), float(torch.arange(n, dtype=torch.float64).sum())


@pytest.mark.skipif(sys.platform != "linux", reason="workers are forked on Linux only")
def test_local_workers_fork_when_safe_and_spawn_otherwise():
    from l2obench.plugins import executors

    assert executors._start_method(1) == "fork"  # one torch thread per worker: no parallel regions to hang
    release = threading.Event()
    waiter = threading.Thread(target=release.wait)
    waiter.start()
    try:
        assert executors._start_method(2) == "spawn"  # a thread is running here
    finally:
        release.set()
        waiter.join()
    with executors.LocalExecutor(executors._cores()) as pool:
        assert pool.start_method == "fork" and pool.threads == 1
        pid, total = pool.submit(_torch_sum_in_worker, 1000).result(timeout=60)
        assert pid != os.getpid() and total == 499500.0


@pytest.mark.skipif(sys.platform == "win32", reason="a POSIX shell's exec")
def test_the_command_clock_starts_with_the_command_not_its_process(suite_file, tmp_path):
    """A shell that ``exec``s ``l2obench run`` after other work (here 2 s of sleep) hands it
    a process that started earlier; the wall time it reports starts with the command."""
    command = Path(sys.executable).with_name("l2obench")
    script = (f"sleep 2; exec {shlex.quote(str(command))} run {shlex.quote(str(suite_file))} "
              f"--out {shlex.quote(str(tmp_path / 'out'))} --workers 1 --no-progress")
    began = time.time()
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=300)
    total = time.time() - began
    assert done.returncode == 0, done.stderr
    reported = float(re.search(r"time: ([0-9.]+) s wall since the command started", done.stdout).group(1))
    assert reported <= total - 1.9
