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
from .errors import ConfigError

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
    search: str = "grid"


def choose(group: TuneGroup, curves: dict[str, Any], horizon: int, rule: str) -> tuple[int, list[float]]:
    """The index of the best grid point for ``horizon`` and every point's score: the mean over
    validation seeds of the criterion ``rule`` (:mod:`l2obench.criteria`: ``final``,
    ``summed``, ``heldout_loss``, ``heldout_accuracy``) for a run of ``horizon`` steps; a
    diverged seed scores as the worst possible; ties go to the earlier grid point.
    ``curves``: each cell's :func:`l2obench.store.curves`, by key."""
    from . import criteria

    scores = []
    for cell in group.cells:
        try:
            per_seed = criteria.values(curves[cell.key], horizon, rule)
        except KeyError as exc:
            raise ConfigError(f"tuning {tuning_id(group, horizon)} on {rule!r}: {exc.args[0]} in {cell.id}; "
                              f"tune on final or summed") from None
        scores.append(float(criteria.scores(per_seed, rule).mean()))
    return criteria.best_index(scores, rule), scores


def on_edge(group: TuneGroup, best: int) -> list[str]:
    """The parameters whose chosen value is the smallest or largest of a grid axis of
    several values (the best may lie beyond the grid): ``["lr=1.0 (largest tried)"]``."""
    chosen = group.specs[best].written
    edges = []
    for key, value in chosen.items():
        axis = sorted({o.written.get(key) for o in group.specs if isinstance(o.written.get(key), (int, float))})
        if len(axis) > 1 and value in (axis[0], axis[-1]):
            edges.append(f"{key}={value} ({'smallest' if value == axis[0] else 'largest'} tried)")
    return edges


def tuned_tests(group: TuneGroup, curves: dict[str, Any], rule: str, seeds: list[int], device: str,
                heldout: dict[str, Any] | None = None) -> list[tuple[int, Cell, dict[str, Any]]]:
    """Once every cell of ``group`` is done (``curves``: their :func:`l2obench.store.curves` by
    key): per test horizon, the baseline's test cell with the settings ``rule`` chose, and the
    record of the choice (the manifest's ``tuning``): the scores of every grid point, the
    budget (runs of the horizon on validation seeds) and any chosen value on the grid's edge."""
    out = []
    validation_seeds = len(group.cells[0].spec["seeds"]) if group.cells else 0
    for h in group.horizons:
        best, scores = choose(group, curves, h, rule)
        opt = group.specs[best]
        cell = evaluation_cell(CellKind.TEST, baseline_spec(opt), group.task, h, "test", seeds, device,
                               heldout={"every": (heldout or {}).get("every")})
        record = {"baseline": group.baseline, "task": group.task.id, "horizon": h, "rule": rule,
                  "chosen": opt.id, "params": opt.written,
                  "scores": {o.id: sc for o, sc in zip(group.specs, scores)},
                  "budget": {"trials": len(group.specs), "validation_seeds": validation_seeds,
                             "steps": group.horizon, "search": group.search},
                  "edge": on_edge(group, best)}
        out.append((h, cell, record))
    return out


def tuning_id(group: TuneGroup, horizon: int) -> str:
    """How the manifest and the report name one choice: ``adam @ quadratic[dim=10] @ T=100``."""
    return f"{group.baseline} @ {group.task.id} @ T={horizon}"
