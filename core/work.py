"""What runs in a worker: one cell, from plain data to raw results as plain data.

:func:`run_cell` is what the runner submits to an executor, whichever it is (the
built-in process pool or Ray, or a third-party plugin's).  It does the worker's
set-up itself (:func:`prepare_worker`), so an executor only has to call it, and
everything it receives and returns is plain picklable data (a learned optimizer's
checkpoint as bytes), so a worker needs no shared file system.
"""
from __future__ import annotations

import time
from typing import Any

from .cells import CellKind, OptimizerKind


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
    executor's torch threads per cell, and ``checkpoint``, the bytes of a learned
    optimizer's checkpoint for a test cell."""
    prepare_worker(runtime.get("threads"))
    started = time.time()
    if CellKind(kind) is CellKind.META_TRAIN:
        out = run_meta_training(spec)
    else:
        out = run_evaluation(spec, runtime)
    out["wall_time"] = time.time() - started
    return out


def run_evaluation(spec: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """A tune or test cell: every seed in one batched :func:`l2obench.evaluate.run`."""
    import numpy as np

    from .evaluate import run
    from .registry import get_registry
    from .resolve import resolve_optimizer

    reg = get_registry()
    device = spec["device"]
    task = reg.task(spec["task"]["family"], **spec["task"]["config"])
    opt = spec["optimizer"]
    if opt["kind"] == OptimizerKind.BASELINE:
        resolved = resolve_optimizer(opt["plugin"], task, device, params=opt["params"], registry=reg)
    else:
        resolved = resolve_optimizer(runtime["checkpoint"], task, device, registry=reg)
    t0 = time.time()
    traj = run(resolved.optimizer, task, spec["seeds"], spec["horizon"], spec["split"], device)
    t1 = time.time()
    return {"losses": traj.losses.double().numpy(), "diverged_at": traj.diverged_at.numpy().astype(np.int64),
            "compute": (t0, t1), "checkpoint": resolved.checkpoint.content_hash if resolved.checkpoint else ""}


def run_meta_training(spec: dict[str, Any]) -> dict[str, Any]:
    """A meta-train cell: the learned optimizer meta-trained from the config's seed, returned
    as checkpoint bytes with its meta-loss history and validation losses."""
    from .checkpoint import checkpoint_bytes
    from .metatrain import MetaTrainConfig, meta_train
    from .registry import get_registry
    from .resolve import learned_optimizer

    reg = get_registry()
    config = MetaTrainConfig.from_params(**spec["train"])
    # the initial meta-parameters too: the same seed, the same optimizer
    lopt = learned_optimizer(spec["plugin"], spec["params"], seed=config.seed, registry=reg)
    task = reg.task(spec["task"]["family"], **spec["task"]["config"])
    t0 = time.time()
    result = meta_train(lopt, task, config, device=spec["device"], progress=False)
    t1 = time.time()
    training = {"suite_cell": spec["name"], "task": spec["task"], "config": config.describe(),
                "best_epoch": result.best_epoch, "best_val": result.best_val, "skipped": result.skipped,
                "stopped": result.stopped, "optimizee_steps": result.optimizee_steps}
    data, digest = checkpoint_bytes(lopt, training, registry=reg)
    history = [(r["episode"], float(r["meta_loss"])) for r in result.history]
    validation = sorted(result.validation.items())
    return {"history": history, "validation": validation, "seed": config.seed, "compute": (t0, t1),
            "checkpoint": digest, "checkpoint_bytes": data, "horizon": config.horizon}
