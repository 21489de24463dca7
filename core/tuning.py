"""The tuning rule: a baseline's settings chosen per test variant and horizon on
validation optimizees (the paper's protocol, Sec. 3), then tested on test optimizees.

A baseline's grid on one task variant is one :class:`TuneGroup`, run once to the
longest horizon any test asks of it there; each test horizon reads the prefix of
the same trajectories, so one grid serves every horizon.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .cells import Cell, CellKind, baseline_spec, evaluation_cell

if TYPE_CHECKING:
    from .suite import OptimizerSpec, TaskVariant

#: what identifies a tuning group: (baseline, task variant id, the horizon it runs to)
GroupKey = tuple[str, str, int]


@dataclass
class TuneGroup:
    """The grid of one baseline on one task variant, run to ``horizon`` on validation optimizees;
    ``horizons`` are the test horizons it chooses settings for."""

    baseline: str
    task: TaskVariant
    horizon: int
    specs: list[OptimizerSpec]
    cells: list[Cell]
    horizons: list[int] = field(default_factory=list)


def choose(group: TuneGroup, losses: dict[str, Any], horizon: int, rule: str) -> tuple[int, list[float]]:
    """The index of the best grid point for ``horizon`` and every point's score: the mean over
    validation seeds of the final loss at step ``horizon-1`` (``rule="final"``) or of the loss
    summed over the first ``horizon`` steps (``"summed"``); a diverged seed scores inf; ties go
    to the earlier grid point."""
    import numpy as np

    scores = []
    for cell in group.cells:
        L = losses[cell.key][:, :horizon]
        s = L[:, -1] if rule == "final" else L.sum(axis=1)
        s = np.where(np.isfinite(s), s, np.inf)
        scores.append(float(s.mean()))
    best = min(range(len(scores)), key=lambda i: (scores[i], i))
    return best, scores


def tuned_tests(group: TuneGroup, losses: dict[str, Any], rule: str, seeds: list[int],
                device: str) -> list[tuple[int, Cell, dict[str, Any]]]:
    """Once every cell of ``group`` is done (``losses``: their ``(seeds, steps)`` losses by key):
    per test horizon, the baseline's test cell with the settings ``rule`` chose, and the
    record of the choice (the manifest's ``tuning``)."""
    out = []
    for h in group.horizons:
        best, scores = choose(group, losses, h, rule)
        opt = group.specs[best]
        cell = evaluation_cell(CellKind.TEST, baseline_spec(opt), group.task, h, "test", seeds, device)
        record = {"baseline": group.baseline, "task": group.task.id, "horizon": h, "rule": rule,
                  "chosen": opt.id, "params": opt.written,
                  "scores": {o.id: sc for o, sc in zip(group.specs, scores)}}
        out.append((h, cell, record))
    return out


def tuning_id(group: TuneGroup, horizon: int) -> str:
    """How the manifest and the report name one choice: ``adam @ quadratic[dim=10] @ T=100``."""
    return f"{group.baseline} @ {group.task.id} @ T={horizon}"
