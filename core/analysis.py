"""Comparisons across a suite's variants and meta-training runs, from the tidy results
table alone (``l2obench.load_results(DIR)``): performance profiles (Dolan and Moré 2002,
as AlgoPerf plots them), a rank summary, medians and log-ratios to the best tuned
baseline with seeded bootstrap intervals, quartiles of the log loss, and the spread of
a learned optimizer over its meta-training seeds.

Every function takes the ``metric`` to compare on (``loss``, the training loss, by
default; any metric of the table's test rows, such as a held-out one) and the
``measure``: ``final`` (the value at the last step recorded) or ``summed`` (over the
steps recorded).  Lower is better, except for metrics named ``...accuracy``.  A *run*
is what is compared: a baseline (with the settings tuned per variant) or a learned
optimizer's meta-training run (``lstm``, or ``lstm[seed=1]`` for one of several seeds).
``scores=seed_scores(results, metric, measure)``, computed once, saves reading a large
table again in each.
"""
from __future__ import annotations

import math
import zlib
from typing import Any

from .bootstrap import RESAMPLES, STATISTICS, bootstrap_interval, paired_log_ratio_interval, two_level_interval

__all__ = ["higher_is_better", "seed_scores", "variant_scores", "performance_profile", "rank_summary",
           "robust_summary", "meta_seed_spread", "MEASURES"]

MEASURES = ("final", "summed")
VARIANT = ["task", "horizon"]
RUN = ["optimizer", "run", "optimizer_kind", "meta_seed"]


def run_labels(frame):
    """What names each row's run: a learned optimizer's id (``lstm``, ``lstm[seed=1]``),
    a baseline's name (its settings are tuned per variant)."""
    import numpy as np

    return np.where(frame["optimizer_kind"] == "learned", frame["optimizer_id"], frame["optimizer"])


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of ``metric`` is better (accuracies); for losses, lower is."""
    return metric.endswith("accuracy")


def _worst(metric: str) -> float:
    return -math.inf if higher_is_better(metric) else math.inf


def seed_scores(results, metric: str = "loss", measure: str = "final"):
    """One row per (variant, run, test seed): ``value``, the ``measure`` of ``metric``
    over that seed's test rows; a diverged seed (NaN or inf anywhere) scores the worst
    value (inf for a loss).  Columns: task, horizon, optimizer, run, optimizer_kind,
    meta_seed, optimizer_id, seed, value."""
    import numpy as np
    import pandas as pd

    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; known: {', '.join(MEASURES)}")
    columns = [*VARIANT, *RUN, "optimizer_id", "seed", "value"]
    if not len(results):
        return pd.DataFrame(columns=columns)
    rows = results[(results["kind"] == "test") & (results["metric"] == metric)]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows = rows.assign(run=run_labels(rows),
                       meta_seed=(rows["meta_seed"].fillna(-1).astype(int) if "meta_seed" in rows
                                  else -1))
    keys = [*VARIANT, *RUN, "optimizer_id", "seed"]
    rows = rows.assign(_ok=np.isfinite(rows["loss"].to_numpy(dtype=float))).sort_values("step", kind="stable")
    grouped = rows.groupby(keys, sort=False, dropna=False)
    value = grouped["loss"].last() if measure == "final" else grouped["loss"].sum()
    out = value.rename("value").reset_index()
    out.loc[~grouped["_ok"].all().to_numpy(), "value"] = _worst(metric)
    out["horizon"] = out["horizon"].astype(int)
    return out[columns]


def _scores(results, metric: str, measure: str, scores):
    """:func:`seed_scores` of ``results``, or ``scores`` where the caller computed them once
    (every function below takes ``scores=seed_scores(results, metric, measure)``)."""
    return seed_scores(results, metric, measure) if scores is None else scores


def variant_scores(scores, statistic: str = "mean"):
    """Per (variant, run), ``statistic`` ("mean" or "median") of :func:`seed_scores`'
    values over test seeds (a mean with a diverged seed is the worst value)."""
    f = STATISTICS[statistic]
    return (scores.groupby([*VARIANT, *RUN], sort=False, dropna=False)["value"]
            .agg(lambda v: float(f(v.to_numpy(dtype=float))) if len(v) else math.nan).rename("score").reset_index())


def _ratios(table, metric: str):
    """Each run's score over the best score of its variant (>= 1; inf where it diverged);
    variants whose best score is not positive cannot be compared by ratios and are left out."""
    import numpy as np

    up = higher_is_better(metric)
    out, left_out = [], []
    for (task, horizon), part in table.groupby(VARIANT, sort=False):
        s = part["score"].to_numpy(dtype=float)
        finite = s[np.isfinite(s)]
        if not finite.size:
            ratio = np.full(len(s), np.inf)
        else:
            best = finite.max() if up else finite.min()
            if best <= 0:
                left_out.append(f"{task} @ T={horizon}")
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = best / s if up else s / best
            ratio = np.where(np.isfinite(ratio) & (ratio > 0), ratio, np.inf)
        out.append(part.assign(ratio=ratio))
    import pandas as pd

    frame = pd.concat(out, ignore_index=True) if out else table.assign(ratio=[]).iloc[:0]
    return frame, left_out


def performance_profile(results, metric: str = "loss", measure: str = "final", statistic: str = "mean",
                        taus=None, *, scores=None):
    """The performance profile of every run over the suite's variants: for each ``tau``,
    the fraction of variants on which its score (``statistic`` over test seeds of
    ``measure`` of ``metric``) is within a factor ``tau`` of the best run's there
    (Dolan and Moré 2002).  ``taus`` default to every ratio that occurs, so the step
    function is exact.  Columns: optimizer, run, optimizer_kind, meta_seed, tau,
    fraction; ``attrs["ratios"]`` holds the ratio per (variant, run), and
    ``attrs["left_out"]`` the variants whose best score is not positive."""
    import numpy as np
    import pandas as pd

    table = variant_scores(_scores(results, metric, measure, scores), statistic)
    ratios, left_out = _ratios(table, metric)
    variants = ratios.groupby(VARIANT, sort=False).ngroups
    if taus is None:
        finite = ratios["ratio"].to_numpy(dtype=float)
        taus = np.unique(np.concatenate([[1.0], finite[np.isfinite(finite)]]))
    taus = np.asarray(taus, dtype=float)
    rows = []
    for key, part in ratios.groupby(RUN, sort=False, dropna=False):
        r = part["ratio"].to_numpy(dtype=float)
        for tau in taus:
            rows.append((*key, float(tau), float((r <= tau).sum() / variants) if variants else math.nan))
    profile = pd.DataFrame(rows, columns=[*RUN, "tau", "fraction"])
    profile.attrs["ratios"] = ratios
    profile.attrs["left_out"] = left_out
    return profile


def rank_summary(results, metric: str = "loss", measure: str = "final", statistic: str = "mean", *, scores=None):
    """Per run, over the variants it ran on: its mean and median rank (1 is best, ties
    share the lower rank), on how many variants it was best, and on how many its score
    beat the best tuned baseline's.  Sorted by mean rank."""
    import numpy as np
    import pandas as pd

    table = variant_scores(_scores(results, metric, measure, scores), statistic)
    if table.empty:
        return pd.DataFrame(columns=[*RUN, "variants", "mean_rank", "median_rank", "best", "beats_best_baseline"])
    up = higher_is_better(metric)
    key = table["score"].where(table["score"].notna(), _worst(metric))
    table = table.assign(_key=-key if up else key)
    table["rank"] = table.groupby(VARIANT, sort=False)["_key"].rank(method="min")
    base = table[table["optimizer_kind"] == "baseline"].groupby(VARIANT, sort=False)["_key"].min()
    ref = [base.get((t, h), np.nan) for t, h in zip(table["task"], table["horizon"])]
    table["beats"] = (table["_key"].to_numpy() < np.asarray(ref, dtype=float)) & (table["optimizer_kind"] != "baseline")
    out = table.groupby(RUN, sort=False, dropna=False).agg(
        variants=("rank", "size"), mean_rank=("rank", "mean"), median_rank=("rank", "median"),
        best=("rank", lambda r: int((r == 1).sum())), beats_best_baseline=("beats", "sum")).reset_index()
    out["beats_best_baseline"] = out["beats_best_baseline"].astype(int)
    return out.sort_values(["mean_rank", "run"], kind="stable").reset_index(drop=True)


def _seed_for(seed: int, *parts: Any) -> int:
    """A bootstrap seed per row, from ``seed`` and what names the row, so a row's interval
    does not change when other rows come and go."""
    return (seed * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % 2**32


def _best_baseline(part, metric: str, statistic: str):
    """The run id of the variant's best tuned baseline by ``statistic`` (None if none)."""
    import numpy as np

    base = part[part["optimizer_kind"] == "baseline"]
    if base.empty:
        return None
    f = STATISTICS[statistic]
    scores = base.groupby("run", sort=False)["value"].agg(lambda v: float(f(v.to_numpy(dtype=float))))
    scores = -scores if higher_is_better(metric) else scores
    scores = scores.where(np.isfinite(scores), np.inf)
    return scores.idxmin()


def _paired(part, run: str, best: str):
    """The values of ``run`` and ``best`` on the test seeds both ran, in seed order."""
    wide = part[part["run"].isin([run, best])].pivot_table(index="seed", columns="run", values="value",
                                                            aggfunc="first")
    wide = wide.dropna()
    if run not in wide or best not in wide:
        return None, None
    return wide[run].to_numpy(dtype=float), wide[best].to_numpy(dtype=float)


def robust_summary(results, metric: str = "loss", measure: str = "final", *, level: float = 0.95,
                   resamples: int = RESAMPLES, seed: int = 0, scores=None):
    """Per (variant, run): the median over test seeds with its bootstrap interval; the
    quartiles of ``log10`` of the values (for a heavy-tailed loss, where a mean says
    little); the mean, and ``heavy_tailed`` where the mean lies outside the interquartile
    range; and ``log10`` of the run's median over the best tuned baseline's (by median;
    the baseline's over the run's for accuracies, so below 0 is better either way), with a
    paired bootstrap interval over the shared test seeds.  ``seed`` makes every
    interval reproducible."""
    import numpy as np
    import pandas as pd

    scores = _scores(results, metric, measure, scores)
    rows = []
    for (task, horizon), part in scores.groupby(VARIANT, sort=False):
        best = _best_baseline(part, metric, "median")
        for key, g in part.groupby(RUN, sort=False, dropna=False):
            x = g["value"].to_numpy(dtype=float)
            med = bootstrap_interval(x, "median", level=level, resamples=resamples,
                                     seed=_seed_for(seed, task, horizon, key[1], "median"))
            with np.errstate(divide="ignore", invalid="ignore"):
                logs = np.log10(np.where(x > 0, x, np.nan))
                q25, q50, q75 = (np.nanpercentile(logs, [25, 50, 75]) if not np.isnan(logs).all()
                                 else (np.nan,) * 3)
                lo, hi = np.percentile(x, [25, 75])
            mean = float(np.mean(x))
            ratio = None
            if best is not None and key[1] != best:
                a, b = _paired(part, key[1], best)
                if a is not None and len(a):
                    a, b = (b, a) if higher_is_better(metric) else (a, b)  # below 0: better, either way
                    ratio = paired_log_ratio_interval(a, b, "median", level=level, resamples=resamples,
                                                      seed=_seed_for(seed, task, horizon, key[1], "ratio"))
            rows.append({"task": task, "horizon": int(horizon), **dict(zip(RUN, key)), "seeds": len(x),
                         "median": med.estimate, "median_low": med.low, "median_high": med.high,
                         "log10_q25": float(q25), "log10_median": float(q50), "log10_q75": float(q75),
                         "mean": mean, "heavy_tailed": bool(np.isfinite(mean) and not lo <= mean <= hi),
                         "best_baseline": best,
                         "log10_vs_best": ratio.estimate if ratio else (0.0 if key[1] == best else math.nan),
                         "log10_vs_best_low": ratio.low if ratio else math.nan,
                         "log10_vs_best_high": ratio.high if ratio else math.nan})
    return pd.DataFrame(rows, columns=[*VARIANT, *RUN, "seeds", "median", "median_low", "median_high", "log10_q25",
                                       "log10_median", "log10_q75", "mean", "heavy_tailed", "best_baseline",
                                       "log10_vs_best", "log10_vs_best_low", "log10_vs_best_high"])


def meta_seed_spread(results, metric: str = "loss", measure: str = "final", *, level: float = 0.95,
                     resamples: int = RESAMPLES, seed: int = 0, scores=None):
    """Per (variant, learned optimizer with several meta-training runs): ``log10`` of
    each run's median over the best tuned baseline's (by median), its smallest, median
    and largest over the runs, and the mean over runs with a two-level bootstrap
    interval (the runs resampled, then each drawn run's test seeds, pairs kept), which
    holds the spread between meta-training runs.  ``beat`` / ``lost``: the runs whose own
    paired interval lies below / above 0.  ``typical``: "better", "worse" or "unclear",
    whether the two-level interval lies below or above 0 (lower is better for losses;
    the ratio is the baseline's over the run's for accuracies, so below 0 is better too)."""
    import numpy as np
    import pandas as pd

    scores = _scores(results, metric, measure, scores)
    learned = scores[scores["optimizer_kind"] == "learned"]
    runs_of = learned.groupby("optimizer", sort=False)["run"].unique()
    several = [o for o, r in runs_of.items() if len(r) > 1]
    up = higher_is_better(metric)
    f = STATISTICS["median"]

    def ratio(sample):  # (R, n, 2): the run's seeds next to the baseline's
        with np.errstate(divide="ignore", invalid="ignore"):
            a, b = f(sample[..., 0], axis=1), f(sample[..., 1], axis=1)
            return np.log10(b / a) if up else np.log10(a / b)

    rows = []
    for (task, horizon), part in scores.groupby(VARIANT, sort=False):
        best = _best_baseline(part, metric, "median")
        if best is None:
            continue
        for opt in several:
            groups, each, beat, lost, seeds = [], [], 0, 0, []
            for run in runs_of[opt]:
                a, b = _paired(part, run, best)
                if a is None or not len(a):
                    continue
                pair = np.stack([a, b], axis=1)
                groups.append(pair)
                seeds.append(int(part.loc[part["run"] == run, "meta_seed"].iloc[0]))
                own = paired_log_ratio_interval(b, a, "median", level=level, resamples=resamples,
                                                seed=_seed_for(seed, task, horizon, run, "spread")) if up else \
                    paired_log_ratio_interval(a, b, "median", level=level, resamples=resamples,
                                              seed=_seed_for(seed, task, horizon, run, "spread"))
                each.append(own.estimate)
                beat += int(own.high < 0)
                lost += int(own.low > 0)
            if len(groups) < 2:
                continue
            iv = two_level_interval(groups, ratio, level=level, resamples=resamples,
                                    seed=_seed_for(seed, task, horizon, opt, "two-level"))
            typical = "better" if iv.high < 0 else "worse" if iv.low > 0 else "unclear"
            values = np.asarray(each, dtype=float)
            rows.append({"task": task, "horizon": int(horizon), "optimizer": opt, "best_baseline": best,
                         "runs": len(groups), "meta_seeds": seeds,
                         "log10_vs_best_min": float(np.min(values)), "log10_vs_best_median": float(np.median(values)),
                         "log10_vs_best_max": float(np.max(values)), "log10_vs_best_mean": iv.estimate,
                         "log10_vs_best_low": iv.low, "log10_vs_best_high": iv.high,
                         "beat": beat, "lost": lost, "typical": typical})
    return pd.DataFrame(rows, columns=["task", "horizon", "optimizer", "best_baseline", "runs", "meta_seeds",
                                       "log10_vs_best_min", "log10_vs_best_median", "log10_vs_best_max",
                                       "log10_vs_best_mean", "log10_vs_best_low", "log10_vs_best_high", "beat",
                                       "lost", "typical"])
