"""A population of perturbed meta-parameters run as one batch of optimizees, the
machinery evolution-strategies estimators share (learned_optimization's
``common.vector_sample_perturbations`` and vectorised unrolls).

Particle ``i`` has meta-parameters ``theta + v_i`` and its own ``rows`` optimizees.
The task sees every particle's optimizees stacked along the seed axis: one
``init``, one batch stream and one loss-and-gradient call of ``P * rows`` seeds a
step.  Each particle's optimizer steps its own rows; the LSTM's update is already
batched over every coordinate of its rows, so a particle costs one call a step.
Antithetic sampling (``v`` and ``-v``) uses the same seeds for both members of a pair.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from .estimator import TRAIN_LOSS, MetaProblem, heldout_meta_loss
from .evaluate import check_updates, loss_and_grad
from .optimizer import Optimizer, State
from .task import Task


def flat_meta_params(problem: MetaProblem) -> Tensor:
    """The current meta-parameters as one vector (detached)."""
    return parameters_to_vector(problem.meta_params).detach()


def antithetic(generator: torch.Generator, pairs: int, size: int, sigma: float, like: Tensor) -> Tensor:
    """``pairs`` Gaussian perturbations of std ``sigma``, ``(pairs, size)``, drawn on the CPU
    from ``generator`` (so a seed gives the same draws on every device)."""
    draws = torch.randn(pairs, size, generator=generator, dtype=torch.float64)
    return (draws * sigma).to(dtype=like.dtype, device=like.device)


def split_flat(flat: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """A flat meta-gradient cut into tensors shaped like ``params``."""
    out, at = [], 0
    for p in params:
        out.append(flat[at:at + p.numel()].view_as(p).to(p.dtype))
        at += p.numel()
    return out


class Particles:
    """``count`` copies of a learned optimizer whose meta-parameters are set per truncation."""

    def __init__(self, problem: MetaProblem, count: int):
        self.problem, self.count = problem, count
        self.copies = [copy.deepcopy(problem.lopt) for _ in range(count)]
        for c in self.copies:
            c.eval()
        self.optimizers: list[Optimizer] = [c.opt_fn(problem.task.groups) for c in self.copies]

    def load(self, thetas: Tensor) -> None:
        """Particle ``i`` takes the flat meta-parameters ``thetas[i]``."""
        with torch.no_grad():
            for c, theta in zip(self.copies, thetas):
                vector_to_parameters(theta, [p for p in c.parameters() if p.requires_grad])


@dataclass
class PopulationState:
    """Where every particle's optimizees are: ``params (P * rows, D)`` and one optimizer state a particle."""

    params: Tensor
    states: list[State]
    stream: Iterator[Any]


def start_population(particles: Particles, seeds: Sequence[int]) -> PopulationState:
    """Every particle's fresh optimizees on ``seeds`` (the same seeds for every particle)."""
    problem = particles.problem
    task = problem.task
    every = [s for _ in range(particles.count) for s in seeds]
    params = task.init(every, device=problem.device)
    rows = len(seeds)
    states = [opt.init(params[i * rows:(i + 1) * rows]) for i, opt in enumerate(particles.optimizers)]
    return PopulationState(params, states, task.batches("train", every, device=problem.device))


def restart_from(state: PopulationState, particle: int, count: int, rows: int) -> PopulationState:
    """Every particle continues from particle ``particle``'s optimizees (truncated ES)."""
    block = state.params[particle * rows:(particle + 1) * rows]
    params = block.repeat(count, 1)
    return PopulationState(params, [dict(state.states[particle]) for _ in range(count)], state.stream)


@torch.no_grad()
def run_truncation(particles: Particles, state: PopulationState, weights: Sequence[float],
                   objective: str = TRAIN_LOSS) -> tuple[Tensor, PopulationState]:
    """``len(weights)`` steps of every particle; returns each particle's meta-loss ``(P,)``
    (``sum_t w_t`` of its optimizees' mean loss, or the held-out objective at the end) and
    where the optimizees are."""
    task: Task = particles.problem.task
    count = particles.count
    params, states = state.params, list(state.states)
    rows = params.shape[0] // count
    meta = torch.zeros(count, dtype=torch.float64, device=params.device)
    for t, w in enumerate(weights):
        loss, grad = loss_and_grad(task, params, next(state.stream))
        if w and objective == TRAIN_LOSS:
            meta += loss.double().reshape(count, rows).mean(1) * w
        parts = []
        for i, opt in enumerate(particles.optimizers):
            block = slice(i * rows, (i + 1) * rows)
            step, states[i] = opt.update(grad[block], states[i], params[block])
            check_updates(step, params[block], opt, t)
            parts.append(step)
        params = params + torch.cat(parts)
    if objective != TRAIN_LOSS:
        meta = heldout_meta_loss(task, params, objective, rows).double()
    return meta, PopulationState(params, states, state.stream)
