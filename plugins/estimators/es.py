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
        pairs, rows = self.population // 2, len(problem.seeds)
        particles = Particles(problem, self.population)
        state = start_population(particles, problem.seeds)
        for begin, stop in problem.spans(self.truncation):
            theta = flat_meta_params(problem)
            v = antithetic(problem.generator, pairs, theta.numel(), self.sigma, theta)
            particles.load(torch.cat([theta + v, theta - v]))
            losses, state = run_truncation(particles, state, problem.weights[begin:stop], problem.objective)
            finite = bool(torch.isfinite(losses).all())
            steps = (stop - begin) * rows * self.population
            logged = float(losses.mean())
            grads = None
            if finite and (any(problem.weights[begin:stop]) or problem.objective != "loss"):
                delta = (losses[:pairs] - losses[pairs:]).to(v.dtype)
                flat = (delta[:, None] * v).mean(0) / (2 * self.sigma ** 2)
                grads = split_flat(flat, problem.meta_params)
            yield Estimate(grads, logged, steps, finite)
            if not finite:
                return
            state = restart_from(state, 0, self.population, rows)


def es(population: PositiveInt = 8, sigma: Positive = 0.01, truncation: PositiveInt | None = None) -> AntitheticES:
    """Antithetic evolution strategies over the meta-parameters, over full (truncation = horizon) or truncated unrolls."""
    check_population("es", population, sigma)
    return AntitheticES(population, float(sigma), truncation)
