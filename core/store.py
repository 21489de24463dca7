"""The results store: one tidy long table in a run directory (benchopt's parquet).

Layout of a run directory ``DIR``::

    DIR/manifest.json        what ran: suite text and hash, versions, device, times, the cells
    DIR/cells/<key>.parquet  one file per finished cell, written atomically
    DIR/checkpoints/         meta-trained optimizers (safetensors)
    DIR/artifacts/<key>/     images a renderable task's test cell left (l2obench.artifacts)
    DIR/results.parquet      every cell of the suite in one file, written at the end
    DIR/.lock                held by the ``l2obench run`` writing into DIR (its pid)

Every parquet file carries a sha256 of its rows in its metadata (:data:`l2obench.cellfile.CHECKSUM`),
and is verified when read (:func:`verify_cell`): a truncated, empty or garbled cell
file is never trusted; the runner recomputes it and :func:`load_results` leaves it
out, each with a one-line warning.

A row is one (cell, seed, step, metric): ``loss`` rows (the minibatch loss, every
step) for tuning (``kind = "tune"``, split validation) and test (``kind = "test"``)
cells, and, for tasks with held-out data, ``heldout_loss``, ``heldout_accuracy``, ...
rows at the steps they were evaluated (on the cell's split's evaluation set: validation
for tuning, test for test cells); ``meta_loss`` and ``validation_loss`` rows for
meta-training cells.  The columns are listed
in :data:`COLUMNS`; every task config parameter is a column too (``dim``,
``hidden``, ``activation``, ...; one that clashes with a column above is
prefixed ``task_``).  Reports read this table and the manifest only.

The columns are declared once, in :data:`COLUMNS`, and :func:`cell_frame` builds a
finished cell's rows against them.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

from .atomic import atomic_write_bytes
from .cells import Cell, CellKind, OptimizerKind
from .cellfile import CorruptFile, read_verified, write_table
from .errors import ConfigError, L2OWarning

#: The fixed columns of the results table, with what they hold.
COLUMNS: dict[str, str] = {
    "cell_id": "readable id, e.g. 'adam[lr=0.01] @ mnist-mlp[hidden=40] @ T=200'",
    "cell_key": "hash of the cell's normalised config and plugin versions (the file name)",
    "kind": "meta-train, tune or test",
    "optimizer": "baseline name (adam) or the suite's name of a learned optimizer",
    "optimizer_id": "the optimizer with its written settings, e.g. adam[lr=0.01]",
    "optimizer_kind": "baseline or learned",
    "optimizer_plugin": "the registered plugin (adam, lstm, ...)",
    "optimizer_params": "all hyperparameters, JSON",
    "lr": "the learning rate of a baseline (NaN for learned optimizers)",
    "task": "task variant id, e.g. mnist-mlp[hidden=40,activation=relu]",
    "family": "task family",
    "task_config": "the full task config with defaults, JSON",
    "horizon": "optimizer steps run (T)",
    "split": "train, validation or test",
    "seed": "optimizee seed (test: 0, 1, ...; validation: 1,000,000 + i)",
    "step": "step t = 0..T-1 (the loss f(theta_t)); for meta-train rows the episode or epoch",
    "metric": "loss (the minibatch's), heldout_loss, heldout_accuracy, ... (on the split's evaluation set), "
              "meta_loss or validation_loss",
    "loss": "the metric's value (NaN or inf after a divergence)",
    "status": "ok or diverged (per seed)",
    "diverged_step": "first non-finite step of this seed, -1 if none",
    "checkpoint": "content hash of the learned optimizer's checkpoint ('' for baselines)",
    "meta_seed": "the meta-training seed of a learned optimizer's checkpoint (-1 for baselines and where unknown)",
    "device": "where the cell ran",
    "wall_time": "seconds the cell took in its worker (a cell read from a longer run's prefix: that run's)",
    "compute_time": "seconds of it inside optimizer steps (evaluate.run / meta_train)",
    "elapsed": "seconds of optimizer steps before this step (held-out evaluation left out; NaN for meta-train rows)",
    "versions": "plugin distributions and versions involved, JSON",
}

CELLS = "cells"
CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
RESULTS = "results.parquet"
LOCK = ".lock"
#: The key of a parquet file's metadata that holds the sha256 of its rows.


# -- the rows of a finished cell -----------------------------------------------------

def _json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _versions(*origins: str) -> str:
    """``"l2obench 0.1.0"``, ... -> ``{"l2obench": "0.1.0"}`` as JSON."""
    return _json(dict(o.rsplit(" ", 1) if " " in o else (o, "?") for o in origins))


def _task_columns(task: dict[str, Any]) -> dict[str, Any]:
    """The task config's parameters as columns (``task_`` before a name that clashes)."""
    cols = {}
    for k, v in task["config"].items():
        name = f"task_{k}" if k in COLUMNS else k
        cols[name] = v if isinstance(v, (int, float, str, bool)) or v is None else _json(v)
    return cols


def cell_frame(cell: Cell, result: dict[str, Any]):
    """The tidy rows of a finished cell, :data:`COLUMNS` in order and then the task's.

    ``result`` is what :func:`l2obench.work.run_cell` returned: ``losses`` ``(seeds, steps)``
    and ``diverged_at`` for a tune or test cell, ``history`` and ``validation`` (episode,
    value) pairs for a meta-train cell."""
    import numpy as np

    spec = cell.spec
    if cell.kind is CellKind.META_TRAIN:
        opt = {"name": spec["name"], "id": spec.get("id", spec["name"]), "kind": OptimizerKind.LEARNED.value,
               "plugin": spec["plugin"], "params": spec["params"], "version": spec["version"]}
        history, validation = result["history"], result["validation"]
        rows = {"horizon": int(result["horizon"]), "split": "train", "seed": int(result["seed"]),
                "step": np.asarray([e for e, _ in history + validation], dtype=np.int64),
                "metric": ["meta_loss"] * len(history) + ["validation_loss"] * len(validation),
                "loss": np.asarray([v for _, v in history + validation], dtype=np.float64),
                "status": "ok", "diverged_step": -1}
        n = len(history) + len(validation)
    else:
        opt = spec["optimizer"]
        rows, n = _evaluation_rows(cell, result)
    lr = opt["params"].get("lr") if opt["kind"] == OptimizerKind.BASELINE else None
    values = {
        "cell_id": cell.id, "cell_key": cell.key, "kind": cell.kind.value, "optimizer": opt["name"],
        "optimizer_id": opt["id"], "optimizer_kind": opt["kind"], "optimizer_plugin": opt["plugin"],
        "optimizer_params": _json(opt["params"]), "lr": float(lr) if isinstance(lr, (int, float)) else math.nan,
        "task": spec["task"]["id"], "family": spec["task"]["family"], "task_config": _json(spec["task"]["config"]),
        **rows, "checkpoint": result.get("checkpoint", ""),
        "meta_seed": int(result["seed"] if cell.kind is CellKind.META_TRAIN else result.get("meta_seed", -1)),
        "device": spec["device"],
        "wall_time": float(result["wall_time"]), "compute_time": result["compute"][1] - result["compute"][0],
        "elapsed": rows.pop("elapsed", math.nan), "versions": _versions(opt["version"], spec["task"]["version"]),
    }
    return _frame(values, n, spec["task"])


def _evaluation_rows(cell: Cell, result: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A tune or test cell's columns that vary by row: its ``loss`` rows (every seed and step),
    then per held-out metric its rows at the cell's own steps of
    :func:`~l2obench.cells.heldout_schedule` (a longer run's result may hold more)."""
    import numpy as np

    from .cells import heldout_schedule

    spec = cell.spec
    losses = result["losses"]
    S, T = losses.shape
    seeds = np.asarray(spec["seeds"], dtype=np.int64)
    diverged = np.asarray(result["diverged_at"], dtype=np.int64)
    elapsed = result.get("elapsed")
    elapsed = np.full(T, np.nan) if elapsed is None else np.asarray(elapsed, dtype=np.float64)[:T]
    steps, metrics, values = [np.tile(np.arange(T, dtype=np.int64), S)], [np.full(S * T, "loss", dtype=object)], \
        [losses.reshape(-1)]
    seed_col = [np.repeat(seeds, T)]
    at = np.asarray(result.get("heldout_steps", []), dtype=np.int64)
    own = np.isin(at, heldout_schedule(spec)) & (at < T)
    for name, table in (result.get("heldout") or {}).items():
        table = np.asarray(table, dtype=np.float64)[:, own]
        E = table.shape[1]
        steps.append(np.tile(at[own], S))
        metrics.append(np.full(S * E, name, dtype=object))
        values.append(table.reshape(-1))
        seed_col.append(np.repeat(seeds, E))
    step = np.concatenate(steps)
    seed = np.concatenate(seed_col)
    per_seed = dict(zip(seeds.tolist(), diverged.tolist()))
    div = np.asarray([per_seed[s] for s in seed.tolist()], dtype=np.int64)
    return {"horizon": int(spec["horizon"]), "split": spec["split"], "seed": seed, "step": step,
            "metric": np.concatenate(metrics), "loss": np.concatenate(values),
            "status": np.where(div >= 0, "diverged", "ok"), "diverged_step": div, "elapsed": elapsed[step]}, len(step)


def _frame(values: dict[str, Any], n: int, task: dict[str, Any]):
    """``n`` rows with the columns of :data:`COLUMNS` (a scalar repeated, an array as is),
    then the task's columns."""
    import numpy as np
    import pandas as pd

    if values.keys() != COLUMNS.keys():
        missing, undeclared = sorted(COLUMNS.keys() - values.keys()), sorted(values.keys() - COLUMNS.keys())
        raise ValueError(f"rows do not match the results table's columns: missing {missing}, undeclared {undeclared}")
    if n:
        frame = pd.DataFrame({c: (values[c] if not np.isscalar(values[c]) and not isinstance(values[c], str)
                                  else [values[c]] * n) for c in COLUMNS})
    else:
        frame = pd.DataFrame(columns=list(COLUMNS))
    for k, v in _task_columns(task).items():
        frame[k] = v
    return frame


# -- the run directory ---------------------------------------------------------------

def cell_path(directory: str | os.PathLike, key: str) -> Path:
    return Path(directory) / CELLS / f"{key}.parquet"


def verify_cell(directory: str | os.PathLike, key: str) -> str | None:
    """``None`` when the cell file of ``key`` is whole, else what is wrong with it."""
    try:
        read_verified(cell_path(directory, key))
    except CorruptFile as exc:
        return str(exc)
    except FileNotFoundError:
        return "the file is missing"
    return None


def warn_corrupt(path: Path, reason: str, action: str) -> None:
    """The one-line warning about a corrupt file of a run directory."""
    warnings.warn(f"{path}: corrupt cell file, {reason}; {action}", L2OWarning, stacklevel=3)


def write_cell(directory: str | os.PathLike, key: str, frame) -> Path:
    """Write one finished cell's rows atomically, with their checksum."""
    import pyarrow as pa

    path = cell_path(directory, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_table(path, pa.Table.from_pandas(frame, preserve_index=False))
    return path


def read_cell(directory: str | os.PathLike, key: str, columns: list[str] | None = None):
    """A finished cell's rows as a DataFrame (verified: :class:`CorruptFile` if not whole)."""
    return read_verified(cell_path(directory, key), columns).to_pandas()


def read_losses(directory: str | os.PathLike, key: str):
    """``(seeds, steps)`` losses of a finished tune or test cell, seeds in the cell's order."""
    return read_curves(directory, key)["loss"][1]


def read_curves(directory: str | os.PathLike, key: str):
    """Every metric of a finished tune or test cell: ``{metric: (steps, (seeds, len(steps)) values)}``,
    seeds in the cell's order (see :func:`curves`)."""
    return curves(read_verified(cell_path(directory, key), ["seed", "step", "metric", "loss"]).to_pandas())


def curves(frame) -> dict[str, Any]:
    """A tune or test cell's rows as ``{metric: (steps, values)}``: the steps recorded, ascending,
    and ``(seeds, len(steps))`` values, seeds in first-appearance order (NaN where a seed
    has no row)."""
    import numpy as np

    seed = frame["seed"].to_numpy()
    order = list(dict.fromkeys(seed.tolist()))
    row_of = {s: i for i, s in enumerate(order)}
    out = {}
    for metric, g in frame.groupby("metric", sort=False):
        steps = np.unique(g["step"].to_numpy())
        col = {int(t): j for j, t in enumerate(steps)}
        values = np.full((len(order), len(steps)), np.nan)
        values[[row_of[s] for s in g["seed"].tolist()], [col[int(t)] for t in g["step"].tolist()]] = \
            g["loss"].to_numpy(dtype=float)
        out[str(metric)] = (steps, values)
    return out


def done_keys(directory: str | os.PathLike) -> set[str]:
    """Keys of the cells finished in ``directory`` (leftover temporary files ignored)."""
    cells = Path(directory) / CELLS
    if not cells.is_dir():
        return set()
    return {p.name[: -len(".parquet")] for p in cells.iterdir()
            if p.name.endswith(".parquet") and not p.name.startswith(".")}


def remove_leftovers(directory: str | os.PathLike) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
    n = 0
    for sub in (CELLS, CHECKPOINTS):
        folder = Path(directory) / sub
        if folder.is_dir():
            for p in folder.glob(".*.tmp-*"):
                p.unlink(missing_ok=True)
                n += 1
    return n


def check_writable(directory: str | os.PathLike, where: str = "--out") -> None:
    """Refuse, in one line, a run directory l2obench cannot create or write (a file, a path
    under a file, a read-only or virtual file system): it is created, a probe file is
    written and removed, and what this created is removed again."""
    directory = Path(directory)
    created = []
    try:
        for parent in [*reversed(directory.parents), directory]:
            if not parent.exists():
                parent.mkdir()
                created.append(parent)
            elif not parent.is_dir():
                raise NotADirectoryError(f"{parent} is a file, not a directory")
        probe = directory / f".l2obench-probe-{os.getpid()}"
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as exc:
        reason = f"{exc.strerror}: {exc.filename}" if exc.strerror and exc.filename else exc.strerror or str(exc)
        raise ConfigError(f"{where} {str(directory)!r}: cannot write a run directory there ({reason}); "
                          f"give a directory path that can be created and written") from None
    finally:
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir()


@contextlib.contextmanager
def run_lock(directory: str | os.PathLike) -> Iterator[None]:
    """Hold ``DIR/.lock`` (an exclusive ``flock``, the holder's pid inside) while a run
    writes into ``DIR``; a second run is refused in one line naming the holder.  The
    lock of a process that died is released by the system, so it is simply taken over."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    path = Path(directory) / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise ConfigError(f"--out {str(directory)!r} is in use by another `l2obench run` (pid {holder}); "
                              f"wait for it to finish, or give another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def write_manifest(directory: str | os.PathLike, manifest: dict[str, Any]) -> None:
    atomic_write_bytes(Path(directory) / MANIFEST, json.dumps(manifest, indent=2, default=str).encode())


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{directory}: no {MANIFEST}; is this a directory written by `l2obench run`?") from None
    except ValueError:
        raise ConfigError(f"{path}: not valid JSON; rerun `l2obench run` to rewrite it") from None


def _read_cells(directory: Path, keys: Iterable[str]):
    """The given finished cells as one pyarrow Table (columns missing in a cell are nulls);
    a corrupt cell file is left out with a warning, a missing one silently."""
    import pyarrow as pa

    tables = []
    for key in keys:
        path = cell_path(directory, key)
        if not path.exists():
            continue
        try:
            tables.append(read_verified(path, unchecked_ok=True))
        except CorruptFile as exc:
            warn_corrupt(path, str(exc), "left out of the results (rerun `l2obench run` to recompute it)")
    if not tables:
        return pa.table({c: pa.array([], pa.null()) for c in COLUMNS})
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        # a task parameter with different types in different families: keep it as text
        types: dict[str, set] = {}
        for t in tables:
            for f in t.schema:
                if f.type != pa.null():
                    types.setdefault(f.name, set()).add(f.type)
        mixed = {name for name, ts in types.items() if len(ts) > 1}
        tables = [_as_text(t, mixed) for t in tables]
        return pa.concat_tables(tables, promote_options="permissive")


def _as_text(table, names: set[str]):
    import pyarrow as pa
    import pyarrow.compute as pc

    for i, f in enumerate(table.schema):
        if f.name in names and f.type != pa.string():
            table = table.set_column(i, f.name, pc.cast(table.column(i), pa.string()))
    return table


def combine(directory: str | os.PathLike, keys: Iterable[str]) -> int:
    """Concatenate the given cells into ``DIR/results.parquet`` (atomically); returns its rows."""
    directory = Path(directory)
    table = _read_cells(directory, keys)
    write_table(directory / RESULTS, table)
    return table.num_rows


def load_results(directory: str | os.PathLike):
    """The tidy results table of a run directory, as a pandas DataFrame.

    After a complete run this is ``results.parquet``; during or after an
    interrupted run, the finished cells the manifest lists (all cell files if
    there is no manifest), so partial results can be looked at any time.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"results directory {str(directory)!r} does not exist")
    manifest_path = directory / MANIFEST
    manifest = read_manifest(directory) if manifest_path.exists() else {}
    results = directory / RESULTS
    if manifest.get("status") == "complete" and results.exists():
        try:
            return read_verified(results, unchecked_ok=True).to_pandas()
        except CorruptFile as exc:
            warnings.warn(f"{results}: corrupt, {exc}; reading the cell files instead", L2OWarning, stacklevel=2)
    keys = manifest.get("cells") or sorted(done_keys(directory))
    if not keys and not (directory / CELLS).is_dir():
        raise ConfigError(f"{directory}: no results (neither {RESULTS} nor {CELLS}/); run `l2obench run` first")
    return _read_cells(directory, keys).to_pandas()

