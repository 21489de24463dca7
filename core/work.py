"""What runs in a worker: one cell, from plain data to raw results as plain data.

:func:`run_cell` is what the runner submits to an executor, whichever it is (the
built-in process pool or Ray, or a third-party plugin's).  It does the worker's
set-up itself (:func:`prepare_worker`), so an executor only has to call it, and
everything it receives and returns is plain picklable data (a learned optimizer's
checkpoint as bytes), so a worker needs no shared file system.  A meta-train cell also
saves its progress in the run directory, to resume after a crash; a worker that cannot
write there warns and trains on.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from .cells import CellKind, OptimizerKind, cell_key, heldout_schedule


def prepare_worker(threads: int | None = None) -> None:
    """What a process sets up before running cells, as the ``l2obench`` command does for
    itself: freed memory kept for reuse, one-line warnings, ``threads`` torch threads
    (``None``: torch's default), the installed plugins loaded.  Each step is done once
    per process, so calling it before every cell costs nothing after the first."""
    import torch

    from .errors import one_line_warnings
    from .memory import keep_freed_memory
    from .registry import get_registry

    keep_freed_memory()
    one_line_warnings()
    if threads and torch.get_num_threads() != int(threads):
        torch.set_num_threads(int(threads))
    get_registry()


def run_cell(kind: CellKind, spec: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """Run one cell and return its raw results as plain data (``wall_time`` included).

    ``runtime`` carries what is not part of the cell's identity: ``threads``, the
    executor's torch threads per cell; ``checkpoint``, the bytes of a learned
    optimizer's checkpoint for a test cell; ``run_dir``, the run directory, where a
    meta-train cell keeps its progress (:func:`progress_path`); ``heldout_steps``, the
    steps to record held-out metrics at, when cells read from this one's prefix need
    more than its own (:func:`~l2obench.cells.heldout_schedule`)."""
    prepare_worker(runtime.get("threads"))
    started = time.time()
    if CellKind(kind) is CellKind.META_TRAIN:
        run_dir = runtime.get("run_dir")
        out = run_meta_training(spec, progress_path(run_dir, cell_key(kind, spec)) if run_dir else None)
    else:
        out = run_evaluation(spec, {**runtime, "render": CellKind(kind) is CellKind.TEST})
    out["wall_time"] = time.time() - started
    return out


#: The folder of a run directory where meta-train cells keep their progress while they run.
PROGRESS = "progress"


def progress_path(run_dir: str | os.PathLike, key: str) -> Path:
    """Where the meta-train cell ``key`` of the run in ``run_dir`` saves its progress
    (:func:`l2obench.metatrain.meta_train`'s ``progress_file``) until it is written."""
    return Path(run_dir) / PROGRESS / f"{key}.pt"


def run_evaluation(spec: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """A tune or test cell: every seed in one batched :func:`l2obench.evaluate.run`.  With
    ``runtime["render"]`` (a test cell), a :class:`~l2obench.task.Renderable` task's final
    images come back as ``artifacts`` (file name -> bytes, :mod:`l2obench.artifacts`)."""
    import numpy as np

    from .artifacts import render_artifacts
    from .evaluate import run
    from .registry import get_registry
    from .resolve import resolve_optimizer
    from .task import Renderable

    reg = get_registry()
    device = spec["device"]
    task = reg.task(spec["task"]["family"], **spec["task"]["config"])
    opt = spec["optimizer"]
    if opt["kind"] == OptimizerKind.BASELINE:
        resolved = resolve_optimizer(opt["plugin"], task, device, params=opt["params"], registry=reg)
    else:
        resolved = resolve_optimizer(runtime["checkpoint"], task, device, registry=reg)
    # held-out metrics at this cell's steps and at those of the cells read from its prefix
    steps = runtime.get("heldout_steps")
    steps = heldout_schedule(spec) if steps is None else steps
    t0 = time.time()
    traj = run(resolved.optimizer, task, spec["seeds"], spec["horizon"], spec["split"], device, heldout=steps)
    t1 = time.time()
    info = resolved.checkpoint
    out = {"losses": traj.losses.double().numpy(), "diverged_at": traj.diverged_at.numpy().astype(np.int64),
           "compute": (t0, t1), "checkpoint": info.content_hash if info else "",
           "meta_seed": meta_seed_of(info.training) if info else -1,
           "elapsed": traj.elapsed.numpy(), "heldout_steps": np.asarray(traj.heldout_steps, dtype=np.int64),
           "heldout": {k: v.double().numpy() for k, v in traj.heldout.items()}}
    if runtime.get("render") and isinstance(task, Renderable):
        out["artifacts"] = render_artifacts(task, traj.params, spec["seeds"],
                                            f"{opt['id']} @ {spec['task']['id']} @ T={spec['horizon']}")
    return out


def meta_seed_of(training: dict[str, Any]) -> int:
    """The meta-training seed a checkpoint's ``training`` record names (-1 if none)."""
    seed = (training.get("config") or {}).get("seed") if isinstance(training, dict) else None
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else -1


def meta_training_task(task: dict[str, Any], registry):
    """The Task of a meta-train cell's ``task``, or for a distribution (``grid``) a function
    ``generator -> Task`` drawing one of its variants uniformly (the same draws for the same
    generator state; each variant built once)."""
    if "grid" not in task:
        return registry.task(task["family"], **task["config"])
    import torch

    variants = [registry.task(task["family"], **config) for config in task["grid"]]

    def draw(generator: torch.Generator):
        return variants[int(torch.randint(len(variants), (), generator=generator))]

    return draw


def run_meta_training(spec: dict[str, Any], progress_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """A meta-train cell: the learned optimizer meta-trained from the config's seed, returned
    as checkpoint bytes with its meta-loss history and validation losses.

    With ``progress_file`` the training resumes from there and saves there every epoch
    (whoever writes the result removes it).  A meta-training that produced no trained
    optimizer raises :class:`~l2obench.errors.MetaTrainingError`, so its untrained
    initialisation is never tested as if trained."""
    from .checkpoint import checkpoint_bytes
    from .errors import MetaTrainingError
    from .metatrain import MetaTrainConfig, meta_train
    from .registry import get_registry
    from .resolve import learned_optimizer

    reg = get_registry()
    config = MetaTrainConfig.from_params(**spec["train"])
    # the initial meta-parameters too: the same seed, the same optimizer
    lopt = learned_optimizer(spec["plugin"], spec["params"], seed=config.seed, registry=reg)
    task = meta_training_task(spec["task"], reg)
    if progress_file is not None:  # what a write killed halfway left behind
        progress_file = Path(progress_file)
        for leftover in progress_file.parent.glob(f".{progress_file.name}.tmp-*"):
            leftover.unlink(missing_ok=True)
    t0 = time.time()
    result = meta_train(lopt, task, config, device=spec["device"], progress=False, progress_file=progress_file)
    t1 = time.time()
    if result.failure is not None:
        raise MetaTrainingError(f"meta-training of {spec['name']} failed: {result.failure}")
    training = {"suite_cell": spec["name"], "task": spec["task"], "config": config.describe(),
                "best_epoch": result.best_epoch, "best_val": result.best_val, "skipped": result.skipped,
                "stopped": result.stopped, "optimizee_steps": result.optimizee_steps}
    data, digest = checkpoint_bytes(lopt, training, registry=reg)
    history = [(r["episode"], float(r["meta_loss"])) for r in result.history]
    validation = sorted(result.validation.items())
    return {"history": history, "validation": validation, "seed": config.seed, "compute": (t0, t1),
            "checkpoint": digest, "checkpoint_bytes": data, "horizon": config.horizon}
