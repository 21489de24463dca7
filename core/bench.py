"""Speed benchmarks (issue 6): meta-training throughput on the paper's MNIST
workload, and batched against one-seed-at-a-time evaluation.

The meta-training workload is the paper's MNIST experiment (Sec. 3.2) exactly
as ``naive_reference.py`` states it: the ``mnist-mlp`` task 784-20-10 sigmoid
with minibatches of 128, the ``lstm`` optimizer (2 layers of 20 units,
log/sign preprocessing with p = 10, output x 0.1), 100-step episodes, unrolls
of 20, Adam(1e-3) on the meta-parameters, no clipping, second derivatives
dropped, one optimizee per episode.  It runs through :func:`l2obench.metatrain.meta_train`;
only the episodes after a warm-up episode are timed.  Ratios against the
reference are measured in one invocation, the two interleaved, so both see the
same machine load.  Each figure says whether the LSTM ran on the plugin's fused
CPU kernel or on torch ops, and why; :func:`compare_isas` times the kernel built
for each instruction set the CPU can run against torch ops and the reference.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .devices import cpu_id, cpu_model
from .errors import ConfigError

#: The paper's MNIST workload (Sec. 3.2), as naive_reference.py states it.
LEARNED = ("lstm", dict(hidden=20, layers=2, preprocess=True, p=10.0, output_scale=0.1))
TASK = ("mnist-mlp", dict(hidden=20, layers=1, activation="sigmoid", batch_size=128))
HORIZON, UNROLL, META_LR = 100, 20, 1e-3


def machine() -> dict[str, Any]:
    """What a figure was measured on: CPU model (and its family and model numbers, where
    /proc/cpuinfo has them), cores, torch version and threads, device."""
    info = {"cpu": cpu_model(), "cpu_id": cpu_id(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def metatrain_throughput(episodes: int = 5, *, horizon: int = HORIZON, unroll: int = UNROLL,
                         device: torch.device | str = "cpu", seed: int = 0, estimator: str = "tbptt",
                         estimator_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Optimizee steps per second meta-training the paper's MNIST LSTM with
    :func:`~l2obench.metatrain.meta_train`: one warm-up episode, then ``episodes``
    timed ones (the clock runs from the end of the warm-up to the end of the last).
    With ``estimator`` (and its settings) another meta-gradient estimator; every particle
    of an ES population counts its steps."""
    from .metatrain import MetaTrainConfig, meta_train
    from .registry import get_registry

    if episodes < 1:
        raise ConfigError(f"bench metatrain: --episodes {episodes} must be at least 1")
    reg = get_registry()
    torch.manual_seed(seed)
    lopt = reg.learned(LEARNED[0], **LEARNED[1])
    task = reg.task(TASK[0], **TASK[1])
    config = MetaTrainConfig(horizon=horizon, unroll=unroll, epochs=1, episodes_per_epoch=episodes + 1,
                             meta_batch=1, lr=META_LR, clip=None, validation_seeds=0, seed=seed,
                             estimator=estimator, estimator_params=dict(estimator_params or {}))
    backend = lopt.implementation(device)  # decided (and self-checked) before anything is timed
    ends: list[float] = []
    result = meta_train(lopt, task, config, device=device, progress=False,
                        callback=lambda row: ends.append(time.perf_counter()) and None)
    if _is_cuda(device):
        torch.cuda.synchronize()
    elapsed = ends[-1] - ends[0]
    meta_losses = [row["meta_loss"] for row in result.history[1:]]
    per_episode = result.optimizee_steps / len(result.history)
    return {"steps_per_s": episodes * per_episode / elapsed, "episodes": episodes, "horizon": horizon,
            "unroll": unroll, "seconds": elapsed, "estimator": estimator, "estimator_params": config.estimator_params, "optimizee_dim": task.dim,
            "final_meta_loss": meta_losses[-1], "skipped": result.skipped, **backend}


def lstm_backend(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What computes the workload's learned optimizer on ``device`` and why, as its plugin
    says (:meth:`~l2obench.learned.LearnedOptimizer.implementation`)."""
    from .registry import get_registry

    return get_registry().learned(LEARNED[0], **LEARNED[1]).implementation(device)


def reference_throughput(path: str | os.PathLike, episodes: int, threads: int,
                         data_dir: str | None = None) -> dict[str, Any]:
    """Run the straightforward reference script (``naive_reference.py``) in a
    subprocess and return its JSON line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"bench metatrain: --reference {str(path)!r} is not a file; "
                          "point it at naive_reference.py")
    cmd = [sys.executable, str(path), "--episodes", str(episodes), "--threads", str(threads)]
    data_dir = data_dir or os.environ.get("L2OBENCH_DATA_DIR")
    if data_dir:
        # the reference reads the four MNIST files from one directory: the data directory's
        # mnist/ where it has one (one sub-directory per data set), else the directory itself
        nested = Path(data_dir) / "mnist"
        cmd += ["--data", str(nested if nested.is_dir() else data_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"bench metatrain: the reference {path.name} failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])


def compare_metatrain(episodes: int, rounds: int, reference: str | os.PathLike, *, threads: int,
                      device: torch.device | str = "cpu") -> dict[str, Any]:
    """The reference and ours measured back to back ``rounds`` times in one
    invocation (order alternating, reference first in odd rounds), so each
    round's ratio compares runs that saw the same machine load.  ``ratio`` is the
    median of the rounds' ratios."""
    if rounds < 1:
        raise ConfigError(f"bench metatrain: --rounds {rounds} must be at least 1")
    rows = []
    for k in range(rounds):
        first_reference = k % 2 == 0
        if first_reference:
            ref = reference_throughput(reference, episodes, threads)["steps_per_s"]
        ours = metatrain_throughput(episodes, device=device)["steps_per_s"]
        if not first_reference:
            ref = reference_throughput(reference, episodes, threads)["steps_per_s"]
        rows.append({"ours": ours, "reference": ref, "ratio": ours / ref})
    return {"steps_per_s": statistics.median(r["ours"] for r in rows),
            "reference_steps_per_s": statistics.median(r["reference"] for r in rows),
            "ratio": statistics.median(r["ratio"] for r in rows), "rounds": rows, "episodes": episodes,
            **lstm_backend(device)}


def isa_builds() -> list[dict[str, Any]]:
    """The native builds of the workload's learned optimizer to compare, as its plugin
    lists them (:meth:`~l2obench.learned.LearnedOptimizer.builds`): for the ``lstm``
    plugin, its kernel built for each instruction set."""
    from .registry import get_registry

    return get_registry().learned(LEARNED[0], **LEARNED[1]).builds()


def _command_json(env: dict[str, str], episodes: int, threads: int) -> dict[str, Any]:
    """``l2obench bench metatrain --json`` in a fresh process with ``env`` added."""
    cmd = [sys.executable, "-m", "l2obench.cli", "bench", "metatrain", "--episodes", str(episodes), "--threads",
           str(threads), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"bench metatrain --isas: the run with {env} failed (exit {proc.returncode}): {tail}")
    return json.loads(lines[-1])


def compare_isas(episodes: int, rounds: int, reference: str | os.PathLike | None, *, threads: int) -> dict[str, Any]:
    """Meta-training throughput with the kernel built for each instruction set this CPU
    can run (:func:`isa_builds`, forced with ``L2OBENCH_NATIVE=1`` and
    ``L2OBENCH_KERNEL_MARCH``), with torch ops (``L2OBENCH_NATIVE=0``) and, if given,
    the reference: each a fresh process, all of them once per round, the order rotating
    from round to round.  Ratios are medians of the rounds' ratios."""
    if rounds < 1:
        raise ConfigError(f"bench metatrain: --rounds {rounds} must be at least 1")
    builds = isa_builds()
    runs: dict[str, Any] = {b["name"]: b["env"] for b in builds if not b["missing"]}
    runs["torch"] = {"L2OBENCH_NATIVE": "0"}
    if reference is not None:
        runs["reference"] = None
    names = list(runs)
    speeds: dict[str, list[float]] = {name: [] for name in names}
    blockings: dict[str, str] = {}
    for k in range(rounds):
        for name in names[k % len(names):] + names[:k % len(names)]:
            if runs[name] is None:
                speeds[name].append(reference_throughput(reference, episodes, threads)["steps_per_s"])
            else:
                out = _command_json(runs[name], episodes, threads)
                if name != "torch" and out["lstm_backend"] != "kernel":
                    raise ConfigError(f"bench metatrain --isas: {name} ran on torch ops ({out['lstm_backend_reason']})")
                speeds[name].append(out["steps_per_s"])
                if out.get("kernel_blocking"):
                    blockings[name] = out["kernel_blocking"]
    rows = []
    for b in builds:
        name = b["name"]
        row = {k: v for k, v in b.items() if k not in ("name", "env")} | {"runs": speeds.get(name)}
        if name in blockings:
            row["blocking"] = blockings[name]  # the build's vectors and register blocking for this CPU
        if name in speeds:
            row["steps_per_s"] = statistics.median(speeds[name])
            row["vs_torch"] = statistics.median(o / t for o, t in zip(speeds[name], speeds["torch"]))
            if reference is not None:
                row["vs_reference"] = statistics.median(o / r for o, r in zip(speeds[name], speeds["reference"]))
        rows.append(row)
    out = {"builds": rows, "torch_steps_per_s": statistics.median(speeds["torch"]), "torch_runs": speeds["torch"],
           "episodes": episodes, "rounds": rounds}
    if reference is not None:
        out.update(reference_steps_per_s=statistics.median(speeds["reference"]), reference_runs=speeds["reference"],
                   torch_vs_reference=statistics.median(t / r for t, r in zip(speeds["torch"], speeds["reference"])))
    return out


def evaluate_throughput(optimizers: Sequence[str] = ("adam", "lstm"), *, seeds: int = 32, steps: int = 100,
                        device: torch.device | str = "cpu") -> dict[str, Any]:
    """Seed-steps per second of :func:`l2obench.evaluate.run` on ``mnist-mlp``: all
    ``seeds`` in one batched run against one run per seed, one after another.
    ``max_abs_diff`` compares the two runs' losses (rows are independent, so it is ~0)."""
    from .evaluate import run
    from .registry import get_registry

    if seeds < 1 or steps < 1:
        raise ConfigError(f"bench evaluate: --seeds {seeds} and --steps {steps} must be at least 1")
    from .resolve import resolve_optimizer

    reg = get_registry()
    task = reg.task(TASK[0], **TASK[1])
    seed_list = list(range(seeds))
    out: dict[str, Any] = {}
    for name in optimizers:
        opt = resolve_optimizer(name, task, device, registry=reg).optimizer
        run(opt, task, seed_list[:2], 2, "test", device)  # warm-up: data on the device, first allocations
        t0 = time.perf_counter()
        batched = run(opt, task, seed_list, steps, "test", device)
        t1 = time.perf_counter()
        sequential = [run(opt, task, [s], steps, "test", device) for s in seed_list]
        t2 = time.perf_counter()
        one_by_one = torch.cat([traj.losses for traj in sequential])
        diff = (batched.losses - one_by_one).abs().nan_to_num(nan=float("inf")).max()
        b, s = seeds * steps / (t1 - t0), seeds * steps / (t2 - t1)
        out[name] = {"batched_seed_steps_per_s": b, "sequential_seed_steps_per_s": s, "ratio": b / s,
                     "max_abs_diff": float(diff)}
    return {"task": TASK[0], "seeds": seeds, "steps": steps, "optimizers": out}


def module_mlp_task(batch_size: int = 128):
    """The paper's MNIST MLP (784-20-10 sigmoid, minibatches of 128) as an ``nn.Module``
    made a Task by :func:`~l2obench.from_module.module_task`, pixels kept uint8 until a
    minibatch is used, as ``mnist-mlp`` keeps them."""
    from torch import nn
    from torch.nn import functional as F

    from .datasets import images_to_float
    from .from_module import module_task
    from .registry import get_registry
    from .task import SPLITS

    class Pixels(nn.Module):
        def forward(self, images):
            return images_to_float(images)

    mnist = get_registry().dataset("mnist")
    data = {}
    for split in SPLITS:
        images, labels = mnist.load(split)
        data[split] = (images.reshape(len(images), -1), labels)
    return module_task(lambda: nn.Sequential(Pixels(), nn.Linear(784, 20), nn.Sigmoid(), nn.Linear(20, 10)),
                       data, F.cross_entropy, batch_size=batch_size)


def module_task_throughput(*, seeds: int = 32, steps: int = 100, rounds: int = 3,
                           device: torch.device | str = "cpu") -> dict[str, Any]:
    """Seed-steps per second of Adam on ``mnist-mlp`` against the same network from
    :func:`module_mlp_task` (``module_task``), ``rounds`` alternated pairs; the ratio
    is the median of the pairs' ``mnist-mlp / module_task`` speeds."""
    from .evaluate import run
    from .registry import get_registry

    if min(seeds, steps, rounds) < 1:
        raise ConfigError(f"bench module-task: --seeds {seeds}, --steps {steps} and --rounds {rounds} must be "
                          f"at least 1")
    reg = get_registry()
    tasks = {"mnist-mlp": reg.task(TASK[0], **TASK[1]), "module_task": module_mlp_task(TASK[1]["batch_size"])}
    opt = reg.optimizer("adam", lr=0.01)
    speeds: dict[str, list[float]] = {name: [] for name in tasks}
    for name, task in tasks.items():
        run(opt, task, [0, 1], 2, "test", device)  # warm-up: data on the device, first allocations
    for k in range(rounds):
        for name in (list(tasks) if k % 2 == 0 else list(tasks)[::-1]):
            t0 = time.perf_counter()
            run(opt, tasks[name], list(range(seeds)), steps, "test", device)
            speeds[name].append(seeds * steps / (time.perf_counter() - t0))
    ratios = [h / m for h, m in zip(speeds["mnist-mlp"], speeds["module_task"])]
    return {"seeds": seeds, "steps": steps, "rounds": rounds, "seed_steps_per_s": speeds,
            "hand_written_vs_module_task": statistics.median(ratios), "ratios": ratios}


#: what ``bench heldout`` times: the smoke suite's quadratic test cells, the paper's MNIST net, the small conv net
HELDOUT_TASKS = (("quadratic", {"dim": 20}), TASK, ("mnist-conv", {}))


def heldout_cost(optimizer: str = "adam", *, seeds: int = 16, steps: int = 100, rounds: int = 3,
                 device: torch.device | str = "cpu") -> dict[str, Any]:
    """What recording held-out metrics costs: per task of :data:`HELDOUT_TASKS`, the time of
    an evaluation run of ``steps`` steps on ``seeds`` seeds with held-out metrics at the default
    steps (:func:`l2obench.evaluate.heldout_steps`) over the same run without any, the two
    interleaved ``rounds`` times (medians), so both see the same machine load."""
    from .evaluate import heldout_steps, run
    from .registry import get_registry
    from .resolve import resolve_optimizer
    from .task import task_metrics

    if seeds < 1 or steps < 1 or rounds < 1:
        raise ConfigError(f"bench heldout: --seeds {seeds}, --steps {steps} and --rounds {rounds} must be at least 1")
    reg = get_registry()
    out: dict[str, Any] = {}
    for family, config in HELDOUT_TASKS:
        task = reg.task(family, **config)
        opt = resolve_optimizer(optimizer, task, device, params={"lr": 0.01}, registry=reg).optimizer
        seed_list = list(range(seeds))
        run(opt, task, seed_list[:2], 2, "test", device)  # warm-up: data on the device, first allocations
        times: dict[str, list[float]] = {"without": [], "with": []}
        for r in range(rounds):
            for which in (("without", "with") if r % 2 == 0 else ("with", "without")):
                t0 = time.perf_counter()
                run(opt, task, seed_list, steps, "test", device,
                    heldout=() if which == "without" else heldout_steps(steps))
                times[which].append(time.perf_counter() - t0)
        without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
        out[f"{family}{json.dumps(config, separators=(',', '='))}" if config else family] = {
            "metrics": list(task_metrics(task)), "evaluations": len(heldout_steps(steps)) if task_metrics(task) else 0,
            "without_s": without, "with_s": with_, "overhead": with_ / without - 1, "runs": times}
    return {"optimizer": optimizer, "seeds": seeds, "steps": steps, "rounds": rounds, "tasks": out}


def _is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"
