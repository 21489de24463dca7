"""Time to target (AlgoPerf): for each cell, the steps and seconds its optimizer took to
reach a target loss or accuracy, computed from the tidy results table alone.

A cell's curve is the mean over its seeds of the metric at each recorded step; it reaches
the target at the first step where that mean is at or below it (at or above it, for
accuracy).  A cell that never does within its horizon, or whose seeds diverge before it
does (the mean is then not finite), takes infinitely long, as AlgoPerf scores it.  The
seconds are those its optimizer steps took up to that step (the table's ``elapsed``;
held-out evaluation left out).  Without a given target, each test variant's is the best
tuned baseline's final value on it (the mean over test seeds at the last step).
"""
from __future__ import annotations

from typing import Any, Optional

__all__ = ["time_to_target", "TARGET_COLUMNS"]

#: the columns of :func:`time_to_target`'s table
TARGET_COLUMNS = ["cell_id", "task", "horizon", "optimizer", "optimizer_id", "optimizer_kind", "metric", "target",
                  "reached", "steps", "seconds", "final"]


def _maximised(metric: str) -> bool:
    return metric.endswith("accuracy")


def _curve(cell) -> tuple[Any, Any, Any]:
    """A cell's (steps, mean over seeds at each step, elapsed seconds at each step)."""
    import numpy as np

    wide = cell.pivot_table(index="seed", columns="step", values="loss", aggfunc="first", dropna=False)
    values = wide.to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        mean = np.where(np.isfinite(values).all(axis=0), values.mean(axis=0), np.nan)
    elapsed = cell.groupby("step")["elapsed"].first().reindex(wide.columns).to_numpy(dtype=float)
    return wide.columns.to_numpy(), mean, elapsed


def time_to_target(results, target: Optional[float] = None, metric: str = "loss", kind: str = "test"):
    """One row per cell of ``kind`` (default the test cells) of the results table ``results``
    (:func:`l2obench.load_results`) that records ``metric`` (``loss``, ``heldout_loss``,
    ``heldout_accuracy``, ...): the ``target``, whether it was ``reached``, the ``steps`` and
    ``seconds`` to reach it (``inf`` if not), and the cell's ``final`` value.  ``target=None``
    derives each variant's target from its best tuned baseline's final value."""
    import numpy as np
    import pandas as pd

    from .errors import ConfigError

    if not len(results):
        return pd.DataFrame(columns=TARGET_COLUMNS)
    rows = results[(results["kind"] == kind) & (results["metric"] == metric)]
    if rows.empty:
        known = sorted(set(results.loc[results["kind"] == kind, "metric"]))
        raise ConfigError(f"time to target: no {kind} rows of metric {metric!r}; the table has "
                          f"{', '.join(map(str, known)) or 'none'}")
    best = max if _maximised(metric) else min
    cells = []
    for (cell_id, task, horizon, optimizer, opt_id, opt_kind), g in rows.groupby(
            ["cell_id", "task", "horizon", "optimizer", "optimizer_id", "optimizer_kind"], sort=False):
        steps, mean, elapsed = _curve(g)
        cells.append({"cell_id": cell_id, "task": task, "horizon": int(horizon), "optimizer": optimizer,
                      "optimizer_id": opt_id, "optimizer_kind": opt_kind, "metric": metric,
                      "_steps": steps, "_mean": mean, "_elapsed": elapsed,
                      "final": float(mean[-1]) if len(mean) else np.nan})
    targets: dict[tuple[str, int], float] = {}
    if target is None:
        for c in cells:
            if c["optimizer_kind"] == "baseline" and np.isfinite(c["final"]):
                key = (c["task"], c["horizon"])
                targets[key] = best(targets.get(key, c["final"]), c["final"])
    out = []
    for c in cells:
        goal = float(target) if target is not None else targets.get((c["task"], c["horizon"]), np.nan)
        mean = c.pop("_mean")
        steps, elapsed = c.pop("_steps"), c.pop("_elapsed")
        with np.errstate(invalid="ignore"):
            hit = np.flatnonzero((mean >= goal) if _maximised(metric) else (mean <= goal)) \
                if np.isfinite(goal) else np.array([], dtype=int)
        first = hit[0] if len(hit) else None
        out.append({**c, "target": goal, "reached": first is not None,
                    "steps": float(steps[first]) if first is not None else np.inf,
                    "seconds": float(elapsed[first]) if first is not None else np.inf})
    return pd.DataFrame(out, columns=TARGET_COLUMNS)
