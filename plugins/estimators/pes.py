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

from l2obench.api import Estimate, MetaProblem, Positive, PositiveInt

from .es import antithetic_episode, check_population


@dataclass(frozen=True)
class PersistentES:
    population: int = 8
    sigma: float = 0.01
    truncation: int | None = None
    differentiable: bool = False

    def episode(self, problem: MetaProblem) -> Iterator[Estimate]:
        return antithetic_episode(problem, self.population, self.sigma, self.truncation, persistent=True)


def pes(population: PositiveInt = 8, sigma: Positive = 0.01, truncation: PositiveInt | None = None) -> PersistentES:
    """Persistent evolution strategies: antithetic ES with per-particle accumulated perturbations, unbiased across truncations."""
    check_population("pes", population, sigma)
    return PersistentES(population, float(sigma), truncation)
