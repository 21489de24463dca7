"""The results store: atomic cell files, leftovers of killed runs, the combined table."""
from __future__ import annotations

import json

import pandas as pd
import pytest

import l2obench
from l2obench import store
from l2obench.errors import ConfigError


def frame(cell: str, n: int = 3, **extra) -> pd.DataFrame:
    return pd.DataFrame({"cell_id": cell, "kind": "test", "seed": range(n), "step": 0, "metric": "loss",
                         "loss": [float(i) for i in range(n)], **extra})


def test_cells_are_written_whole_and_found_by_key(tmp_path):
    path = store.write_cell(tmp_path, "abc", frame("a"))
    assert path == tmp_path / "cells" / "abc.parquet"
    assert list((tmp_path / "cells").iterdir()) == [path]  # no temporary file left
    assert store.done_keys(tmp_path) == {"abc"}
    pd.testing.assert_frame_equal(store.read_cell(tmp_path, "abc"), frame("a"))


def test_leftovers_of_a_killed_write_are_ignored_and_removed(tmp_path):
    store.write_cell(tmp_path, "abc", frame("a"))
    (tmp_path / "cells" / ".def.parquet.tmp-123").write_bytes(b"half a file")
    assert store.done_keys(tmp_path) == {"abc"}
    assert store.remove_leftovers(tmp_path) == 1
    assert [p.name for p in (tmp_path / "cells").iterdir()] == ["abc.parquet"]


def test_load_results_reads_the_manifests_cells_then_the_combined_table(tmp_path):
    store.write_cell(tmp_path, "k1", frame("a", hidden=20))
    store.write_cell(tmp_path, "k2", frame("b", dim=10))
    store.write_cell(tmp_path, "stale", frame("old"))
    assert set(l2obench.load_results(tmp_path)["cell_id"]) == {"a", "b", "old"}  # no manifest: every cell
    store.write_manifest(tmp_path, {"status": "running", "cells": ["k1", "k2", "not-yet"]})
    partial = l2obench.load_results(tmp_path)
    assert set(partial["cell_id"]) == {"a", "b"}
    assert {"hidden", "dim"} <= set(partial.columns)  # columns of both families, missing ones empty
    assert store.combine(tmp_path, ["k1", "k2"]) == 6
    store.write_manifest(tmp_path, {"status": "complete", "cells": ["k1", "k2"]})
    complete = l2obench.load_results(tmp_path)
    assert len(complete) == 6 and set(complete["cell_id"]) == {"a", "b"}
    assert json.loads((tmp_path / "manifest.json").read_text())["status"] == "complete"


def test_mixed_types_across_families_still_combine(tmp_path):
    store.write_cell(tmp_path, "k1", frame("a", channels=8))
    store.write_cell(tmp_path, "k2", frame("b", channels="[8,16]"))
    assert store.combine(tmp_path, ["k1", "k2"]) == 6
    assert len(pd.read_parquet(tmp_path / "results.parquet")) == 6


def test_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        l2obench.load_results(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no manifest.json"):
        store.read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        store.read_manifest(tmp_path)
