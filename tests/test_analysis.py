"""Comparisons across variants and meta-training runs on constructed tables:
performance profiles, the rank summary, bootstrap intervals (reproducible for a
seed, covering the true value at about their nominal rate), log-loss quartiles and
the spread over meta-training seeds."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from l2obench.analysis import meta_seed_spread, performance_profile, rank_summary, robust_summary, seed_scores
from l2obench.bootstrap import bootstrap_interval, paired_log_ratio_interval, two_level_interval


def results(finals: dict[tuple[str, str], list[float]], metric: str = "loss", steps: int = 3) -> pd.DataFrame:
    """A results table of test rows: ``finals[(variant, run)]`` are the final values per
    seed, earlier steps twice as large; a run ``name[seed=s]`` is learned, with meta-seed s."""
    rows = []
    for (task, run), values in finals.items():
        learned = "[" in run or run.startswith("lstm")
        name = run.split("[")[0]
        meta = int(run.split("=")[1].rstrip("]")) if "[seed=" in run else -1
        for seed, v in enumerate(values):
            for step in range(steps):
                rows.append({"kind": "test", "metric": metric, "task": task, "horizon": steps, "optimizer": name,
                             "optimizer_id": run if learned else f"{run}[lr=0.1]",
                             "optimizer_kind": "learned" if learned else "baseline", "meta_seed": meta,
                             "seed": seed, "step": step, "loss": v * (2 if step < steps - 1 else 1)})
    return pd.DataFrame(rows)


INF = math.nan  # a seed whose last loss is NaN diverged
PROFILE = results({
    ("v1", "adam"): [1, 1, 1], ("v1", "sgd"): [2, 2, 2], ("v1", "lstm"): [4, 4, 4],
    ("v2", "adam"): [3, 3, 3], ("v2", "sgd"): [1.5, 1.5, 1.5], ("v2", "lstm"): [1.2, 1.2, 1.2],
    ("v3", "adam"): [1, 1, 1], ("v3", "sgd"): [1, INF, 1], ("v3", "lstm"): [1, 1, 1],
})


def test_performance_profile_on_a_constructed_table():
    profile = performance_profile(PROFILE)
    assert sorted(profile["tau"].unique()) == [1.0, 1.25, 2.0, 2.5, 4.0]
    got = {(r, t): f for r, t, f in zip(profile["run"], profile["tau"], profile["fraction"])}
    expected = {"adam": [2, 2, 2, 3, 3], "sgd": [0, 1, 2, 2, 2], "lstm": [2, 2, 2, 2, 3]}
    for run, counts in expected.items():
        assert [got[(run, t)] for t in (1.0, 1.25, 2.0, 2.5, 4.0)] == pytest.approx([c / 3 for c in counts]), run
    ratios = profile.attrs["ratios"]
    assert ratios.loc[(ratios["task"] == "v3") & (ratios["run"] == "sgd"), "ratio"].item() == math.inf
    scores = seed_scores(PROFILE)
    assert performance_profile(PROFILE, scores=scores).equals(profile)
    assert rank_summary(None, scores=scores).equals(rank_summary(PROFILE))
    at = performance_profile(PROFILE, taus=[1.1, 3.0])
    assert sorted(at["tau"].unique()) == [1.1, 3.0]


def test_performance_profile_of_an_accuracy_is_within_a_factor_below_the_best():
    acc = results({("v1", "adam"): [0.9, 0.9], ("v1", "sgd"): [0.45, 0.45]}, metric="heldout_accuracy")
    ratios = performance_profile(acc, metric="heldout_accuracy").attrs["ratios"]
    assert dict(zip(ratios["run"], ratios["ratio"])) == {"adam": 1.0, "sgd": 2.0}


def test_summed_measure_sums_the_steps():
    scores = seed_scores(PROFILE, measure="summed")
    row = scores[(scores["task"] == "v1") & (scores["run"] == "sgd")]
    assert row["value"].tolist() == [10.0, 10.0, 10.0]  # 4 + 4 + 2
    with pytest.raises(ValueError, match="unknown measure 'last'"):
        seed_scores(PROFILE, measure="last")


def test_rank_summary_on_a_constructed_table():
    ranks = rank_summary(PROFILE)
    assert ranks["run"].tolist() == ["adam", "lstm", "sgd"]
    assert ranks["mean_rank"].tolist() == pytest.approx([5 / 3, 5 / 3, 7 / 3])
    assert ranks["best"].tolist() == [2, 2, 0]
    assert ranks["beats_best_baseline"].tolist() == [0, 1, 0]
    assert ranks["variants"].tolist() == [3, 3, 3]


@settings(max_examples=25, deadline=None)
@given(arrays(np.float64, st.integers(2, 40), elements=st.floats(1e-6, 1e6)), st.integers(0, 2**31))
def test_bootstrap_intervals_are_reproducible_for_a_seed(values, seed):
    one = bootstrap_interval(values, "median", seed=seed, resamples=200)
    assert bootstrap_interval(values, "median", seed=seed, resamples=200) == one
    assert one.low <= one.high and one.n == len(values)
    pair = paired_log_ratio_interval(values, values[::-1], seed=seed, resamples=200)
    assert paired_log_ratio_interval(values, values[::-1], seed=seed, resamples=200) == pair
    groups = [values[: len(values) // 2 + 1], values[len(values) // 2:]]
    two = two_level_interval(groups, lambda s: np.median(s, axis=1), seed=seed, resamples=200)
    assert two_level_interval(groups, lambda s: np.median(s, axis=1), seed=seed, resamples=200) == two


def test_bootstrap_intervals_cover_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(20261201)
    trials = 400
    covered = sum(bootstrap_interval(rng.normal(3.0, 2.0, size=50), "mean", seed=i, resamples=1000).excludes(3.0)
                  is False for i in range(trials))
    assert 0.91 <= covered / trials <= 0.98


def test_the_two_level_interval_covers_the_mean_over_runs_where_pooling_does_not():
    rng = np.random.default_rng(7)
    trials, two, pooled = 200, 0, 0
    for i in range(trials):  # 8 runs, each its own mean around 0, 20 seeds each
        groups = [rng.normal(rng.normal(0.0, 1.0), 1.0, size=20) for _ in range(8)]
        two += not two_level_interval(groups, lambda s: s.mean(axis=1), seed=i, resamples=500).excludes(0.0)
        pooled += not bootstrap_interval(np.concatenate(groups), "mean", seed=i, resamples=500).excludes(0.0)
    assert 0.85 <= two / trials <= 0.99
    assert pooled / trials < 0.75  # one level misses the spread between runs


def test_robust_summary_medians_quartiles_and_ratio_to_the_best_baseline():
    heavy = [1.0] * 18 + [1e3, 1e4]
    table = results({("v", "adam"): heavy, ("v", "sgd"): [2.0] * 20,
                     ("v", "lstm"): [0.5] * 18 + [500.0, 5e3]})
    summary = robust_summary(table).set_index("run")
    assert summary.loc["adam", "median"] == 1.0 and summary.loc["adam", "heavy_tailed"]
    assert not summary.loc["sgd", "heavy_tailed"]
    assert summary.loc["adam", "log10_median"] == 0.0 and summary.loc["adam", "log10_q75"] == 0.0
    assert summary.loc["lstm", "best_baseline"] == "adam"
    assert summary.loc["lstm", "log10_vs_best"] == pytest.approx(math.log10(0.5))
    assert summary.loc["lstm", "log10_vs_best_high"] < 0
    assert summary.loc["adam", "log10_vs_best"] == 0.0
    assert robust_summary(table, seed=3).equals(robust_summary(table, seed=3))


def test_meta_seed_spread_tells_a_typical_run_from_a_lucky_one():
    base = list(np.linspace(1.0, 2.0, 20))
    lucky = results({("v", "adam"): base, ("v", "lstm[seed=0]"): [0.5 * b for b in base],
                     ("v", "lstm[seed=1]"): [2.0 * b for b in base], ("v", "lstm[seed=2]"): [2.2 * b for b in base]})
    row = meta_seed_spread(lucky).iloc[0]
    assert (row["optimizer"], row["runs"], row["meta_seeds"], row["best_baseline"]) == ("lstm", 3, [0, 1, 2], "adam")
    assert (row["beat"], row["lost"], row["typical"]) == (1, 2, "unclear")
    assert row["log10_vs_best_min"] == pytest.approx(math.log10(0.5))
    assert row["log10_vs_best_max"] == pytest.approx(math.log10(2.2))
    assert row["log10_vs_best_low"] <= row["log10_vs_best_mean"] <= row["log10_vs_best_high"]
    typical = results({("v", "adam"): base, **{("v", f"lstm[seed={s}]"): [f * b for b in base]
                                               for s, f in enumerate((0.5, 0.55, 0.6))}})
    row = meta_seed_spread(typical).iloc[0]
    assert (row["beat"], row["lost"], row["typical"]) == (3, 0, "better")
    assert meta_seed_spread(PROFILE).empty  # one run per learned optimizer: no spread to show
