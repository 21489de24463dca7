"""The scheduler: one run's event loop over a :class:`~l2obench.runner.Runner`'s cells.

It submits every cell whose inputs are done to the executor, waits for the first to
return, has the runner write it, and submits what it unlocked (a learned optimizer's
tests once its meta-training is written, a baseline's tests once its tuning grid is),
until nothing is in flight.  A cell that raises is reported and the others go on.
Test cells that differ only in their horizon run once, to the longest
(:func:`~l2obench.cells.share_prefixes`).
"""
from __future__ import annotations

import concurrent.futures as cf
from typing import TYPE_CHECKING, Any

from .cells import Cell, CellKind, OptimizerKind, heldout_schedule, prefix_result, share_prefixes
from .errors import MetaTrainingError
from .executor import Executor
from .work import progress_path, run_cell

if TYPE_CHECKING:
    from .runner import Runner


class Scheduler:
    """Runs ``runner``'s cells not done yet on ``pool``, showing progress on ``bar`` (tqdm).

    After :meth:`run`: ``failures`` (cell id, one-line error), ``compute`` (the
    (start, end) of each run's optimizer steps), ``ran`` (cells written)."""

    def __init__(self, runner: Runner, pool: Executor, bar):
        self.runner, self.pool, self.bar = runner, pool, bar
        self.in_flight: dict[cf.Future, Cell] = {}
        self.riders: dict[str, list[Cell]] = {}  # key of a cell in flight: cells read from its prefix
        self.failures: list[tuple[str, str]] = []
        self.compute: list[tuple[float, float]] = []
        self.ran = 0
        self._done_before = runner.count()[0]

    def run(self) -> None:
        """Until nothing is in flight: submit what is ready, collect what returns."""
        self.submit(self.runner.ready())
        while self.in_flight:
            finished, _ = cf.wait(list(self.in_flight), return_when=cf.FIRST_COMPLETED)
            for future in finished:
                self.collect(future)

    def submit(self, cells: list[Cell]) -> None:
        """Submit the cells not done, each group of horizons once (see :func:`share_prefixes`)."""
        plan = share_prefixes(cells, self.runner.done)
        for cell in cells:
            if cell.key in plan:
                self.riders[cell.key] = plan.pop(cell.key)
                self.in_flight[self.pool.submit(run_cell, cell.kind, cell.spec, self.runtime(cell))] = cell

    def runtime(self, cell: Cell) -> dict[str, Any]:
        """What a worker needs besides the cell's spec: the executor's torch threads per cell;
        for a meta-train cell, the run directory (where it keeps its progress); for a learned
        optimizer's test, the bytes of its checkpoint."""
        runtime: dict[str, Any] = {"threads": self.pool.threads}
        if cell.kind is CellKind.META_TRAIN:
            runtime["run_dir"] = str(self.runner.out)
        if cell.kind is CellKind.TEST and cell.spec["optimizer"]["kind"] == OptimizerKind.LEARNED:
            runtime["checkpoint"] = self.runner.checkpoint_bytes(cell.spec["optimizer"]["id"])
        if cell.kind is not CellKind.META_TRAIN:  # the shorter cells read from it need their own steps
            runtime["heldout_steps"] = sorted({t for c in [cell, *self.riders.get(cell.key, [])]
                                               for t in heldout_schedule(c.spec)})
        return runtime

    def collect(self, future: cf.Future) -> None:
        """A cell returned: write it and the cells read from its prefix, submit what it unlocked."""
        cell = self.in_flight.pop(future)
        shorter = self.riders.pop(cell.key, [])
        try:
            result = future.result()
        except Exception as exc:  # a bug or a bad plugin: report, keep going
            self.failures += [(c.id, _one_line(exc)) for c in [*shorter, cell]]
            if cell.kind is CellKind.META_TRAIN:  # its tests cannot run: say why
                name = self.runner.plan.learned_id(cell)
                reason = (str(exc) if isinstance(exc, MetaTrainingError)
                          else f"meta-training of {name} failed: {_one_line(exc)}")
                self.failures += [(c.id, reason) for c in self.runner.plan.learned_tests
                                  if name in c.needs and c.key not in self.runner.done]
        else:
            for c in shorter:
                self.runner.finish(c, prefix_result(result, c.spec["horizon"]))
            unlocked = self.runner.finish(cell, result)
            if cell.kind is CellKind.META_TRAIN:  # written: its progress is no longer needed
                progress_path(self.runner.out, cell.key).unlink(missing_ok=True)
            self.compute.append(tuple(result["compute"]))
            self.ran += 1 + len(shorter)
            self.bar.set_description_str(_short(cell.id), refresh=False)
            self.submit(unlocked)
        self.bar.update(self.runner.count()[0] - self._done_before + len(self.failures) - self.bar.n)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
