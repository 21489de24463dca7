"""Seeded, reproducible bootstrap intervals: of a statistic over test seeds (a median,
a mean), of the log-ratio of two paired samples (an optimizer against the best tuned
baseline on the same test optimizees), and two-level, over meta-training runs and then
the test seeds within each, so that the interval includes the luck of meta-training.

Every interval is the percentile interval of ``resamples`` resamples drawn from
``numpy.random.default_rng(seed)``: the same data and seed give the same interval.
One level uses :func:`scipy.stats.bootstrap`; the two-level one (resample the runs,
then each drawn run's seeds anew) is written here, as scipy has none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

__all__ = ["Interval", "bootstrap_interval", "paired_log_ratio_interval", "two_level_interval", "STATISTICS",
           "RESAMPLES"]

#: resamples of every bootstrap interval unless told otherwise
RESAMPLES = 2000

Statistic = Union[str, Callable[..., Any]]


def _median(x, axis=-1):
    import numpy as np

    return np.median(x, axis=axis)


def _mean(x, axis=-1):
    import numpy as np

    return np.mean(x, axis=axis)


#: the statistics known by name; a callable ``f(x, axis)`` works too
STATISTICS: dict[str, Callable[..., Any]] = {"median": _median, "mean": _mean}


def _statistic(statistic: Statistic) -> Callable[..., Any]:
    if callable(statistic):
        return statistic
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; known: {', '.join(STATISTICS)} (or a function f(x, axis))")
    return STATISTICS[statistic]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its two-sided bootstrap interval."""

    estimate: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def excludes(self, value: float = 0.0) -> bool:
        """Whether ``value`` lies outside the interval."""
        return self.high < value or self.low > value

    def __format__(self, spec: str) -> str:
        spec = spec or ".4g"
        return f"{self.estimate:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def _percentiles(values, level: float) -> tuple[float, float]:
    import numpy as np

    values = np.asarray(values, dtype=float)
    if np.isnan(values).any():
        return math.nan, math.nan
    tail = 50 * (1 - level)
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_interval(values: Sequence[float], statistic: Statistic = "median", *, level: float = 0.95,
                       resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """``statistic`` of ``values`` (one per test seed) with its percentile bootstrap
    interval; ``seed`` makes it reproducible.  A single value, or values all equal,
    give an interval of zero width; inf values (diverged seeds) are kept."""
    import numpy as np
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    f = _statistic(statistic)
    estimate = float(f(x, axis=-1))
    if x.size == 1 or np.all(x == x[0]):
        return Interval(estimate, estimate, estimate, int(x.size), level)
    with np.errstate(invalid="ignore"):
        res = stats.bootstrap((x,), f, n_resamples=resamples, confidence_level=level, method="percentile",
                              vectorized=True, rng=np.random.default_rng(seed))
    return Interval(estimate, float(res.confidence_interval.low), float(res.confidence_interval.high), int(x.size),
                    level)


def _log10_ratio(statistic: Callable[..., Any]) -> Callable[..., Any]:
    import numpy as np

    def ratio(a, b, axis=-1):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log10(statistic(a, axis=axis) / statistic(b, axis=axis))

    return ratio


def paired_log_ratio_interval(values: Sequence[float], reference: Sequence[float], statistic: Statistic = "median",
                              *, level: float = 0.95, resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """``log10(statistic(values) / statistic(reference))`` with its paired bootstrap
    interval: the two samples are on the same test seeds (row ``i`` of both), and each
    resample draws seeds, keeping the pairs.  Negative: ``values`` are lower."""
    import numpy as np
    from scipy import stats

    a, b = np.asarray(values, dtype=float), np.asarray(reference, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired samples must be two non-empty 1-d arrays of one length, got {a.shape} and {b.shape}")
    ratio = _log10_ratio(_statistic(statistic))
    estimate = float(ratio(a, b))
    if a.size == 1 or not math.isfinite(estimate):
        return Interval(estimate, estimate if a.size == 1 else math.nan, estimate if a.size == 1 else math.nan,
                        int(a.size), level)
    if np.all(a == a[0]) and np.all(b == b[0]):
        return Interval(estimate, estimate, estimate, int(a.size), level)
    with np.errstate(invalid="ignore", divide="ignore"):
        res = stats.bootstrap((a, b), ratio, paired=True, n_resamples=resamples, confidence_level=level,
                              method="percentile", vectorized=True, rng=np.random.default_rng(seed))
    return Interval(estimate, float(res.confidence_interval.low), float(res.confidence_interval.high), int(a.size),
                    level)


def two_level_interval(groups: Sequence[Any], statistic: Callable[..., Any], *, level: float = 0.95,
                       resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """The mean over ``groups`` (meta-training runs) of ``statistic`` of each group, with
    a two-level bootstrap interval: each resample draws as many groups as there are, with
    replacement, and for every group drawn a fresh resample of its rows (test seeds), so
    the interval holds the spread between runs as well as the noise within each.

    A group is an array whose rows (axis 0) are resampled together (pairs stay pairs);
    ``statistic(sample)`` takes a stack of samples ``(R, n, ...)`` and returns ``(R,)``.
    With few groups the interval is too narrow, as every bootstrap is with few data:
    three runs say less than it seems."""
    import numpy as np

    data = [np.asarray(g, dtype=float) for g in groups]
    if not data or any(len(g) == 0 for g in data):
        raise ValueError("two_level_interval needs at least one group, each with at least one row")
    per_group = np.array([float(statistic(g[None])[0]) for g in data])
    with np.errstate(invalid="ignore"):
        estimate = float(per_group.mean())
    rng = np.random.default_rng(seed)
    m = len(data)
    chosen = rng.integers(0, m, size=(resamples, m))
    # draws[j][p, r]: group j resampled afresh for position p of resample r
    draws = []
    for g in data:
        rows = rng.integers(0, len(g), size=(m, resamples, len(g)))
        with np.errstate(invalid="ignore", divide="ignore"):
            draws.append(np.asarray(statistic(g[rows.reshape(m * resamples, len(g))]), dtype=float)
                         .reshape(m, resamples))
    picked = np.stack([draws[j] for j in range(m)])  # (group, position, resample)
    values = picked[chosen.T, np.arange(m)[:, None], np.arange(resamples)[None, :]]  # (position, resample)
    with np.errstate(invalid="ignore"):
        means = values.mean(axis=0)
    low, high = _percentiles(means, level)
    return Interval(estimate, low, high, m, level)
