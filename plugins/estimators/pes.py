"""Persistent evolution strategies (Vicol, Metz and Sohl-Dickstein, ICML 2021; as
learned_optimization's ``truncated_pes.py``).

Like truncated antithetic ES, but every particle keeps its own optimizees from one
truncation to the next, and each antithetic pair ``j`` accumulates the perturbations it
has used, ``xi_j = sum_k v_j^(k)``.  The estimate of a truncation is
``mean_j (L(theta + v_j) - L(theta - v_j)) / (2 sigma^2) * xi_j``: the accumulator
credits the perturbations of earlier truncations for their effect on this one's loss,
so the estimates summed over an episode are unbiased for the gradient of the
(smoothed) whole-horizon meta-loss, whatever the truncation.  Accumulators start at
zero with each episode's fresh optimizees."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from l2obench.api import (Estimate, MetaProblem, Particles, Positive, PositiveInt, antithetic, flat_meta_params,
                          run_truncation, split_flat, start_population)

from .es import check_population


@dataclass(frozen=True)
class PersistentES:
    population: int = 8
    sigma: float = 0.01
    truncation: int | None = None
    differentiable: bool = False

    def episode(self, problem: MetaProblem) -> Iterator[Estimate]:
        pairs, rows = self.population // 2, len(problem.seeds)
        particles = Particles(problem, self.population)
        state = start_population(particles, problem.seeds)
        accumulated = None
        for begin, stop in problem.spans(self.truncation):
            theta = flat_meta_params(problem)
            v = antithetic(problem.generator, pairs, theta.numel(), self.sigma, theta)
            accumulated = v if accumulated is None else accumulated + v
            particles.load(torch.cat([theta + v, theta - v]))
            losses, state = run_truncation(particles, state, problem.weights[begin:stop], problem.objective)
            finite = bool(torch.isfinite(losses).all())
            steps = (stop - begin) * rows * self.population
            grads = None
            if finite and (any(problem.weights[begin:stop]) or problem.objective != "loss"):
                delta = (losses[:pairs] - losses[pairs:]).to(v.dtype)
                flat = (delta[:, None] * accumulated).mean(0) / (2 * self.sigma ** 2)
                grads = split_flat(flat, problem.meta_params)
            yield Estimate(grads, float(losses.mean()), steps, finite)
            if not finite:
                return


def pes(population: PositiveInt = 8, sigma: Positive = 0.01, truncation: PositiveInt | None = None) -> PersistentES:
    """Persistent evolution strategies: antithetic ES with per-particle accumulated perturbations, unbiased across truncations."""
    check_population("pes", population, sigma)
    return PersistentES(population, float(sigma), truncation)
