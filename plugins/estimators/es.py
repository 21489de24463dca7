"""Antithetic evolution strategies over the meta-parameters (Salimans et al. 2017; as
learned_optimization's ``full_es.py`` and ``truncated_es.py``).

Each truncation draws ``population / 2`` perturbations ``v ~ N(0, sigma^2 I)`` and runs
the particles ``theta + v`` and ``theta - v`` from the same optimizees on the same
seeds, all ``population`` of them as one batch; the estimate is
``mean_j (L(theta + v_j) - L(theta - v_j)) / (2 sigma^2) * v_j``, the gradient of the
Gaussian-smoothed meta-loss of that truncation.  With ``truncation`` equal to the
horizon this is full-unroll ES (unbiased); shorter truncations restart every particle
from the first positive particle's optimizees and ignore how earlier truncations
depend on the meta-parameters, so truncated ES is biased as truncated BPTT is.  It
needs no gradient of the objective, so any recorded metric can be followed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from l2obench.api import (ConfigError, Estimate, MetaProblem, Particles, Positive, PositiveInt, antithetic,
                          flat_meta_params, restart_from, run_truncation, split_flat, start_population)


def check_population(name: str, population: int, sigma: float) -> None:
    """One line for a population that is not a positive even number or a sigma that is not positive."""
    if isinstance(population, bool) or not isinstance(population, int) or population < 2 or population % 2:
        raise ConfigError(f"estimator {name!r}: population={population!r} must be an even number >= 2 "
                          f"(antithetic pairs)")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0 or sigma == float("inf"):
        raise ConfigError(f"estimator {name!r}: sigma={sigma!r} must be a finite number > 0")


@dataclass(frozen=True)
class AntitheticES:
    population: int = 8
    sigma: float = 0.01
    truncation: int | None = None
    differentiable: bool = False

    def episode(self, problem: MetaProblem) -> Iterator[Estimate]:
        return antithetic_episode(problem, self.population, self.sigma, self.truncation, persistent=False)


def antithetic_episode(problem: MetaProblem, population: int, sigma: float, truncation: int | None, *,
                       persistent: bool) -> Iterator[Estimate]:
    """One estimate per truncation from antithetic pairs of perturbed meta-parameters, the whole
    population one batch of seeds.  ES restarts every particle from the first one's state after
    each truncation (fresh perturbations, the bias of truncation); PES (``persistent``) lets each
    particle keep its own trajectory and weights its loss differences by the sum of the
    perturbations it has had (Vicol et al. 2021), which makes it unbiased across truncations."""
    pairs, rows = population // 2, len(problem.seeds)
    particles = Particles(problem, population)
    state = start_population(particles, problem.seeds)
    accumulated = None
    for begin, stop in problem.spans(truncation):
        theta = flat_meta_params(problem)
        v = antithetic(problem.generator, pairs, theta.numel(), sigma, theta)
        accumulated = v if accumulated is None or not persistent else accumulated + v
        particles.load(torch.cat([theta + v, theta - v]))
        losses, state = run_truncation(particles, state, problem.weights[begin:stop], problem.objective)
        finite = bool(torch.isfinite(losses).all())
        steps = (stop - begin) * rows * population
        grads = None
        if finite and (any(problem.weights[begin:stop]) or problem.objective != "loss"):
            delta = (losses[:pairs] - losses[pairs:]).to(v.dtype)
            flat = (delta[:, None] * accumulated).mean(0) / (2 * sigma ** 2)
            grads = split_flat(flat, problem.meta_params)
        yield Estimate(grads, float(losses.mean()), steps, finite)
        if not finite:
            return
        if not persistent:
            state = restart_from(state, 0, population, rows)


def es(population: PositiveInt = 8, sigma: Positive = 0.01, truncation: PositiveInt | None = None) -> AntitheticES:
    """Antithetic evolution strategies over the meta-parameters, over full (truncation = horizon) or truncated unrolls."""
    check_population("es", population, sigma)
    return AntitheticES(population, float(sigma), truncation)
