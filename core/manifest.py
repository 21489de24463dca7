"""The manifest of a run directory (``DIR/manifest.json``): what ran, where, with which
versions, when, and how it ended; the report reads it next to the results table."""
from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any, Optional

from .suite import Suite


def started_manifest(suite: Suite, *, device: str, executor: str, workers: int, command: Optional[list[str]],
                     started: float, cells: list[str], tuning: dict[str, Any],
                     ingredients: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The manifest as a run starts (``status`` "running"): the suite (whose run directory
    this is), its variants and seeds, the versions of everything involved, the host, the
    command, the cells and what each cell's key is made of (``ingredients``, by key:
    :func:`~l2obench.cells.key_ingredients`, so that a later run can say why a cell is stale)."""
    import torch

    from . import __version__
    from .registry import get_registry

    plugins = sorted({(e.distribution, e.version) for e in get_registry().all_entries()})
    return {
        "suite": suite.name, "suite_file": str(suite.path), "suite_sha256": suite.sha256,
        "suite_text": suite.text, "description": suite.model.suite.description,
        "references": suite.references, "status": "running",
        "variants": [{"task": tv.task.id, "family": tv.task.family, "horizons": list(tv.horizons),
                      "optimizers": list(tv.optimizers), "entry": tv.entry, "config": tv.task.config}
                     for tv in suite.tests],
        "baselines": list(suite.baselines), "learned": suite.learned_names,
        "learned_runs": {name: suite.runs(name) for name in suite.learned_names},
        "tune_rule": suite.tune_rule, "rank_rule": suite.rank_rule, "heldout_every": suite.heldout_every,
        "target": suite.target, "test_seeds": suite.test_seeds,
        "validation_seeds": suite.validation_seeds,
        "versions": {"l2obench": __version__, "torch": torch.__version__, "python": platform.python_version(),
                     "plugins": {d: v for d, v in plugins}},
        "device": device, "executor": executor, "workers": workers,
        "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "command": command if command is not None else sys.argv,
        "started": timestamp(started), "ended": None,
        "cells": cells, "tuning": tuning, "ingredients": ingredients or {},
    }


def finished_manifest(manifest: dict[str, Any], *, complete: bool, cells: list[str], tuning: dict[str, Any],
                      failures: list[tuple[str, str]], timing: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` as the run ends: complete or not, every cell, the failures, the timing."""
    return {**manifest, "status": "complete" if complete else "incomplete",
            "ended": timestamp(), "cells": cells, "tuning": tuning,
            "failures": [{"cell": c, "error": e} for c, e in failures], "timing": timing}


def timestamp(when: Optional[float] = None) -> str:
    """``when`` (epoch seconds; default now) as ISO 8601 local time with the UTC offset."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(when))
