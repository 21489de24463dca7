"""A run directory defends itself: corrupt cell files are recomputed (and left out of
the results) with a warning, one run at a time writes into it, it belongs to one suite,
an unwritable ``--out`` or a device this machine lacks is refused before any work, and
cell keys change with a plugin's source and the kernel mode, which ``--dry-run`` names."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pandas as pd
import pytest

import l2obench
from l2obench import provenance, store
from l2obench.cells import cell_key
from l2obench.cli import main
from l2obench.errors import L2OWarning
from l2obench.runner import Runner
from l2obench.suite import load_suite

SMALL = """\
[suite]
name = "small"
seeds = 2
validation_seeds = 2

[baselines]
optimizers = ["sgd"]
lr_grid = [0.1, 0.01]

[[test]]
task = { family = "quadratic", dim = 5 }
horizons = [5]
"""
CELLS = 2 + 1  # two tuning cells, one test cell
VOLATILE = ["wall_time", "compute_time", "elapsed"]


def run(suite: Path, out: Path, *extra: str) -> int:
    return main(["run", str(suite), "--out", str(out), "--workers", "1", "--no-progress", *extra])


def table(out: Path) -> pd.DataFrame:
    frame = l2obench.load_results(out).drop(columns=VOLATILE)
    return frame.sort_values(["cell_id", "seed", "step"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def suite_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "small.toml"
    path.write_text(SMALL)
    return path


@pytest.fixture(scope="module")
def done(suite_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("done")
    assert run(suite_file, out) == 0
    return out


@pytest.fixture
def copy(done, tmp_path) -> Path:
    import shutil

    shutil.copytree(done, tmp_path / "copy")
    return tmp_path / "copy"


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("l2obench: error: ") and "Traceback" not in err, err
    return lines[0]


# -- 1. corrupt cell files ------------------------------------------------------------

CORRUPTIONS = {
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "garbage": lambda data: b"not a parquet file at all" * 10,
    "a flipped byte": lambda data: data[:200] + bytes([data[200] ^ 0xFF]) + data[201:],
}


@pytest.mark.parametrize("how", CORRUPTIONS)
def test_a_corrupt_cell_file_is_recomputed_with_a_warning(suite_file, done, copy, how, capsys):
    key = sorted(store.done_keys(copy))[0]
    path = store.cell_path(copy, key)
    path.write_bytes(CORRUPTIONS[how](path.read_bytes()))
    assert store.verify_cell(copy, key) is not None
    with pytest.warns(L2OWarning, match=f"{key}.parquet: corrupt cell file, .*; recomputing it"):
        assert run(suite_file, copy) == 0
    assert "1 cells run" in capsys.readouterr().out
    assert store.verify_cell(copy, key) is None
    assert store.read_manifest(copy)["status"] == "complete"
    pd.testing.assert_frame_equal(table(copy), table(done))


def test_load_results_and_report_leave_a_corrupt_cell_out_with_a_warning(suite_file, copy, capsys):
    tune = next(iter(Runner(load_suite(suite_file), copy).plan.groups.values())).cells[0].key
    keys = [tune, *sorted(store.done_keys(copy) - {tune})]
    store.cell_path(copy, keys[0]).write_bytes(b"")
    (copy / "results.parquet").write_bytes(b"PAR1 and then nothing")
    with pytest.warns(L2OWarning) as caught:
        frame = l2obench.load_results(copy)
    messages = [str(w.message) for w in caught]
    assert any("results.parquet: corrupt" in m for m in messages)
    assert any(f"{keys[0]}.parquet: corrupt cell file, the file is empty; left out" in m for m in messages)
    assert set(frame["cell_key"]) == set(keys[1:])
    store.write_manifest(copy, {**store.read_manifest(copy), "status": "running"})  # no results.parquet to read
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", L2OWarning)
        assert main(["report", str(copy)]) == 0
    assert (copy / "REPORT.md").exists()


def test_a_cell_file_without_a_checksum_is_not_trusted(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    store.cell_path(tmp_path, "k").parent.mkdir(parents=True)
    pq.write_table(pa.table({"loss": [1.0]}), store.cell_path(tmp_path, "k"))
    assert "no checksum" in store.verify_cell(tmp_path, "k")
    assert list(l2obench.load_results(tmp_path)["loss"]) == [1.0]  # old results can still be read
    store.write_cell(tmp_path, "k", pd.DataFrame({"loss": [1.0], "task": [None], "s": ["x"]}))
    assert store.verify_cell(tmp_path, "k") is None


# -- 2. one run at a time -------------------------------------------------------------

def test_a_second_run_into_a_held_directory_is_refused_naming_the_holder(suite_file, copy, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from l2obench import store\n"
         "with store.run_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)", str(copy)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = {p.name: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file() and p.name != ".lock"}
        assert run(suite_file, copy) == 2
        line = one_error_line(capsys.readouterr().err)
        assert f"pid {holder.pid}" in line and "in use by another `l2obench run`" in line
        assert {p.name: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file() and p.name != ".lock"} == before
    finally:
        holder.kill()
        holder.wait()
    assert run(suite_file, copy) == 0  # the dead holder's lock is taken over


def test_a_stale_lock_file_of_a_dead_process_is_taken_over(suite_file, copy, capsys):
    (copy / ".lock").write_text("999999999\n")
    assert run(suite_file, copy) == 0
    assert "0 cells run" in capsys.readouterr().out


# -- 3. a run directory belongs to one suite ------------------------------------------

def test_another_suite_into_a_run_directory_is_refused_unless_forced(done, copy, tmp_path, capsys):
    other = tmp_path / "other.toml"
    other.write_text(SMALL.replace('name = "small"', 'name = "other"').replace("dim = 5", "dim = 6"))
    manifest = (copy / "manifest.json").read_text()
    for extra in ((), ("--dry-run",)):
        assert run(other, copy, *extra) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "holds the results of suite 'small' (3 cells), not of 'other'" in line and "--force" in line
    assert (copy / "manifest.json").read_text() == manifest
    pd.testing.assert_frame_equal(table(copy), table(done))
    assert run(other, copy, "--force") == 0
    assert store.read_manifest(copy)["suite"] == "other"


# -- 4. keys follow plugin sources and the kernel mode --------------------------------

def test_released_plugins_keep_the_keys_they_had(tmp_path, monkeypatch):
    """Without any plugin installed from a directory and nothing switched, no provenance
    enters a cell's spec: the key is the hash of the definition alone, as before."""
    monkeypatch.setattr(provenance, "source_fingerprint", lambda dist: None)
    runner = Runner(load_suite(_write(tmp_path, SMALL)), tmp_path / "out")
    assert runner.provenance == {"sources": {}, "switches": {}}
    for cell in runner.all_known_cells():
        assert "provenance" not in cell.spec and cell.key == cell_key(cell.kind, cell.spec)


def test_the_editable_install_is_fingerprinted_and_the_fingerprint_follows_the_source(tmp_path, monkeypatch):
    import importlib.metadata as md

    assert provenance.source_fingerprint("l2obench")  # this project is installed with pip install -e
    package = tmp_path / "src" / "fakeplugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("X = 1\n")
    (package / "kernel.cpp").write_text("int f() { return 1; }\n")
    info = tmp_path / "site" / "fake_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 1.0\n")
    (info / "top_level.txt").write_text("fakeplugin\n")
    (info / "direct_url.json").write_text(json.dumps({"url": f"file://{tmp_path}/src",
                                                      "dir_info": {"editable": True}}))
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert md.distribution("fake-plugin").version == "1.0"
    first = provenance.source_fingerprint.__wrapped__("fake-plugin")
    assert first and first == provenance.source_fingerprint.__wrapped__("fake-plugin")
    (package / "kernel.cpp").write_text("int f() { return 2; }\n")
    assert provenance.source_fingerprint.__wrapped__("fake-plugin") not in (None, first)
    (info / "direct_url.json").write_text(json.dumps({"url": "https://example.org/fake.whl", "archive_info": {}}))
    assert provenance.source_fingerprint.__wrapped__("fake-plugin") is None  # a release: named by its version


def test_the_kernel_mode_is_part_of_the_keys_and_dry_run_says_why(suite_file, copy, monkeypatch, capsys):
    keys = {c.key for c in Runner(load_suite(suite_file), copy).all_known_cells()}
    monkeypatch.setenv("L2OBENCH_NATIVE", "0")
    runner = Runner(load_suite(suite_file), copy)
    assert {c.key for c in runner.all_known_cells()}.isdisjoint(keys)
    assert all(c.spec["provenance"]["switches"] == {"L2OBENCH_NATIVE": "off"} for c in runner.all_known_cells())
    assert run(suite_file, copy, "--dry-run") == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("to run  tune")]
    assert len(lines) == 2
    assert all("(stale: kernel mode changed (L2OBENCH_NATIVE on -> off))" in x for x in lines)


def test_an_edited_plugin_source_reruns_its_cells_and_dry_run_says_why(suite_file, done, copy, monkeypatch,
                                                                       capsys):
    monkeypatch.setattr(provenance, "source_fingerprint", lambda dist: "edited" if dist == "l2obench" else None)
    assert run(suite_file, copy, "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    stale = [x for x in lines if "(stale: plugin source changed (l2obench))" in x]
    assert len(stale) == 2 and all(x.startswith("to run  tune") for x in stale)
    assert run(suite_file, copy) == 0
    assert f"0 cells done already, {CELLS} to run" in capsys.readouterr().out
    pd.testing.assert_frame_equal(table(copy).drop(columns="cell_key"), table(done).drop(columns="cell_key"))


def test_an_edited_definition_is_named_stale(suite_file, copy, tmp_path, capsys):
    edited = _write(tmp_path, SMALL.replace("seeds = 2\n", "seeds = 3\n", 1))
    assert run(edited, copy, "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(x.startswith("done    tune sgd[lr=") for x in lines) == 2  # the validation seeds are kept
    test = [x for x in lines if x.startswith("to run  sgd[lr=")]
    assert len(test) == 1 and test[0].endswith("(settings chosen by tuning)  (stale: definition changed)")


# -- 5. and 6. refused before any work --------------------------------------------------

@pytest.mark.parametrize("where", ["a file", "under a file", "under /proc"])
def test_an_unwritable_out_is_refused_in_one_line(suite_file, tmp_path, where, capsys):
    (tmp_path / "file").write_text("x")
    out = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "run",
           "under /proc": Path("/proc/l2obench-run")}[where]
    if where == "under /proc" and not Path("/proc").is_dir():
        pytest.skip("no /proc")
    assert run(suite_file, out) == 2
    assert "--out" in one_error_line(capsys.readouterr().err)
    assert (tmp_path / "file").read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_missing_device_is_refused_up_front_by_dry_run_and_run(suite_file, tmp_path, capsys):
    import torch

    cuda = _write(tmp_path, SMALL.replace('name = "small"', 'name = "small"\ndevice = "cuda:7"'))
    for suite, extra in [(cuda, ()), (cuda, ("--dry-run",)), (suite_file, ("--device", "mps")),
                         (suite_file, ("--device", "mps", "--dry-run"))]:
        if suite is cuda and torch.cuda.device_count() > 7:
            continue
        assert run(suite, tmp_path / "out", *extra) == 2
        line = one_error_line(capsys.readouterr().err)
        assert "cuda" in line or "mps" in line
    assert not (tmp_path / "out").exists()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"suite-{abs(hash(text))}.toml"
    path.write_text(text)
    return path
