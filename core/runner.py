"""The runner: a suite's cells, run in dependency order on an executor, resumable.

The pipeline, one module a step::

    suite --plan.py--> cells --schedule.py--> executor --work.py--> raw results
          --store.py--> DIR/cells/<key>.parquet, DIR/results.parquet (+ manifest.py)

:func:`~l2obench.plan.plan_suite` turns a suite into cells (:mod:`l2obench.cells`)
without touching the disk; a :class:`Runner` reads which of them a run directory
already holds, and its :meth:`~Runner.run` hands the others to a
:class:`~l2obench.schedule.Scheduler`, which submits each to the executor as soon as
its inputs are done (baselines' tests once tuning chose their settings:
:mod:`l2obench.tuning`).  Every cell runs all its seeds in one batched
:func:`l2obench.evaluate.run` (:func:`l2obench.work.run_cell`).  A finished cell is
written at once and atomically, so a crash, Ctrl-C or SIGKILL loses only the cells
in flight, and a rerun skips the finished ones.

A run directory defends itself: it belongs to one suite (another is refused unless
``force``), one run at a time writes into it (:func:`~l2obench.store.run_lock`), and a
cell file counts as done only when it passes its checksum (a corrupt one is recomputed,
with a warning).

A run reports how its wall time was spent: the time during which at least one
optimizer step (inside :func:`~l2obench.evaluate.run` or
:func:`~l2obench.metatrain.meta_train`) was running, against the wall time since
``started`` (for ``l2obench run``, when the command started); the rest is start-up,
scheduling, loading and writing.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, TextIO

from . import store
from .artifacts import write_artifacts
from .atomic import atomic_write_bytes
from .cells import (Cell, CellKind, cell_key, evaluation_cell, key_ingredients, meta_train_cell,  # noqa: F401
                    with_provenance)
from .devices import resolve_device
from .errors import ConfigError, L2OError, L2OWarning
from .executor import check_executor, default_workers, start_executor
from .manifest import finished_manifest, started_manifest
from .plan import plan_suite
from .store import cell_frame  # noqa: F401  (re-exported)
from .suite import Suite, load_suite
from .tuning import GroupKey, TuneGroup, tuned_tests, tuning_id

__all__ = ["Runner", "RunSummary", "run_suite", "Cell", "CellKind", "cell_key", "cell_frame", "evaluation_cell",
           "meta_train_cell"]


@dataclass
class RunSummary:
    """What a run did, and where its wall time went."""

    out: Path
    done_before: int
    ran: int
    failed: list[tuple[str, str]]
    wall_s: float
    compute_union_s: float
    compute_sum_s: float
    workers: int

    @property
    def outside_fraction(self) -> float:
        return max(0.0, self.wall_s - self.compute_union_s) / self.wall_s if self.wall_s > 0 else 0.0


class Runner:
    """A suite planned against a run directory: which cells are done there, which are
    left, and the run of those left on an executor.

    ``device`` overrides the suite's (default ``cpu``); ``force`` counts nothing as done,
    and lets a suite replace another's results in ``out``."""

    def __init__(self, suite: Suite, out: str | os.PathLike, *, device: Optional[str] = None, force: bool = False):
        self.suite = suite
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {str(self.out)!r} is a file, not a run directory; give a directory path")
        self.device = device or suite.model.suite.device or "cpu"
        resolve_device(self.device, "--device" if device else f"{suite.path}: suite.device")
        self.force = force
        self.previous = self._previous_manifest()
        if not force:
            self._check_owner()
        from .provenance import current

        self.provenance = current()
        self.plan = plan_suite(suite, self.device, self.provenance)
        self._unverified: set[str] = set()
        self.done: set[str] = set() if force else self._done_in_directory()
        self.losses: dict[str, Any] = {}  # tune cell key -> its curves (store.curves)
        self.tuning: dict[str, Any] = {}  # the manifest's record of every choice
        self.chosen: dict[tuple[GroupKey, int], Cell] = {}  # a baseline's test cell per group and horizon
        self._groups_of: dict[str, list[GroupKey]] = {}
        self._manifest: Optional[dict[str, Any]] = None  # while running
        for gkey, group in self.plan.groups.items():
            for c in group.cells:
                self._groups_of.setdefault(c.key, []).append(gkey)
            if self._all_done(group.cells):
                self._settle(gkey)

    # -- what the directory holds ---------------------------------------------------
    def _previous_manifest(self) -> dict[str, Any]:
        """The manifest of the last run into ``out`` (empty if none or unreadable: the run rewrites it)."""
        if not (self.out / store.MANIFEST).exists():
            return {}
        try:
            return store.read_manifest(self.out)
        except L2OError:
            return {}

    def _check_owner(self) -> None:
        """A run directory belongs to the suite that first ran into it."""
        owner = self.previous.get("suite")
        if owner is not None and owner != self.suite.name:
            cells = len(self.previous.get("cells") or [])
            raise ConfigError(
                f"--out {str(self.out)!r} holds the results of suite {owner!r} ({cells} cells), not of "
                f"{self.suite.name!r} ({self.suite.path}); give another --out, or --force to replace them")

    def _done_in_directory(self) -> set[str]:
        """The keys of the finished cells whose files are whole (a corrupt one is recomputed).
        Baseline test cells are known only once tuning is read back: theirs are verified then."""
        on_disk = store.done_keys(self.out)
        known = {c.key for c in self.plan.known_cells()}
        self._unverified = on_disk - known
        done = {k for k in sorted(on_disk & known) if self._whole(k)} | self._unverified
        for name, cell in self.plan.meta.items():
            if cell.key in done and not self._checkpoint_ok(name, cell):
                done.discard(cell.key)
        return done

    def _checkpoint_ok(self, name: str, cell: Cell) -> bool:
        """A meta-train cell counts as done only with its checkpoint on disk, unchanged."""
        from .checkpoint import read_checkpoint

        path = self.checkpoint_path(name)
        if not path.exists():
            return False
        try:
            frame = store.read_cell(self.out, cell.key, ["checkpoint"])
            _, info = read_checkpoint(path)
        except (L2OError, OSError, ValueError, store.CorruptFile):
            return False
        return len(frame) > 0 and info.content_hash == frame["checkpoint"].iloc[0]

    def _whole(self, key: str) -> bool:
        """Whether the file of cell ``key`` passes its checksum; if not, a warning says so."""
        reason = store.verify_cell(self.out, key)
        if reason is not None:
            warnings.warn(f"{store.cell_path(self.out, key)}: corrupt cell file, {reason}; recomputing it",
                          L2OWarning, stacklevel=4)
        return reason is None

    def checkpoint_path(self, name: str) -> Path:
        """Where the meta-train cell of learned optimizer ``name`` (its id: ``lstm``, or
        ``lstm[seed=1]`` for one of several meta-training seeds) keeps its checkpoint."""
        return self.out / store.CHECKPOINTS / f"{name}.safetensors"

    def checkpoint_bytes(self, name: str) -> bytes:
        """The checkpoint of learned optimizer ``name``: the suite's file, or the one meta-trained here."""
        spec = self.suite.learned[name]
        return Path(spec.checkpoint if spec.checkpoint is not None else self.checkpoint_path(name)).read_bytes()

    # -- what is known, done and ready ----------------------------------------------
    def _all_done(self, cells: list[Cell]) -> bool:
        return all(c.key in self.done for c in cells)

    def _needs_done(self, cell: Cell) -> bool:
        return self._all_done([self.plan.meta[n] for n in cell.needs])

    def all_known_cells(self) -> list[Cell]:
        return self.plan.known_cells() + list(self.chosen.values())

    def count(self) -> tuple[int, int]:
        """(cells done, cells to run), counting baseline test cells still waiting for tuning."""
        known = self.all_known_cells()
        done = sum(c.key in self.done for c in known)
        waiting = sum(1 for k in self.plan.baseline_tests if k not in self.chosen)
        return done, len(known) - done + waiting

    def ready(self) -> list[Cell]:
        """The cells whose inputs are done (the scheduler skips those done themselves)."""
        cells = list(self.plan.meta.values())
        for gkey, group in self.plan.groups.items():
            cells += [self.chosen[(gkey, h)] for h in group.horizons] if self._all_done(group.cells) else group.cells
        return cells + [c for c in self.plan.learned_tests if self._needs_done(c)]

    def _settle(self, gkey: GroupKey) -> list[Cell]:
        """Once a tuning group is done: its baseline's test cells with the settings chosen."""
        group: TuneGroup = self.plan.groups[gkey]
        for c in group.cells:  # cells finished by an earlier, interrupted run are read back
            if c.key not in self.losses:
                self.losses[c.key] = store.read_curves(self.out, c.key)
        new = []
        for h, cell, record in tuned_tests(group, self.losses, self.suite.tune_rule, self.suite.test_seeds,
                                           self.device, {"every": self.suite.heldout_every}):
            cell = with_provenance(cell, self.provenance)
            if cell.key in self._unverified:
                self._unverified.discard(cell.key)
                if not self._whole(cell.key):
                    self.done.discard(cell.key)
            self.chosen[(gkey, h)] = cell
            self.tuning[tuning_id(group, h)] = record
            new.append(cell)
        if self._manifest is not None:  # the manifest lists every cell known
            self._manifest.update(cells=[c.key for c in self.all_known_cells()], tuning=self.tuning,
                                  ingredients=self.ingredients())
            store.write_manifest(self.out, self._manifest)
        return new

    def finish(self, cell: Cell, result: dict[str, Any]) -> list[Cell]:
        """Write a finished cell (a checkpoint first, then the rows, which mark it done);
        returns the cells it unlocked."""
        if cell.kind is CellKind.META_TRAIN:
            atomic_write_bytes(self.checkpoint_path(self.plan.learned_id(cell)), result.pop("checkpoint_bytes"))
        if result.get("artifacts"):
            write_artifacts(self.out, cell.key, result.pop("artifacts"))
        frame = store.cell_frame(cell, result)
        store.write_cell(self.out, cell.key, frame)
        self.done.add(cell.key)
        if cell.kind is CellKind.META_TRAIN:
            name = self.plan.learned_id(cell)
            return [c for c in self.plan.learned_tests if name in c.needs and self._needs_done(c)]
        unlocked: list[Cell] = []
        if cell.kind is CellKind.TUNE:
            self.losses[cell.key] = store.curves(frame)
            for gkey in self._groups_of[cell.key]:
                group = self.plan.groups[gkey]
                if self._all_done(group.cells) and (gkey, group.horizons[0]) not in self.chosen:
                    unlocked += self._settle(gkey)
        return unlocked

    def ingredients(self) -> dict[str, dict[str, Any]]:
        """What each known cell's key is made of (:func:`~l2obench.cells.key_ingredients`), by key."""
        return {c.key: key_ingredients(c) for c in self.all_known_cells()}

    def stale(self) -> dict[str, str]:
        """Why a cell to run is not one the last run into ``out`` finished under the same id
        (plugin source, kernel mode or definition changed), by key."""
        from .cells import stale_reason

        before = {i["id"]: (k, i) for k, i in (self.previous.get("ingredients") or {}).items()
                  if isinstance(i, dict) and "id" in i}
        on_disk = store.done_keys(self.out)
        reasons = {}
        for cell in self.all_known_cells():
            old = before.get(cell.id)
            if cell.key not in self.done and old is not None and old[0] != cell.key and old[0] in on_disk:
                reasons[cell.key] = stale_reason(key_ingredients(cell), old[1])
        return reasons

    def describe(self) -> list[str]:
        """One line per cell, in run order, with its state (for ``--dry-run``)."""
        from .cells import share_prefixes

        lines = []
        stale = self.stale()
        read_from = {r.key: long for long, riders in
                     share_prefixes(self.plan.learned_tests + list(self.chosen.values()), self.done).items()
                     for r in riders}

        def line(cell: Cell, note: str = "") -> None:
            state = "done  " if cell.key in self.done else "to run"
            if cell.key in read_from:
                note += f"  (read from the first {cell.spec['horizon']} steps of [{read_from[cell.key]}])"
            if cell.key in stale:
                note += f"  (stale: {stale[cell.key]})"
            lines.append(f"{state}  {cell.id}  [{cell.key}]{note}")

        for cell in self.plan.known_cells():
            line(cell)
        for gkey, h in self.plan.baseline_tests:
            if (gkey, h) in self.chosen:
                line(self.chosen[(gkey, h)], "  (settings chosen by tuning)")
            else:
                name, task, _ = gkey
                lines.append(f"to run  {name}[tuned] @ {task} @ T={h}  (settings chosen once its tuning is done)")
        return lines

    # -- running --------------------------------------------------------------------
    def run(self, executor: str = "local", workers: Optional[int] = None, progress: bool = True,
            stream: Optional[TextIO] = None, command: Optional[list[str]] = None, *, pool: Any = None,
            started: Optional[float] = None) -> RunSummary:
        """Run every cell not done yet; returns a :class:`RunSummary`.

        ``pool`` is an executor already started (by :func:`~l2obench.executor.start_executor`,
        so its workers warm up while the suite is validated); it is shut down at the end.
        ``started`` is when the wall-time clock started (default: now).  Refused in one line,
        before any work, when ``out`` cannot be written or another run holds it."""
        with contextlib.ExitStack() as held:
            try:
                store.check_writable(self.out)
                self.out.mkdir(parents=True, exist_ok=True)
                held.enter_context(store.run_lock(self.out))
            except BaseException:
                if pool is not None:
                    pool.shutdown(cancel=True)
                raise
            return self._run(executor, workers, progress, stream, command, pool, started)

    def _run(self, executor: str, workers: Optional[int], progress: bool, stream: Optional[TextIO],
             command: Optional[list[str]], pool: Any, started: Optional[float]) -> RunSummary:
        workers = max(1, workers or default_workers())
        started = time.time() if started is None else started
        stream = sys.stdout if stream is None else stream
        done_before, to_run = self.count()
        print(f"{self.suite.name}: {done_before} cells done already, {to_run} to run"
              + (" (--force: recomputing all)" if self.force else ""), file=stream, flush=True)
        store.remove_leftovers(self.out)
        self._manifest = started_manifest(self.suite, device=self.device, executor=executor, workers=workers,
                                          command=command, started=started,
                                          cells=[c.key for c in self.all_known_cells()], tuning=self.tuning,
                                          ingredients=self.ingredients())
        store.write_manifest(self.out, self._manifest)
        try:
            return self._run_cells(executor, workers, progress, stream, pool, started, to_run, done_before)
        except BaseException as exc:  # the manifest never stays "running" after the run
            if self._manifest is not None:
                keys = [c.key for c in self.all_known_cells()]
                store.write_manifest(self.out, finished_manifest(
                    self._manifest, complete=False, cells=keys, tuning=self.tuning,
                    failures=[("(the run)", f"{type(exc).__name__}: {exc}".splitlines()[0])],
                    timing={"wall_s": time.time() - started}))
                self._manifest = None
            raise

    def _run_cells(self, executor: str, workers: int, progress: bool, stream: TextIO, pool: Any, started: float,
                   to_run: int, done_before: int) -> RunSummary:
        from tqdm.auto import tqdm

        from .schedule import Scheduler

        failures: list[tuple[str, str]] = []
        compute: list[tuple[float, float]] = []
        ran = 0
        if not to_run and pool is not None:
            pool.shutdown(cancel=True)
        if to_run:
            pool = start_executor(executor, workers) if pool is None else check_executor(pool, "passed to Runner.run")
            bar = tqdm(total=to_run, unit="cell", dynamic_ncols=True, disable=not progress, file=sys.stderr,
                       desc=self.suite.name)
            scheduler = Scheduler(self, pool, bar)
            try:
                scheduler.run()
            except BaseException:
                pool.shutdown(cancel=True)
                bar.close()
                raise
            pool.shutdown()
            bar.close()
            failures, compute, ran = scheduler.failures, scheduler.compute, scheduler.ran
        keys = [c.key for c in self.all_known_cells()]
        store.combine(self.out, keys)
        ended = time.time()
        # what was done before, counted now: a baseline test cell counted as waiting for its
        # tuning may turn out to be done already (its setting chosen again)
        done_before = max(done_before, len(set(keys) & store.done_keys(self.out)) - ran)
        summary = RunSummary(self.out, done_before, ran, failures, ended - started,
                             _union_length(compute, started, ended), sum(b - a for a, b in compute), workers)
        timing = {"wall_s": summary.wall_s, "optimizer_steps_s": summary.compute_union_s,
                  "optimizer_steps_summed_s": summary.compute_sum_s, "outside_fraction": summary.outside_fraction,
                  "workers": workers, "cells_run": ran}
        complete = not failures and set(keys) <= store.done_keys(self.out)
        self._manifest["ingredients"] = self.ingredients()
        store.write_manifest(self.out, finished_manifest(self._manifest, complete=complete, cells=keys,
                                                         tuning=self.tuning, failures=failures, timing=timing))
        self._manifest = None
        return summary


def _union_length(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """The length of the union of ``intervals`` inside ``[lo, hi]``."""
    total, end = 0.0, lo
    for a, b in sorted(intervals):
        a, b = max(a, end, lo), min(b, hi)
        if b > a:
            total += b - a
            end = b
    return total


def run_suite(path: str | os.PathLike, out: str | os.PathLike, *, executor: str = "local",
              workers: Optional[int] = None, device: Optional[str] = None, force: bool = False,
              progress: bool = True, stream: Optional[TextIO] = None, command: Optional[list[str]] = None,
              started: Optional[float] = None) -> RunSummary:
    """Validate the suite at ``path`` and run it into ``out`` (the library form of ``l2obench run``)."""
    from .registry import get_registry

    get_registry().get("executor", executor)
    suite = load_suite(path)
    return Runner(suite, out, device=device, force=force).run(executor, workers, progress, stream, command,
                                                               started=started)
