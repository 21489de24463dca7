"""`l2obench run` builds every task a suite names before anything runs, so a missing
data file is refused up front in one line, by --dry-run as by the real run, and
nothing is written."""
from __future__ import annotations

import pytest

from l2obench.cli import main

SUITE = """[suite]
name = "needs-cifar"
seeds = 2
validation_seeds = 2
[baselines]
optimizers = ["adam"]
lr_grid = [0.01]
[[test]]
task = { family = "image-mlp", dataset = "cifar-10" }
horizons = 3
"""


@pytest.mark.parametrize("dry", [True, False])
def test_a_missing_data_file_is_refused_before_running(tmp_path, monkeypatch, capsys, dry):
    monkeypatch.setenv("L2OBENCH_DATA_DIR", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), *(["--dry-run"] if dry else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("l2obench: error:") and "\n" not in err
    assert "image-mlp[dataset=cifar-10]" in err and "cifar-10-binary.tar.gz" in err
    assert not (out / "cells").exists()
