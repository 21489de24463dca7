"""The runner: a suite's cells, run in dependency order on an executor, resumable.

A suite expands to three kinds of cells:

- **meta-train** ``meta-train lstm-base``: meta-train a learned optimizer
  (:func:`l2obench.metatrain.meta_train`), keep its checkpoint in ``DIR/checkpoints/``;
- **tune** ``tune adam[lr=0.01] @ mnist-mlp[hidden=40] @ T=200``: one point of a
  baseline's grid on the validation optimizees of one task variant, run to the
  variant's longest horizon (a shorter horizon reads the same trajectory's prefix);
- **test** ``adam[lr=0.03] @ mnist-mlp[hidden=40] @ T=100``: an optimizer on the test
  optimizees of a variant; a baseline with the settings its tuning cells chose for
  that horizon, a learned optimizer with its meta-trained checkpoint.  Test cells
  that differ only in their horizon (a learned optimizer at T=100 and T=1000, or a
  baseline whose tuning chose the same settings for both) run once, to the longest;
  the shorter ones are read from its prefix, which is the same trajectory (a
  seed's minibatches and an optimizer's steps do not depend on how long it runs).

Every cell runs all its seeds in one batched :func:`l2obench.evaluate.run`.  A
finished cell is written at once and atomically to ``DIR/cells/<key>.parquet``,
``key`` a hash of the cell's normalised config (its id, the full task config with
defaults, all hyperparameters, seeds, split, horizon, device, the meta-training
cell or checkpoint it uses) and the versions of the plugins involved; a rerun
skips finished cells, so a crash, Ctrl-C or SIGKILL loses only the cells in
flight, and editing a suite reruns only the cells whose definition changed.

``l2obench run`` prints how the wall time was spent: the time during which at
least one optimizer step (inside :func:`~l2obench.evaluate.run` or
:func:`~l2obench.metatrain.meta_train`) was running, against the wall time since
the command started; the rest is start-up, scheduling, loading and writing.

Cells run on an *executor* (plugin kind ``"executor"``, hook
``register_executors``): ``factory(workers) -> executor`` with
``submit(fn, *args) -> concurrent.futures.Future`` and ``shutdown(cancel=False)``.
Everything sent to an executor is plain data (and checkpoint bytes), so workers
need no shared file system.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TextIO

from . import store
from .errors import L2OError
from .suite import LearnedSpec, OptimizerSpec, Suite, TaskVariant, load_suite


# -- cells ---------------------------------------------------------------------------

def cell_key(kind: str, spec: dict[str, Any]) -> str:
    """A short stable hash of what defines a cell's result."""
    blob = json.dumps({"kind": kind, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Cell:
    """One unit of work: ``spec`` is plain JSON-ready data, everything that defines the
    result (and the input of ``key``); ``needs`` names learned optimizers whose
    meta-training must finish first."""

    kind: str
    id: str
    spec: dict[str, Any]
    needs: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return cell_key(self.kind, self.spec)


def _task_spec(task: TaskVariant) -> dict[str, Any]:
    return {"id": task.id, "family": task.family, "config": task.config, "version": task.version}


def _baseline_spec(opt: OptimizerSpec) -> dict[str, Any]:
    return {"name": opt.name, "id": opt.id, "kind": "baseline", "plugin": opt.name, "params": opt.params,
            "version": opt.version}


def _learned_spec(spec: LearnedSpec, source: str) -> dict[str, Any]:
    return {"name": spec.name, "id": spec.id, "kind": "learned", "plugin": spec.plugin, "params": spec.params,
            "version": spec.version, "source": source}


def evaluation_cell(kind: str, optimizer: dict[str, Any], task: TaskVariant, horizon: int, split: str,
                    seeds: list[int], device: str, needs: tuple[str, ...] = ()) -> Cell:
    prefix = "tune " if kind == "tune" else ""
    spec = {"optimizer": optimizer, "task": _task_spec(task), "horizon": horizon, "split": split,
            "seeds": list(seeds), "device": device}
    return Cell(kind, f"{prefix}{optimizer['id']} @ {task.id} @ T={horizon}", spec, needs)


def meta_train_cell(spec: LearnedSpec, device: str) -> Cell:
    body = {"name": spec.name, "plugin": spec.plugin, "params": spec.params, "version": spec.version,
            "task": _task_spec(spec.task), "train": spec.train, "device": device}
    return Cell("meta-train", f"meta-train {spec.name}", body)


def share_prefixes(cells: list[Cell], done: set[str]) -> dict[str, list[Cell]]:
    """The test cells of ``cells`` not in ``done``, grouped by everything but their horizon:
    ``{key of the longest: the shorter ones, read from its prefix}``; every other cell
    not done maps to ``[]``."""
    families: dict[str, dict[str, Cell]] = {}
    for cell in cells:
        if cell.key not in done:
            family = cell_key(cell.kind, {**cell.spec, "horizon": None}) if cell.kind == "test" else cell.key
            families.setdefault(family, {})[cell.key] = cell
    plan = {}
    for members in families.values():
        *shorter, longest = sorted(members.values(), key=lambda c: c.spec.get("horizon", 0))
        plan[longest.key] = shorter
    return plan


def prefix_result(result: dict[str, Any], horizon: int) -> dict[str, Any]:
    """A finished evaluation's raw results cut to its first ``horizon`` steps (timings, those
    of the run they come from)."""
    import numpy as np

    diverged = np.asarray(result["diverged_at"])
    return {**result, "losses": np.array(result["losses"][:, :horizon]),
            "diverged_at": np.where(diverged < horizon, diverged, -1)}


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


# -- what runs in a worker -------------------------------------------------------------

def execute_cell(kind: str, spec: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """Run one cell (in a worker process) and return its raw results as plain data.

    ``runtime`` carries what is not part of the cell's identity: torch threads and
    the bytes of a learned optimizer's checkpoint."""
    import torch

    started = time.time()
    threads = runtime.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    if kind == "meta-train":
        out = _meta_train(spec)
    else:
        out = _evaluate(spec, runtime)
    out["wall_time"] = time.time() - started
    return out


def _evaluate(spec: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from .evaluate import run
    from .registry import get_registry

    reg = get_registry()
    device = spec["device"]
    task = reg.task(spec["task"]["family"], **spec["task"]["config"])
    opt_spec = spec["optimizer"]
    checkpoint = ""
    if opt_spec["kind"] == "baseline":
        optimizer = reg.optimizer(opt_spec["plugin"], **opt_spec["params"])
    else:
        lopt, info = _load_checkpoint_bytes(runtime["checkpoint"])
        lopt.to(device)
        lopt.eval()
        optimizer = lopt.opt_fn(task.groups)
        checkpoint = info.content_hash
    t0 = time.time()
    traj = run(optimizer, task, spec["seeds"], spec["horizon"], spec["split"], device)
    t1 = time.time()
    return {"losses": traj.losses.double().numpy(), "diverged_at": traj.diverged_at.numpy().astype(np.int64),
            "compute": (t0, t1), "checkpoint": checkpoint}


def _load_checkpoint_bytes(data: bytes):
    from .checkpoint import load_checkpoint

    fd, name = tempfile.mkstemp(suffix=".safetensors", prefix="l2obench-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return load_checkpoint(name)
    finally:
        os.unlink(name)


def _meta_train(spec: dict[str, Any]) -> dict[str, Any]:
    from .checkpoint import save_checkpoint
    from .metatrain import MetaTrainConfig, meta_train
    from .registry import get_registry

    import torch

    reg = get_registry()
    config = MetaTrainConfig.from_params(**spec["train"])
    torch.manual_seed(config.seed)  # the initial meta-parameters too: the same seed, the same optimizer
    lopt = reg.learned(spec["plugin"], **spec["params"])
    task = reg.task(spec["task"]["family"], **spec["task"]["config"])
    t0 = time.time()
    result = meta_train(lopt, task, config, device=spec["device"], progress=False)
    t1 = time.time()
    training = {"suite_cell": spec["name"], "task": spec["task"], "config": config.describe(),
                "best_epoch": result.best_epoch, "best_val": result.best_val, "skipped": result.skipped,
                "stopped": result.stopped, "optimizee_steps": result.optimizee_steps}
    fd, name = tempfile.mkstemp(suffix=".safetensors", prefix="l2obench-")
    os.close(fd)
    try:
        digest = save_checkpoint(name, lopt.cpu(), spec["plugin"], training)
        data = Path(name).read_bytes()
    finally:
        os.unlink(name)
    history = [(r["episode"], float(r["meta_loss"])) for r in result.history]
    validation = sorted(result.validation.items())
    return {"history": history, "validation": validation, "seed": config.seed, "compute": (t0, t1),
            "checkpoint": digest, "checkpoint_bytes": data, "horizon": config.horizon}


# -- rows --------------------------------------------------------------------------

def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _versions(*origins: str) -> str:
    """``"l2obench 0.1.0"``, ... -> ``{"l2obench": "0.1.0"}`` as JSON."""
    return _json(dict(o.rsplit(" ", 1) if " " in o else (o, "?") for o in origins))


def _task_columns(task: dict[str, Any]) -> dict[str, Any]:
    cols = {}
    for k, v in task["config"].items():
        name = f"task_{k}" if k in store.COLUMNS else k
        cols[name] = v if isinstance(v, (int, float, str, bool)) or v is None else _json(v)
    return cols


def cell_frame(cell: Cell, result: dict[str, Any]):
    """The tidy rows of a finished cell (see :data:`l2obench.store.COLUMNS`)."""
    import numpy as np
    import pandas as pd

    spec = cell.spec
    compute = result["compute"][1] - result["compute"][0]
    if cell.kind == "meta-train":
        steps = [e for e, _ in result["history"]] + [e for e, _ in result["validation"]]
        values = [v for _, v in result["history"]] + [v for _, v in result["validation"]]
        metrics = ["meta_loss"] * len(result["history"]) + ["validation_loss"] * len(result["validation"])
        n = len(values)
        cols: dict[str, Any] = {
            "cell_id": cell.id, "cell_key": cell.key, "kind": cell.kind, "optimizer": spec["name"],
            "optimizer_id": spec["name"], "optimizer_kind": "learned", "optimizer_plugin": spec["plugin"],
            "optimizer_params": _json(spec["params"]), "lr": math.nan, "task": spec["task"]["id"],
            "family": spec["task"]["family"], "task_config": _json(spec["task"]["config"]),
            "horizon": int(result["horizon"]), "split": "train", "seed": int(result["seed"]),
            "step": np.asarray(steps, dtype=np.int64), "metric": metrics,
            "loss": np.asarray(values, dtype=np.float64), "status": "ok", "diverged_step": -1,
            "checkpoint": result["checkpoint"], "device": spec["device"],
            "wall_time": float(result["wall_time"]), "compute_time": compute,
            "versions": _versions(spec["version"], spec["task"]["version"]),
        }
        frame = pd.DataFrame({k: (v if not np.isscalar(v) and not isinstance(v, str) else [v] * n)
                              for k, v in cols.items()}) if n else pd.DataFrame(columns=list(cols))
        for k, v in _task_columns(spec["task"]).items():
            frame[k] = v
        return frame
    losses = result["losses"]
    S, T = losses.shape
    seeds = np.asarray(spec["seeds"], dtype=np.int64)
    diverged = np.asarray(result["diverged_at"], dtype=np.int64)
    opt = spec["optimizer"]
    lr = opt["params"].get("lr") if opt["kind"] == "baseline" else None
    frame = pd.DataFrame({
        "cell_id": cell.id, "cell_key": cell.key, "kind": cell.kind, "optimizer": opt["name"],
        "optimizer_id": opt["id"], "optimizer_kind": opt["kind"], "optimizer_plugin": opt["plugin"],
        "optimizer_params": _json(opt["params"]), "lr": float(lr) if isinstance(lr, (int, float)) else math.nan,
        "task": spec["task"]["id"], "family": spec["task"]["family"], "task_config": _json(spec["task"]["config"]),
        "horizon": int(spec["horizon"]), "split": spec["split"],
        "seed": np.repeat(seeds, T), "step": np.tile(np.arange(T, dtype=np.int64), S), "metric": "loss",
        "loss": losses.reshape(-1), "status": np.repeat(np.where(diverged >= 0, "diverged", "ok"), T),
        "diverged_step": np.repeat(diverged, T), "checkpoint": result.get("checkpoint", ""),
        "device": spec["device"], "wall_time": float(result["wall_time"]), "compute_time": compute,
        "versions": _versions(opt["version"], spec["task"]["version"]),
    })
    for k, v in _task_columns(spec["task"]).items():
        frame[k] = v
    return frame


def _loss_matrix(directory: Path, key: str):
    """``(seeds, steps)`` losses of a finished evaluation cell, seeds in the cell's order."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(store.cell_path(directory, key), columns=["seed", "step", "loss"])
    seed, step, loss = (table.column(c).to_numpy() for c in ("seed", "step", "loss"))
    seeds, rows = np.unique(seed, return_inverse=True)
    order = np.argsort(np.unique(seed, return_index=True)[1])  # first-appearance order
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    out = np.full((len(seeds), int(step.max()) + 1), np.nan)
    out[rank[rows], step] = loss
    return out


# -- the plan and the run -------------------------------------------------------------

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


def _union_length(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    total, end = 0.0, lo
    for a, b in sorted(intervals):
        a, b = max(a, end, lo), min(b, hi)
        if b > a:
            total += b - a
            end = b
    return total


class Runner:
    """Plans a suite's cells against a run directory and runs those not done yet."""

    def __init__(self, suite: Suite, out: str | os.PathLike, *, device: Optional[str] = None, force: bool = False):
        self.suite = suite
        self.out = Path(out)
        self.device = device or suite.model.suite.device or "cpu"
        self.force = force
        self._losses: dict[str, Any] = {}
        self.tuning: dict[str, Any] = {}
        self._plan()

    # -- planning ------------------------------------------------------------------
    def _plan(self) -> None:
        s, dev = self.suite, self.device
        self.meta: dict[str, Cell] = {}
        self.sources: dict[str, str] = {}
        for name, spec in s.learned.items():
            if spec.train is not None:
                cell = meta_train_cell(spec, dev)
                self.meta[name] = cell
                self.sources[name] = f"meta-train:{cell.key}"
            else:
                self.sources[name] = f"checkpoint:{spec.checkpoint_hash}"
        self.groups: dict[tuple[str, str, int], TuneGroup] = {}
        self.learned_tests: list[Cell] = []
        self.baseline_tests: list[tuple[tuple[str, str, int], int]] = []
        seen_tests: set[str] = set()
        # A baseline is tuned once per task variant, to the longest horizon any [[test]] entry
        # asks of it there; entries that overlap share their cells.
        longest: dict[tuple[str, str], int] = {}
        for tv in s.tests:
            for name in tv.optimizers:
                key = (name, tv.task.id)
                longest[key] = max(longest.get(key, 0), *tv.horizons)
        for tv in s.tests:
            for name in tv.optimizers:
                if name in s.learned:
                    opt = _learned_spec(s.learned[name], self.sources[name])
                    needs = (name,) if name in self.meta else ()
                    for h in tv.horizons:
                        cell = evaluation_cell("test", opt, tv.task, h, "test", s.test_seeds, dev, needs)
                        if cell.key not in seen_tests:
                            seen_tests.add(cell.key)
                            self.learned_tests.append(cell)
                    continue
                hmax = longest[(name, tv.task.id)]
                gkey = (name, tv.task.id, hmax)
                group = self.groups.get(gkey)
                if group is None:
                    specs = s.baselines[name]
                    cells = [evaluation_cell("tune", _baseline_spec(o), tv.task, hmax, "validation",
                                             s.validation_seeds, dev) for o in specs]
                    group = self.groups[gkey] = TuneGroup(name, tv.task, hmax, specs, cells)
                for h in tv.horizons:
                    if h not in group.horizons:
                        group.horizons.append(h)
                        self.baseline_tests.append((gkey, h))
        self.done = set() if self.force else store.done_keys(self.out)
        for name, cell in self.meta.items():
            if cell.key in self.done and not self._checkpoint_ok(name, cell):
                self.done.discard(cell.key)
        self.chosen: dict[tuple[tuple[str, str, int], int], Cell] = {}
        for gkey, group in self.groups.items():
            if all(c.key in self.done for c in group.cells):
                self._choose(gkey)

    def _checkpoint_ok(self, name: str, cell: Cell) -> bool:
        """A meta-train cell counts as done only with its checkpoint on disk, unchanged."""
        path = self.checkpoint_path(name)
        if not path.exists():
            return False
        try:
            frame = store.read_cell(self.out, cell.key, ["checkpoint"])
            from .checkpoint import read_checkpoint

            _, info = read_checkpoint(path)
        except (L2OError, OSError, ValueError):
            return False
        return len(frame) > 0 and info.content_hash == frame["checkpoint"].iloc[0]

    def checkpoint_path(self, name: str) -> Path:
        return self.out / store.CHECKPOINTS / f"{name}.safetensors"

    def _choose(self, gkey) -> list[Cell]:
        """Once a tuning group is complete: the baseline's test cells with the chosen settings."""
        group = self.groups[gkey]
        for c in group.cells:  # cells finished by an earlier, interrupted run are read back
            if c.key not in self._losses:
                self._losses[c.key] = _loss_matrix(self.out, c.key)
        new = []
        for h in group.horizons:
            best, scores = choose(group, self._losses, h, self.suite.tune_rule)
            opt = group.specs[best]
            cell = evaluation_cell("test", _baseline_spec(opt), group.task, h, "test", self.suite.test_seeds,
                                   self.device)
            self.chosen[(gkey, h)] = cell
            self.tuning[f"{group.baseline} @ {group.task.id} @ T={h}"] = {
                "baseline": group.baseline, "task": group.task.id, "horizon": h, "rule": self.suite.tune_rule,
                "chosen": opt.id, "params": opt.written,
                "scores": {o.id: sc for o, sc in zip(group.specs, scores)}}
            new.append(cell)
        return new

    def all_known_cells(self) -> list[Cell]:
        cells = list(self.meta.values())
        for g in self.groups.values():
            cells += g.cells
        return cells + self.learned_tests + list(self.chosen.values())

    def count(self) -> tuple[int, int]:
        """(cells done, cells to run), counting baseline test cells still waiting for tuning."""
        known = self.all_known_cells()
        done = sum(c.key in self.done for c in known)
        waiting = sum(1 for k in self.baseline_tests if k not in self.chosen)
        return done, len(known) - done + waiting

    def describe(self) -> list[str]:
        """One line per cell, in run order, with its state (for ``--dry-run``)."""
        lines = []
        read_from = {r.key: long for long, riders in
                     share_prefixes(self.learned_tests + list(self.chosen.values()), self.done).items()
                     for r in riders}

        def line(cell: Cell, note: str = "") -> None:
            state = "done  " if cell.key in self.done else "to run"
            if cell.key in read_from:
                note += f"  (read from the first {cell.spec['horizon']} steps of [{read_from[cell.key]}])"
            lines.append(f"{state}  {cell.id}  [{cell.key}]{note}")

        for cell in self.meta.values():
            line(cell)
        for g in self.groups.values():
            for c in g.cells:
                line(c)
        for c in self.learned_tests:
            line(c)
        for gkey, h in self.baseline_tests:
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

        ``pool`` is an executor already started (by :func:`start_executor`, so its
        workers warm up while the suite is validated); it is shut down at the end.
        ``started`` is when the wall-time clock started (default: now)."""
        from tqdm.auto import tqdm

        workers = max(1, workers or default_workers())
        started = time.time() if started is None else started
        stream = sys.stdout if stream is None else stream
        done_before, to_run = self.count()
        print(f"{self.suite.name}: {done_before} cells done already, {to_run} to run"
              + (" (--force: recomputing all)" if self.force else ""), file=stream, flush=True)
        self.out.mkdir(parents=True, exist_ok=True)
        store.remove_leftovers(self.out)
        manifest = self._manifest(executor, workers, command, started)
        store.write_manifest(self.out, manifest)
        failures: list[tuple[str, str]] = []
        compute: list[tuple[float, float]] = []
        ran = 0
        if not to_run and pool is not None:
            pool.shutdown(cancel=True)
        if to_run:
            bar = tqdm(total=to_run, unit="cell", dynamic_ncols=True, disable=not progress, file=sys.stderr,
                       desc=self.suite.name)
            if pool is None:
                pool = start_executor(executor, workers)
            futures: dict[cf.Future, Cell] = {}
            failed_names: set[str] = set()
            threads = getattr(pool, "threads", None)
            group_of: dict[str, list] = {}
            for gkey, group in self.groups.items():
                for c in group.cells:
                    group_of.setdefault(c.key, []).append(gkey)

            riders: dict[str, list[Cell]] = {}  # key of a cell running: cells read from its prefix

            def submit(cells: list[Cell]) -> None:
                plan = share_prefixes(cells, self.done)
                for cell in cells:
                    if cell.key not in plan:
                        continue
                    riders[cell.key] = plan.pop(cell.key)
                    runtime: dict[str, Any] = {"threads": threads}
                    if cell.kind == "test" and cell.spec["optimizer"]["kind"] == "learned":
                        runtime["checkpoint"] = self._checkpoint_bytes(cell.spec["optimizer"]["name"])
                    futures[pool.submit(execute_cell, cell.kind, cell.spec, runtime)] = cell

            def ready_learned(names) -> None:
                submit([cell for cell in self.learned_tests
                        if set(cell.needs) & names and all(self.meta[n].key in self.done for n in cell.needs)])

            try:
                submit(list(self.meta.values()))
                for gkey, group in self.groups.items():
                    if any(c.key not in self.done for c in group.cells):
                        submit(group.cells)
                    else:
                        submit([self.chosen[(gkey, h)] for h in group.horizons])
                submit([cell for cell in self.learned_tests if all(self.meta[n].key in self.done for n in cell.needs)])
                while futures:
                    finished, _ = cf.wait(list(futures), return_when=cf.FIRST_COMPLETED)
                    for fut in finished:
                        cell = futures.pop(fut)
                        shorter = riders.pop(cell.key, [])
                        try:
                            result = fut.result()
                        except Exception as exc:  # a bug or a bad plugin: report, keep going
                            failures += [(c.id, _one_line(exc)) for c in [*shorter, cell]]
                            if cell.kind == "meta-train":
                                failed_names.add(cell.spec["name"])
                            bar.update(1 + len(shorter))
                            continue
                        for c in shorter:
                            self._finish(c, prefix_result(result, c.spec["horizon"]))
                        self._finish(cell, result)
                        compute.append(tuple(result["compute"]))
                        ran += 1 + len(shorter)
                        bar.set_description_str(_short(cell.id), refresh=False)
                        bar.update(1 + len(shorter))
                        if cell.kind == "meta-train":
                            ready_learned({cell.spec["name"]})
                        elif cell.kind == "tune":
                            for gkey in group_of[cell.key]:
                                group = self.groups[gkey]
                                if all(c.key in self.done for c in group.cells) \
                                        and (gkey, group.horizons[0]) not in self.chosen:
                                    new = self._choose(gkey)
                                    bar.update(sum(c.key in self.done for c in new))
                                    submit(new)
                        known = [c.key for c in self.all_known_cells()]
                        if known != manifest["cells"]:
                            manifest["cells"], manifest["tuning"] = known, self.tuning
                            store.write_manifest(self.out, manifest)
            except BaseException:
                pool.shutdown(cancel=True)
                bar.close()
                raise
            pool.shutdown()
            bar.close()
        keys = [c.key for c in self.all_known_cells()]
        store.combine(self.out, keys)
        ended = time.time()
        summary = RunSummary(self.out, done_before, ran, failures, ended - started,
                             _union_length(compute, started, ended), sum(b - a for a, b in compute), workers)
        manifest.update({
            "status": "complete" if not failures and len(keys) == len(set(keys) & store.done_keys(self.out))
            else "incomplete",
            "ended": store.now(), "cells": keys, "tuning": self.tuning,
            "failures": [{"cell": c, "error": e} for c, e in failures],
            "timing": {"wall_s": summary.wall_s, "optimizer_steps_s": summary.compute_union_s,
                       "optimizer_steps_summed_s": summary.compute_sum_s,
                       "outside_fraction": summary.outside_fraction, "workers": workers, "cells_run": ran}})
        store.write_manifest(self.out, manifest)
        return summary

    def _checkpoint_bytes(self, name: str) -> bytes:
        spec = self.suite.learned[name]
        path = spec.checkpoint if spec.checkpoint is not None else self.checkpoint_path(name)
        return Path(path).read_bytes()

    def _finish(self, cell: Cell, result: dict[str, Any]) -> None:
        """Write a finished cell: checkpoint first, then the rows (the rows mark it done)."""
        if cell.kind == "meta-train":
            store.atomic_write_bytes(self.checkpoint_path(cell.spec["name"]), result.pop("checkpoint_bytes"))
        frame = cell_frame(cell, result)
        store.write_cell(self.out, cell.key, frame)
        self.done.add(cell.key)
        if cell.kind == "tune":
            self._losses[cell.key] = result["losses"]

    def _manifest(self, executor: str, workers: int, command, started: float) -> dict[str, Any]:
        import platform

        import torch

        from . import __version__
        from .registry import get_registry

        plugins = sorted({(e.distribution, e.version) for e in get_registry().all_entries()})
        return {
            "suite": self.suite.name, "suite_file": str(self.suite.path), "suite_sha256": self.suite.sha256,
            "suite_text": self.suite.text, "description": self.suite.model.suite.description,
            "references": self.suite.references, "status": "running",
            "variants": [{"task": tv.task.id, "family": tv.task.family, "horizons": list(tv.horizons),
                          "optimizers": list(tv.optimizers), "entry": tv.entry, "config": tv.task.config}
                         for tv in self.suite.tests],
            "baselines": list(self.suite.baselines), "learned": list(self.suite.learned),
            "tune_rule": self.suite.tune_rule, "test_seeds": self.suite.test_seeds,
            "validation_seeds": self.suite.validation_seeds,
            "versions": {"l2obench": __version__, "torch": torch.__version__, "python": platform.python_version(),
                         "plugins": {d: v for d, v in plugins}},
            "device": self.device, "executor": executor, "workers": workers,
            "host": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "command": command if command is not None else sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)), "ended": None,
            "cells": [c.key for c in self.all_known_cells()], "tuning": self.tuning,
        }


def default_workers() -> int:
    """Cells at once by default: one per core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def start_executor(name: str, workers: Optional[int] = None):
    """Start the registered executor ``name`` with ``workers`` workers (default: one per core)."""
    from .registry import get_registry

    return get_registry().get("executor", name).obj(max(1, workers or default_workers()))


def process_started() -> float:
    """When this command started (epoch seconds, :data:`l2obench.cli.STARTED`), so its wall
    time includes its start-up; now, if this process is not the ``l2obench`` command (e.g. a
    test calling ``main``)."""
    from . import cli

    argv0 = Path(sys.argv[0])
    if argv0.name != "l2obench" and argv0.resolve() != Path(cli.__file__).resolve():
        return time.time()
    return cli.STARTED


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def run_suite(path: str | os.PathLike, out: str | os.PathLike, *, executor: str = "local",
              workers: Optional[int] = None, device: Optional[str] = None, force: bool = False,
              progress: bool = True, stream: Optional[TextIO] = None,
              command: Optional[list[str]] = None) -> RunSummary:
    """Validate the suite at ``path`` and run it into ``out`` (the library form of ``l2obench run``)."""
    from .registry import get_registry

    get_registry().get("executor", executor)
    suite = load_suite(path)
    return Runner(suite, out, device=device, force=force).run(executor, workers, progress, stream, command)
