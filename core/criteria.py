"""What tuning selects on and the report ranks by: a *criterion* turns one evaluation
cell's curves into one number per seed.

- ``final``: the minibatch loss at the horizon's last step (the paper's tuning rule);
- ``summed``: the minibatch loss summed over the horizon (the paper's summed loss);
- ``heldout_loss``, ``heldout_accuracy``: the task's held-out loss or accuracy on the
  split's fixed evaluation set at the horizon's last step (DeepOBS, AlgoPerf).

Losses are minimised and accuracy maximised; a seed that diverged scores as the worst
possible (``inf`` loss, zero accuracy), so an optimizer that diverges on some seeds never
wins on the luck of the others.
"""
from __future__ import annotations

from typing import Any, Literal

CRITERIA: dict[str, str] = {
    "final": "the loss at the last step of the horizon (the minibatch's)",
    "summed": "the loss summed over the horizon (the minibatch's)",
    "heldout_loss": "the held-out loss at the last step, on the split's evaluation set",
    "heldout_accuracy": "the held-out accuracy at the last step, on the split's evaluation set",
}
Criterion = Literal["final", "summed", "heldout_loss", "heldout_accuracy"]
#: the criteria a larger value of which is better
MAXIMISED = frozenset({"heldout_accuracy"})
#: the held-out metric (a results-table metric) each held-out criterion reads
HELDOUT_CRITERIA = {"heldout_loss": "heldout_loss", "heldout_accuracy": "heldout_accuracy"}


def maximised(criterion: str) -> bool:
    return criterion in MAXIMISED


def metric_of(criterion: str) -> str:
    """The results table's metric a criterion reads: ``loss`` or a held-out metric."""
    return HELDOUT_CRITERIA.get(criterion, "loss")


def values(curves: dict[str, Any], horizon: int, criterion: str):
    """Per seed, ``criterion`` for a run of ``horizon`` steps from a cell's ``curves``
    (:func:`l2obench.store.curves`: ``{metric: (steps, (seeds, n) values)}``, a longer run's
    allowed); non-finite values stay as they are.  A held-out criterion needs its metric at
    step ``horizon - 1``: a ``KeyError`` saying so where it is missing."""
    import numpy as np

    if criterion in ("final", "summed"):
        steps, table = curves["loss"]
        table = table[:, np.asarray(steps) < horizon]
        return table[:, -1] if criterion == "final" else table.sum(axis=1)
    metric = metric_of(criterion)
    if metric not in curves:
        raise KeyError(f"no {metric} rows (the task reports no held-out metrics)")
    steps, table = curves[metric]
    where = np.flatnonzero(np.asarray(steps) == horizon - 1)
    if not len(where):
        raise KeyError(f"no {metric} at step {horizon - 1}")
    return table[:, where[0]]


def scores(per_seed, criterion: str):
    """Per-seed values with a diverged (non-finite) seed as the worst possible: ``inf`` for a
    loss, ``0`` for accuracy."""
    import numpy as np

    per_seed = np.asarray(per_seed, dtype=float)
    return np.where(np.isfinite(per_seed), per_seed, 0.0 if maximised(criterion) else np.inf)


def best_index(means: list[float], criterion: str) -> int:
    """The index of the best of ``means`` (NaN is worst); ties go to the earlier one."""
    import math

    sign = -1.0 if maximised(criterion) else 1.0
    return min(range(len(means)), key=lambda i: (math.isnan(means[i]), sign * means[i] if not math.isnan(means[i])
                                                 else 0.0, i))
