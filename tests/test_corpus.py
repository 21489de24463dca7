"""A corpus of mistakes, each refused the same way: one line starting
``l2obench: error:``, exit code 2, no traceback, and nothing already computed lost.

The bad suites are mutations of the project's own suite files (a misspelt key, a
wrong type, a negative seed count, an unknown optimizer or family, a horizon of 0,
a negative learning rate, ...); then bad command lines, bad run directories and bad
checkpoints.  Commands run in-process through ``l2obench.cli.main``; a few through a
real subprocess, as a user runs them."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from l2obench.cli import main

SUITES = sorted((Path(__file__).resolve().parent.parent / "suites").glob("*.toml"))


def refused(argv, capsys, match: str = "") -> str:
    """Run ``argv``; assert the one-line refusal and return it."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own exit
        code = exc.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (argv, code, err)
    assert len(lines) == 1 and lines[0].startswith("l2obench: error:"), (argv, err)
    assert "Traceback" not in err + out, (argv, err)
    assert re.search(match, lines[0], re.IGNORECASE), (argv, lines[0])
    return lines[0]


# -- a TOML writer for the subset suite files use --------------------------------------------
def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "inf" if v == float("inf") else "-inf" if v == float("-inf") else repr(v)
    if isinstance(v, (int, str)):
        return json.dumps(v) if isinstance(v, str) else str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def dumps(data: dict) -> str:
    out = []
    for name, table in data.items():
        for body in (table if isinstance(table, list) else [table]):
            out.append(f"[[{name}]]" if isinstance(table, list) else f"[{name}]")
            out += [f"{_key(k)} = {_value(v)}" for k, v in body.items()]
            out.append("")
    return "\n".join(out)


def suite_data(path: Path) -> dict:
    """A suite file's tables, its checkpoint paths made absolute (it is written elsewhere)."""
    data = tomllib.loads(path.read_text())
    for c in data.get("checkpoint", []):
        c["path"] = str((path.parent / c["path"]).resolve())
    return data


# -- mutations: (name, what the one line must mention, edit) ----------------------------------
def _first_test(d):
    return d["test"][0]


def _unknown_optimizer(d):
    if "baselines" in d:
        d["baselines"]["optimizers"] = [*d["baselines"]["optimizers"], "adamm"]
    else:
        _first_test(d)["optimizers"] = ["adamm"]


MUTATIONS = [
    ("misspelt suite key", "sedes", lambda d: d["suite"].__setitem__("sedes", d["suite"].pop("seeds", 4))),
    ("misspelt test key", "horizon", lambda d: _first_test(d).__setitem__("horizon", _first_test(d).pop("horizons"))),
    ("unknown table", "baseline", lambda d: d.__setitem__("baseline", {"optimizers": ["sgd"]})),
    ("name of the wrong type", "name", lambda d: d["suite"].__setitem__("name", 3)),
    ("seeds of the wrong type", "seeds", lambda d: d["suite"].__setitem__("seeds", "many")),
    ("negative seed count", "seeds", lambda d: d["suite"].__setitem__("seeds", -3)),
    ("zero seeds", "seeds", lambda d: d["suite"].__setitem__("seeds", 0)),
    ("a negative seed", "seeds", lambda d: d["suite"].__setitem__("validation_seeds", [0, -1])),
    ("unknown optimizer", "adamm", _unknown_optimizer),
    ("unknown family", "quadratc|mnist-mpl|unknown", lambda d: _first_test(d)["task"].__setitem__(
        "family", {"quadratic": "quadratc"}.get(_first_test(d)["task"]["family"], "mnist-mpl"))),
    ("unknown task parameter", "dimm", lambda d: _first_test(d)["task"].__setitem__("dimm", 3)),
    ("horizon of 0", "horizon", lambda d: _first_test(d).__setitem__("horizons", [0])),
    ("negative horizon", "horizon", lambda d: _first_test(d).__setitem__("horizons", [-5])),
    ("empty test table list", "test", lambda d: d.__setitem__("test", [])),
]
BASELINE_MUTATIONS = [
    ("lr of -1 in the grid", "lr", lambda d: d["baselines"].__setitem__("lr_grid", [-1.0, *d["baselines"].get("lr_grid", [])])),
    ("lr of the wrong type", "lr", lambda d: d["baselines"].__setitem__("lr_grid", ["fast"])),
    ("an infinite lr", "lr", lambda d: d["baselines"].__setitem__("lr_grid", [float("inf")])),
    ("unknown tuning rule", "tune", lambda d: d["baselines"].__setitem__("tune", "best")),
]
META_TRAIN_MUTATIONS = [
    ("meta-train horizon of 0", "horizon", lambda d: d["meta_train"][0].__setitem__("horizon", 0)),
    ("unknown learned optimizer", "lstmm", lambda d: d["meta_train"][0].__setitem__("optimizer", "lstmm")),
    ("learned hyperparameter of the wrong type", "hidden",
     lambda d: d["meta_train"][0].setdefault("params", {}).__setitem__("hidden", "wide")),
    ("negative meta-train seed", "seed", lambda d: d["meta_train"][0].__setitem__("seed", -1)),
    ("negative epochs", "epochs", lambda d: d["meta_train"][0].__setitem__("epochs", -2)),
]
CHECKPOINT_MUTATIONS = [
    ("missing checkpoint", "no such file", lambda d: d["checkpoint"][0].__setitem__("path", "/nonexistent/x.safetensors")),
    ("checkpoint path of the wrong type", "path", lambda d: d["checkpoint"][0].__setitem__("path", 3)),
    ("duplicate learned name", "name|twice|duplicate|already",
     lambda d: d["checkpoint"].append(dict(d["checkpoint"][0]))),
]


def _cases():
    for path in SUITES:
        data = suite_data(path)
        mutations = list(MUTATIONS)
        mutations += BASELINE_MUTATIONS if "baselines" in data else []
        mutations += META_TRAIN_MUTATIONS if data.get("meta_train") else []
        mutations += CHECKPOINT_MUTATIONS if data.get("checkpoint") else []
        for name, match, edit in mutations:
            yield pytest.param(path, edit, match, id=f"{path.stem}: {name}")


@pytest.mark.parametrize("path, edit, match", list(_cases()))
def test_mutated_suite_is_refused_in_one_line(path, edit, match, tmp_path, capsys):
    data = suite_data(path)
    edit(data)
    suite = tmp_path / path.name
    suite.write_text(dumps(data))
    out = tmp_path / "run"
    refused(["run", suite, "--out", out, "--dry-run"], capsys, match)
    assert not out.exists()  # refused before anything is written


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.stem)
def test_the_unmutated_suites_load(path, tmp_path):
    """The corpus's baseline: each suite, rewritten by the corpus's writer, is valid, so
    each refusal above is its mutation's."""
    from l2obench.suite import load_suite

    suite = tmp_path / path.name
    suite.write_text(dumps(suite_data(path)))
    assert load_suite(suite).name == tomllib.loads(path.read_text())["suite"]["name"]


def test_a_suite_that_is_not_toml_or_not_a_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[suite\nname = 'x'\n")
    refused(["run", bad, "--out", tmp_path / "o", "--dry-run"], capsys, "bad.toml")
    bad.write_bytes(b"\xff\xfe\x00garbage")
    refused(["run", bad, "--out", tmp_path / "o", "--dry-run"], capsys, "bad.toml")
    refused(["run", tmp_path / "missing.toml", "--out", tmp_path / "o", "--dry-run"], capsys, "not found")
    refused(["run", tmp_path, "--out", tmp_path / "o", "--dry-run"], capsys, "cannot be read")
    assert not (tmp_path / "o").exists()


# -- bad command lines ------------------------------------------------------------------------
EVALUATE = ["evaluate", "--optimizer", "sgd", "--task", "quadratic", "--steps", "2", "--seeds", "2"]
BAD_ARGUMENTS = {
    "negative first seed": (EVALUATE + ["--first-seed", "-5"], "first-seed"),
    "zero steps": (EVALUATE + ["--steps", "0"], "steps"),
    "negative seeds": (EVALUATE + ["--seeds", "-1"], "seeds"),
    "unknown optimizer": (["evaluate", "--optimizer", "adamm", "--task", "quadratic"], "adamm"),
    "unknown task": (["evaluate", "--optimizer", "sgd", "--task", "quadratc"], "quadratc"),
    "bad task parameter": (EVALUATE + ["--task-param", "dim=-3"], "dim"),
    "unknown task parameter": (EVALUATE + ["--task-param", "dimm=3"], "dimm"),
    "negative lr": (EVALUATE + ["--param", "lr=-1"], "lr"),
    "lr of the wrong type": (EVALUATE + ["--param", "lr=fast"], "lr"),
    "param without a value": (EVALUATE + ["--param", "lr"], "key=value"),
    "unknown device": (EVALUATE + ["--device", "tpu"], "tpu"),
    "missing checkpoint": (["evaluate", "--checkpoint", "/nonexistent.safetensors", "--task", "quadratic"],
                           "no such file"),
    "param with a checkpoint": (["evaluate", "--checkpoint", "x.safetensors", "--param", "lr=1", "--task",
                                 "quadratic"], "param"),
    "not an integer": (EVALUATE + ["--steps", "many"], "steps"),
    "unknown option": (EVALUATE + ["--stpes", "3"], "stpes"),
    "missing required option": (["evaluate", "--optimizer", "sgd"], "task"),
    "unknown command": (["evalute"], "evalute"),
    "run: zero workers": (["run", "suites/smoke.toml", "--out", "{tmp}/o", "--workers", "0"], "workers"),
    "run: unknown executor": (["run", "suites/smoke.toml", "--out", "{tmp}/o", "--executor", "slurm"], "slurm"),
    "run: unknown device": (["run", "suites/smoke.toml", "--out", "{tmp}/o", "--device", "tpu"], "tpu"),
    "report: no such directory": (["report", "{tmp}/nowhere"], "nowhere"),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_arguments_are_refused_in_one_line(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    argv, match = BAD_ARGUMENTS[case]
    refused([a.replace("{tmp}", str(tmp_path)) for a in argv], capsys, match)
    assert not (tmp_path / "o").exists()


def test_help_and_version_still_exit_zero(capsys):
    for argv in (["--help"], ["evaluate", "--help"], ["--version"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
    assert "l2obench" in capsys.readouterr().out


# -- bad run directories, and nothing lost ----------------------------------------------------
TINY = ('[suite]\nname = "tiny"\nseeds = 2\nvalidation_seeds = 1\n\n[baselines]\noptimizers = ["sgd"]\n'
        'lr_grid = [0.1]\n\n[[test]]\ntask = { family = "quadratic", dim = 3 }\nhorizons = [3]\n')


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny suite run to the end, with its report: the run directory to keep safe."""
    root = tmp_path_factory.mktemp("finished")
    suite = root / "tiny.toml"
    suite.write_text(TINY)
    out = root / "run"
    assert main(["run", str(suite), "--out", str(out), "--no-progress", "--workers", "1", "--report"]) == 0
    return suite, out


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_refused_commands_leave_a_finished_run_untouched(finished_run, tmp_path, capsys):
    suite, out = finished_run
    before = snapshot(out)
    assert any(name.startswith("cells/") for name in before)
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("lr_grid = [0.1]", "lr_grid = [-1.0]"))
    for argv, match in (
            (["run", bad, "--out", out], "lr"),
            (["run", bad, "--out", out, "--force"], "lr"),
            (["run", suite, "--out", out, "--workers", "0"], "workers"),
            (["run", suite, "--out", out, "--executor", "slurm"], "slurm"),
            (["run", suite, "--out", out, "--device", "tpu"], "tpu"),
            (["run", suite, "--out", out, "--bogus"], "bogus"),
    ):
        refused(argv, capsys, match)
        assert snapshot(out) == before, argv


def test_a_file_as_the_run_directory(finished_run, tmp_path, capsys):
    suite, _ = finished_run
    file = tmp_path / "results.txt"
    file.write_text("my notes")
    refused(["run", suite, "--out", file, "--no-progress", "--workers", "1"], capsys, "results.txt")
    refused(["run", suite, "--out", file / "under", "--no-progress", "--workers", "1"], capsys, "results.txt")
    refused(["report", file], capsys, "results.txt")
    assert file.read_text() == "my notes"


def test_a_run_directory_with_a_broken_manifest(finished_run, tmp_path, capsys):
    import shutil

    _, out = finished_run
    for name, text in (("garbage", "{not json"), ("a list", "[1, 2]"), ("a string", '"complete"')):
        copy_dir = tmp_path / name.replace(" ", "-")
        shutil.copytree(out, copy_dir)
        (copy_dir / "manifest.json").write_text(text)
        refused(["report", copy_dir], capsys, "manifest.json")


def test_a_cell_file_replaced_by_garbage_is_left_out_with_a_warning(finished_run, tmp_path, capsys):
    """A corrupt cell file is never trusted: the report leaves it out, says so in one
    warning line naming the file, and still renders from the rest."""
    import shutil

    from l2obench.cli import main

    _, out = finished_run
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "results.parquet").unlink()
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / "manifest.json").write_text(json.dumps({**manifest, "status": "incomplete"}))
    import pyarrow.parquet as pq

    cells = sorted((broken / "cells").glob("*.parquet"))
    kinds = {c: pq.read_table(c, columns=["kind"]).column("kind")[0].as_py() for c in cells}
    assert "test" in kinds.values() and len(cells) > 1
    cell = next(c for c in cells if kinds[c] != "test" or list(kinds.values()).count("test") > 1)
    cell.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=rf"{cell.stem}.*corrupt cell file"):
        assert main(["report", str(broken)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (broken / "REPORT.md").is_file()


# -- bad checkpoints --------------------------------------------------------------------------
def test_bad_checkpoint_files_are_refused_in_one_line(tmp_path, capsys):
    import struct

    cases = {
        "empty.safetensors": b"",
        "text.safetensors": b"not a checkpoint at all",
        "huge-header.safetensors": struct.pack("<Q", 2 ** 60) + b"{}",
        "list-header.safetensors": struct.pack("<Q", 2) + b"[]",
        "number-metadata.safetensors": struct.pack("<Q", 24) + b'{"__metadata__": 12345} ',
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        refused(["evaluate", "--checkpoint", path, "--task", "quadratic", "--steps", "2", "--seeds", "1"],
                capsys, re.escape(name))
        suite = tmp_path / "suite.toml"
        suite.write_text(f'[suite]\nname = "c"\nseeds = 1\n\n[[checkpoint]]\nname = "x"\npath = "{name}"\n\n'
                         '[[test]]\ntask = { family = "quadratic", dim = 3 }\nhorizons = [3]\n')
        refused(["run", suite, "--out", tmp_path / "o", "--dry-run"], capsys, re.escape(name))


# -- a few as a user runs them ----------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["evaluate", "--optimizer", "sgd", "--task", "quadratic", "--first-seed", "-5"],
    ["evaluate", "--optimizer", "sgd", "--task", "quadratic", "--stpes", "3"],
    ["run", "{bad}", "--out", "{tmp}/o"],
    ["evaluate", "--checkpoint", "{ckpt}", "--task", "quadratic"],
], ids=["negative seed", "misspelt option", "bad suite", "bad checkpoint"])
def test_refusals_in_a_real_process(argv, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.replace("horizons = [3]", "horizons = [0]"))
    ckpt = tmp_path / "bad.safetensors"
    ckpt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"__metadata__":')
    argv = [a.format(bad=bad, tmp=tmp_path, ckpt=ckpt) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "l2obench.cli", *argv], capture_output=True, text=True,
                          timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("l2obench: error:") and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()
