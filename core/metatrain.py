"""Meta-training of learned optimizers by truncated backpropagation through time
(Andrychowicz et al. 2016, Sec. 2, Eq. 3).

One *episode* samples ``meta_batch`` fresh optimizees (fresh seeds, and a fresh
task when a family generator is given), then runs the learned optimizer for
``horizon`` steps in *unrolls* of ``unroll`` steps.  After each unroll the
meta-loss ``sum_t w_t f(theta_t)`` (averaged over the optimizees) is
backpropagated into the meta-parameters, the meta-gradient is clipped, Adam
steps, and theta and the optimizer state are detached before the next unroll.

Conventions, shared with :func:`l2obench.evaluate.run` and the paper's figures:
step ``t = 0 .. horizon-1`` evaluates ``f(theta_t)`` on the minibatch whose
gradient makes the update ``theta_{t+1} = theta_t + g_t``, so the first loss of
each unroll does not depend on the meta-parameters (exactly as in a plain
PyTorch implementation of the paper).

Second derivatives are dropped by default (the paper's Fig. 2 dashed edges: the
gradient fed to the optimizer is a constant).  Then
``d f(theta_t)/d phi = grad_t . d theta_t/d phi`` exactly, so the meta-loss is
built as the surrogate ``sum_t w_t <grad_t, theta_t>`` with ``grad_t`` a
constant: the same meta-gradient as backpropagating the real losses, without a
second backward pass through the optimizee.  The real losses are what is logged.
With ``second_order=True`` gradients are taken with ``create_graph=True`` and
the real losses are backpropagated.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, Union

import torch
from torch import Tensor

from .config import TRAIN_LOSS, VALIDATION_SEED_BASE, WEIGHTINGS, MetaTrainConfig, WeightFn  # noqa: F401  (public here too)
from .errors import ConfigError
from .estimator import MetaProblem, check_estimator, check_objective, heldout_meta_loss
from .evaluate import loss_and_grad
from .evaluate import run as evaluate_run
from .learned import LearnedOptimizer
from .task import Task, seed_generator
from .unroll import Unroll, unroll  # noqa: F401  (public here too)
from .metatrain_progress import (PROGRESS_FORMAT, generator_states, json_config, read_progress,
                                 set_generator_states, write_progress)

#: Validation optimizees use seeds from here on; training seeds are drawn at or
#: above TRAIN_SEED_LOW, so the two never meet (test seeds are small integers).
TRAIN_SEED_LOW = 2_000_000
_SEED_HIGH = 2**31 - 1

TaskSource = Union[Task, Callable[[torch.Generator], Task]]


def horizon_weights(config: MetaTrainConfig, horizon: int | None = None) -> list[float]:
    """The ``w_t`` of Eq. 3 for ``t = 0 .. T-1``, ``T`` the config's horizon or the one given."""
    T, K, w = horizon or config.horizon, config.unroll, config.weights
    if w == "ones":
        return [1.0] * T
    if w == "final":
        return [0.0] * (T - 1) + [1.0]
    if w == "unroll-final":
        return [1.0 if (t + 1) % K == 0 or t == T - 1 else 0.0 for t in range(T)]
    if w == "linear":
        return [(t + 1) / T for t in range(T)]
    values = [float(w(t, T)) for t in range(T)]
    if not all(math.isfinite(v) for v in values):
        raise ConfigError("meta-train config: the weight function returned a non-finite w_t")
    return values


def episode_horizon(config: MetaTrainConfig, generator: torch.Generator) -> int:
    """One episode's horizon under ``config.truncation_schedule``: the horizon itself
    (``"constant"``, drawing nothing, so the seeds drawn are those of a config without a
    schedule), or ``exp(U(log lo, log (horizon + 1)))`` rounded down, ``lo`` the ``min_horizon``
    (default the unroll): log-uniform over ``lo .. horizon``, both ends included, drawn from
    ``generator`` (``"log-uniform"``, learned_optimization's ``LogUniformLengthSchedule``)."""
    if config.truncation_schedule == "constant":
        return config.horizon
    lo = min(config.min_horizon or config.unroll, config.horizon)
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    return max(lo, min(config.horizon, int(math.exp(math.log(lo) + u * math.log((config.horizon + 1) / lo)))))


@dataclass
class MetaTrainResult:
    """The training record: one row per episode (``epoch``, ``episode``,
    ``meta_loss`` = the episode's weighted loss summed over the horizon and
    averaged over optimizees, ``val_loss`` on the last episode of a validated
    epoch else ``None``, ``skipped`` non-finite unrolls; ``horizon``, the steps of
    an episode whose horizon the truncation schedule drew shorter, over which
    its ``meta_loss`` is summed), the validation losses by
    epoch (0: before training), the epoch whose meta-parameters were kept, and
    timings."""

    history: list[dict[str, Any]]
    validation: dict[int, float]
    best_epoch: int | None
    best_val: float | None
    skipped: int
    wall_s: float
    train_s: float
    optimizee_steps: int
    config: MetaTrainConfig
    stopped: str = "completed"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failure(self) -> str | None:
        """Why this meta-training failed, or ``None``: no episode gave a finite meta-loss, or
        no validation beat the initialisation's (epoch 0), so the untrained meta-parameters
        were kept.  Either way the learned optimizer is not a trained one."""
        if self.history and not any(math.isfinite(r["meta_loss"]) for r in self.history):
            return (f"no finite meta-loss in {len(self.history)} episodes (every one diverged); "
                    f"lower the meta learning rate lr={self.config.lr:g}")
        if self.best_epoch == 0 and len(self.validation) > 1:
            return (f"no validation loss better than the initialisation's ({self.validation[0]:.6g} at epoch 0), "
                    f"so the untrained meta-parameters were kept; train longer (more epochs or episodes), "
                    f"change the meta learning rate lr={self.config.lr:g}, or validate on more seeds")
        return None

    @property
    def steps_per_s(self) -> float:
        """Meta-training throughput: optimizee steps (seeds x steps) per second of training."""
        return self.optimizee_steps / self.train_s if self.train_s > 0 else math.nan


def _as_config(config: MetaTrainConfig | Mapping[str, Any] | None) -> MetaTrainConfig:
    if config is None:
        return MetaTrainConfig()
    if isinstance(config, MetaTrainConfig):
        return config
    if isinstance(config, Mapping):
        return MetaTrainConfig.from_params(**config)
    raise ConfigError(f"meta-train config: expected a MetaTrainConfig or a dict, got {type(config).__name__}")


def _task_source(task: TaskSource) -> Callable[[torch.Generator], Task]:
    if isinstance(task, Task):
        return lambda generator: task
    if callable(task):
        return task
    raise ConfigError(f"meta_train: task must be a Task or a function generator -> Task, got {type(task).__name__}")


def validation_loss(lopt: LearnedOptimizer, tasks: Sequence[tuple[Task, Sequence[int]]], steps: int,
                    device: torch.device | str = "cpu", objective: str = TRAIN_LOSS, every: int = 1) -> float:
    """Mean summed loss over ``steps`` on the validation split, meta-parameters frozen;
    ``inf`` if any optimizee diverged, so a diverging optimizer is never kept.  For a held-out
    ``objective``, the objective summed over the ends of every ``every`` steps instead, as
    meta-training reads it."""
    totals: list[Tensor] = []
    was_training = lopt.training
    lopt.eval()
    try:
        with torch.no_grad():
            for task, seeds in tasks:
                if objective != TRAIN_LOSS:
                    totals.append(_heldout_validation(lopt.opt_fn(task.groups), task, seeds, steps, device,
                                                      objective, every))
                    continue
                traj = evaluate_run(lopt.opt_fn(task.groups), task, seeds, steps, "validation", device)
                totals.append(traj.summed)
    finally:
        lopt.train(was_training)
    summed = torch.cat(totals)
    if not torch.isfinite(summed).all():
        return math.inf
    return float(summed.mean())


def _heldout_validation(opt, task: Task, seeds: Sequence[int], steps: int, device, objective: str,
                        every: int) -> Tensor:
    """Each validation optimizee's held-out objective summed over the ends of every ``every`` steps."""
    params = task.init(seeds, device=device)
    state = opt.init(params)
    stream = task.batches("validation", seeds, device=device)
    total = torch.zeros(len(seeds), dtype=torch.float64, device=params.device)
    for t in range(steps):
        _, grad = loss_and_grad(task, params, next(stream))
        updates, state = opt.update(grad, state, params)
        params = params + updates
        if (t + 1) % every == 0 or t == steps - 1:
            total += heldout_meta_loss(task, params, objective, 1)
    return total


def _validation_tasks(task: TaskSource, validation_task, config: MetaTrainConfig):
    """(task, seeds) pairs to validate on: every given validation task with all
    validation seeds; else the training task; else, for a family generator,
    fixed draws of one task per validation seed."""
    n = config.validation_seeds
    seeds = list(range(VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + n))
    if validation_task is not None:
        tasks = [validation_task] if isinstance(validation_task, Task) else list(validation_task)
        return [(t, seeds) for t in tasks]
    if isinstance(task, Task):
        return [(task, seeds)]
    # A family generator: fixed draws, one validation task per validation seed (the seeds
    # of a task drawn more than once run together).
    g = seed_generator(config.seed, "validation-tasks")
    drawn: dict[int, tuple[Task, list[int]]] = {}
    for s in seeds:
        t = task(g)
        drawn.setdefault(id(t), (t, []))[1].append(s)
    return list(drawn.values())


def meta_train(
    lopt: LearnedOptimizer,
    task: TaskSource,
    config: MetaTrainConfig | Mapping[str, Any] | None = None,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    validation_task: Task | Sequence[Task] | None = None,
    callback: Callable[[dict[str, Any]], bool | None] | None = None,
    progress_file: str | os.PathLike | None = None,
) -> MetaTrainResult:
    """Meta-train ``lopt`` in place on ``task`` and return the training record.

    ``task`` is a :class:`Task` (each episode draws fresh seeds: fresh functions,
    initial parameters and minibatches) or a function ``generator -> Task`` for
    a distribution over configs.  ``lopt.task_transform(task, generator)`` is
    applied to every training episode (not to validation).  Every
    ``validate_every`` epochs the frozen meta-parameters are evaluated on the
    ``"validation"`` split (seeds disjoint from the training seeds) and the best
    ones are loaded into ``lopt`` at the end (the paper's early stopping).
    A non-finite meta-loss or meta-gradient is counted, not learned from, and
    the episode ends (the next starts from a fresh optimizee).  ``callback(row)``
    runs after each episode; returning ``True`` stops training.

    With ``progress_file`` the whole training state (meta-parameters, Adam's state,
    the best-so-far, counters, history, every generator's state, elapsed time) is
    saved there atomically at the end of every epoch, and a file already there is
    resumed from: an interrupted run loses at most the epoch it was in, and its
    result and meta-parameters are bit for bit those of an uninterrupted run
    (unless ``time_limit_s`` stopped it).  The caller removes the file when done.
    """
    config = _as_config(config)
    if config.second_order and not lopt.capabilities.second_derivatives:
        raise ConfigError(f"meta-train config: second_order=true, but learned optimizer "
                          f"{lopt.name or type(lopt).__name__!r} has no second derivatives "
                          f"(capabilities.second_derivatives=False); set second_order = false")
    estimator = build_estimator(config)
    device = torch.device(device)
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    lopt.to(device)
    lopt.train()
    meta_params = [p for p in lopt.parameters() if p.requires_grad]
    if not meta_params:
        raise ConfigError("meta_train: the learned optimizer has no trainable meta-parameters")
    meta_opt = torch.optim.Adam(meta_params, lr=config.lr)
    rng = torch.Generator().manual_seed(config.seed)
    draw_task = _task_source(task)
    weights = horizon_weights(config)

    validate = config.validation_seeds > 0
    val_tasks = _validation_tasks(task, validation_task, config) if validate else []
    for val_task, _ in val_tasks:
        check_objective(config.objective, val_task)
    validation: dict[int, float] = {}
    best_state: dict[str, Tensor] | None = None
    best_epoch: int | None = None
    best_val: float | None = None
    val_s = 0.0

    def run_validation(epoch: int) -> float:
        nonlocal best_state, best_epoch, best_val, val_s
        t0 = time.perf_counter()
        val = validation_loss(lopt, val_tasks, config.horizon, device, config.objective,
                              estimator.truncation or config.unroll)
        val_s += time.perf_counter() - t0
        validation[epoch] = val
        if best_val is None or val < best_val:
            best_val, best_epoch = val, epoch
            best_state = {k: v.detach().clone() for k, v in lopt.state_dict().items()}
        return val

    history: list[dict[str, Any]] = []
    skipped_total = 0
    optimizee_steps = 0
    stopped = "completed"
    first_epoch = 1
    saved = read_progress(progress_file, config) if progress_file is not None else None
    if saved is not None:
        lopt.load_state_dict(saved["lopt"])
        meta_opt.load_state_dict(saved["meta_opt"])
        best_state, best_epoch, best_val = saved["best_state"], saved["best_epoch"], saved["best_val"]
        validation.update(saved["validation"])
        history = saved["history"]
        skipped_total, optimizee_steps, stopped = saved["skipped"], saved["optimizee_steps"], saved["stopped"]
        first_epoch = saved["epoch"] + 1
        started -= saved["elapsed_s"]
        val_s = saved["val_s"]
        set_generator_states(saved["generators"], rng, device)
    elif validate:
        run_validation(0)  # the initialisation's: what training has to beat

    def save_progress(epoch: int) -> None:
        if progress_file is None:
            return
        state = {"format": PROGRESS_FORMAT, "config": json_config(config), "epoch": epoch,
                 "lopt": lopt.state_dict(), "meta_opt": meta_opt.state_dict(), "best_state": best_state,
                 "best_epoch": best_epoch, "best_val": best_val, "validation": dict(validation),
                 "history": history, "skipped": skipped_total, "optimizee_steps": optimizee_steps,
                 "stopped": stopped, "elapsed_s": time.perf_counter() - started, "val_s": val_s,
                 "generators": generator_states(rng, device)}
        write_progress(progress_file, state)

    total = config.epochs * config.episodes_per_epoch
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=len(history), disable=not progress, desc="meta-train", unit="episode",
               dynamic_ncols=True)
    last_val = validation[max(validation)] if validation else None
    try:
        for epoch in range(first_epoch, config.epochs + 1):
            if stopped != "completed":
                break
            for episode in range(config.episodes_per_epoch):
                seeds = torch.randint(TRAIN_SEED_LOW, _SEED_HIGH, (config.meta_batch,), generator=rng).tolist()
                episode_task = lopt.task_transform(draw_task(rng), rng)
                check_objective(config.objective, episode_task)
                T = episode_horizon(config, rng)
                problem = MetaProblem(lopt, episode_task, seeds, weights if T == config.horizon else
                                      horizon_weights(config, T), config.unroll, config.objective, rng,
                                      device, config.second_order)
                meta_loss, skipped, steps = _episode(estimator, problem, meta_opt, meta_params, config)
                skipped_total += skipped
                optimizee_steps += steps
                row = {"epoch": epoch, "episode": (epoch - 1) * config.episodes_per_epoch + episode,
                       "meta_loss": meta_loss, "val_loss": None, "skipped": skipped}
                if T != config.horizon:  # a drawn horizon: the meta-loss is summed over T steps
                    row["horizon"] = T
                history.append(row)
                over_time = config.time_limit_s is not None and time.perf_counter() - started > config.time_limit_s
                last_of_epoch = episode == config.episodes_per_epoch - 1
                if validate and ((last_of_epoch and (epoch % config.validate_every == 0 or epoch == config.epochs))
                                 or over_time):
                    row["val_loss"] = last_val = run_validation(epoch)
                bar.update(1)
                bar.set_postfix(meta_loss=f"{meta_loss:.4g}", val=f"{last_val:.4g}" if last_val is not None else "-",
                                skipped=skipped_total, refresh=False)
                if callback is not None and callback(row) is True:
                    stopped = "callback"
                elif over_time:
                    stopped = "time limit"
                if stopped != "completed":
                    if validate and row["val_loss"] is None:
                        row["val_loss"] = run_validation(epoch)
                    break
            save_progress(epoch)
    finally:
        bar.close()

    if best_state is not None:
        lopt.load_state_dict(best_state)
    wall = time.perf_counter() - started
    return MetaTrainResult(history, validation, best_epoch, best_val, skipped_total, wall,
                           wall - val_s, optimizee_steps, config, stopped)


def _episode(estimator, problem: MetaProblem, meta_opt, meta_params, config: MetaTrainConfig) -> tuple[float, int, int]:
    """One fresh optimizee batch through the horizon, the meta-parameters stepped after each of the
    estimator's truncations; returns (meta-loss, skipped, optimizee steps run)."""
    logged_total, steps = 0.0, 0
    for est in estimator.episode(problem):
        steps += est.steps
        if not est.finite:
            meta_opt.zero_grad(set_to_none=True)
            return math.nan, 1, steps
        logged_total += est.logged
        if est.grads is None:
            continue
        meta_opt.zero_grad(set_to_none=True)
        for p, g in zip(meta_params, est.grads):
            p.grad = g
        grads = [g for g in est.grads if g is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else torch.zeros(())
        if not torch.isfinite(norm):
            meta_opt.zero_grad(set_to_none=True)
            return math.nan, 1, steps
        if config.clip is not None and grads:
            torch.nn.utils.clip_grads_with_norm_(meta_params, config.clip, norm, foreach=True)
        meta_opt.step()
    return float(logged_total), 0, steps


def build_estimator(config: MetaTrainConfig, registry=None, where: str = "meta-train config"):
    """The estimator ``config`` names, built with its settings and checked against the
    objective and the horizon (one-line errors)."""
    from .registry import get_registry

    reg = registry if registry is not None else get_registry()
    estimator = reg.estimator(config.estimator, **config.estimator_params)
    check_estimator(estimator, config.estimator, config.objective, config.horizon, where)
    return estimator
