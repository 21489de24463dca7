"""The planner is pure (a suite to cells, no disk), and cell kinds are an enum whose values
are what the results table and the cell keys write."""
from __future__ import annotations

import builtins
import hashlib
import io
import json
import os

import pytest

from l2obench.cells import Cell, CellKind, cell_key
from l2obench.plan import plan_suite
from l2obench.runner import Runner
from l2obench.suite import parse_suite

from test_runner import CELLS, TINY


@pytest.fixture
def suite(tmp_path):
    return parse_suite(TINY, tmp_path / "tiny.toml")


def test_planning_touches_no_disk(suite, monkeypatch):
    def no_disk(*args, **kwargs):
        raise AssertionError(f"the planner touched the disk: {args[:1]}")

    for module, name in [(builtins, "open"), (io, "open"), (os, "stat"), (os, "lstat"), (os, "scandir"),
                         (os, "listdir"), (os, "mkdir")]:
        monkeypatch.setattr(module, name, no_disk)
    plan = plan_suite(suite, "cpu")
    monkeypatch.undo()
    assert list(plan.meta) == ["lstm-tiny"] and plan.sources["lstm-tiny"] == f"meta-train:{plan.meta['lstm-tiny'].key}"
    assert len(plan.groups) == 4 and all(len(g.cells) == 3 and g.horizon == 20 for g in plan.groups.values())
    assert len(plan.learned_tests) == 4 and all(c.needs == ("lstm-tiny",) for c in plan.learned_tests)
    assert len(plan.baseline_tests) == 8  # (baseline, variant) x horizons, cells once tuning has chosen
    assert len(plan.known_cells()) == CELLS - len(plan.baseline_tests)


def test_a_runner_on_a_directory_that_does_not_exist_plans_everything_and_creates_nothing(suite, tmp_path):
    out = tmp_path / "not" / "there"
    runner = Runner(suite, out)
    assert runner.count() == (0, CELLS) and not out.exists()
    planned = plan_suite(suite, "cpu", runner.provenance).known_cells()
    assert [c.key for c in runner.all_known_cells()] == [c.key for c in planned]
    lines = runner.describe()
    assert len(lines) == CELLS and all(line.startswith("to run") for line in lines)


def test_cell_kinds_are_an_enum_written_as_the_table_writes_them():
    assert [k.value for k in CellKind] == ["meta-train", "tune", "test"]
    cell = Cell("test", "x", {"horizon": 3})
    assert cell.kind is CellKind.TEST and f"{cell.kind}" == "test"
    with pytest.raises(ValueError):
        Cell("evaluate", "x", {})


def test_cell_keys_hash_the_kind_as_written_and_the_spec():
    """The key format is fixed: a change would orphan every finished cell of every run directory."""
    spec = {"optimizer": {"id": "adam[lr=0.1]"}, "horizon": 10, "seeds": [0, 1]}
    blob = json.dumps({"kind": "tune", "spec": spec}, sort_keys=True)
    assert cell_key(CellKind.TUNE, spec) == cell_key("tune", spec) == hashlib.sha256(blob.encode()).hexdigest()[:20]
    assert cell_key(CellKind.TEST, spec) != cell_key(CellKind.TUNE, spec)
