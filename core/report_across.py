"""The report's view across variants and meta-training runs, from the results table
alone: a performance profile and a rank summary over the suite's variants, medians and
log-ratios to the best tuned baseline with bootstrap intervals, quartiles of the log
loss, and each learned optimizer's spread over its meta-training seeds
(:mod:`l2obench.analysis`), as report :class:`~l2obench.report_render.Block` s."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .analysis import meta_seed_spread, performance_profile, rank_summary, robust_summary, seed_scores
from .bootstrap import RESAMPLES
from .report_figures import meta_seed_figure, profile_figure
from .report_render import Block, fmt

__all__ = ["across_blocks", "meta_seed_blocks", "BOOTSTRAP_SEED"]

#: the seed of every bootstrap interval in the report, so a report is reproducible
BOOTSTRAP_SEED = 0


def _interval(estimate: float, low: float, high: float, digits: int = 3) -> str:
    if not math.isfinite(estimate):
        return "diverged" if math.isinf(estimate) else "n/a"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{fmt(estimate, digits)} [{fmt(low, 2)}, {fmt(high, 2)}]"
    return f"{fmt(estimate, digits)} [{fmt(low, digits)}, {fmt(high, digits)}]"


def _ratio_text(estimate: float, low: float, high: float) -> str:
    text = _interval(estimate, low, high)
    if math.isfinite(low) and math.isfinite(high):
        text += " (lower)" if high < 0 else " (higher)" if low > 0 else ""
    return text


def _variant(task: str, horizon: Any) -> str:
    return f"{task} @ T={int(horizon)}"


def across_blocks(results, figures: Path, palette: dict[str, Any], metric: str = "loss",
                  measure: str = "final") -> list[Block]:
    """"Across variants": the performance profile figure and the rank summary; then the
    medians with bootstrap intervals, log-loss quartiles and log-ratios to the best baseline."""
    import pandas as pd

    scores = seed_scores(results, metric, measure)  # once, for every table below
    profile = performance_profile(results, metric, measure, scores=scores)
    if profile.empty:
        return []
    what = f"{measure} {'loss' if metric == 'loss' else metric}"
    variants = profile.attrs["ratios"].groupby(["task", "horizon"]).ngroups
    blocks = [Block("h2", "Across variants"),
              Block("p", f"A performance profile (Dolan and Moré 2002) over the {variants} test variants: for "
                         f"each factor tau, the fraction of variants on which an optimizer's mean {what} over "
                         f"test seeds is within tau times the best optimizer's there (a diverged seed makes the "
                         f"mean inf, never within). Higher and further left is better; the value at tau = 1 is "
                         f"the fraction of variants it was best on. Each meta-training run of a learned "
                         f"optimizer is its own line, in that optimizer's colour.")]
    fig = figures / "performance-profile.png"
    profile_figure(profile, fig, palette, metric)
    blocks.append(Block("img", f"figures/{fig.name}", f"performance profile of the mean {what} over the test variants"))
    if profile.attrs["left_out"]:
        blocks.append(Block("p", "Left out of the profile (a best score that is not positive cannot be compared "
                                 "by ratios): " + ", ".join(profile.attrs["left_out"]) + "."))
    ranks = rank_summary(results, metric, measure, scores=scores)
    blocks.append(Block("p", f"Ranks by mean {what} within each variant (1 is best; ties share the lower rank), "
                             f"summarised over the variants each optimizer ran on."))
    blocks.append(Block("table", pd.DataFrame({
        "optimizer": ranks["run"], "kind": ranks["optimizer_kind"], "variants": ranks["variants"],
        "mean rank": [fmt(float(x), 3) for x in ranks["mean_rank"]],
        "median rank": [fmt(float(x), 3) for x in ranks["median_rank"]],
        "best on": ranks["best"],
        "beats the best tuned baseline on": [b if k == "learned" else "" for b, k in
                                             zip(ranks["beats_best_baseline"], ranks["optimizer_kind"])]})))

    robust = robust_summary(results, metric, measure, seed=BOOTSTRAP_SEED, scores=scores)
    blocks.append(Block("h2", "Medians and bootstrap intervals"))
    heavy = int(robust["heavy_tailed"].sum())
    blocks.append(Block("p", f"Per test variant: the median {what} over test seeds with its 95% percentile "
                             f"bootstrap interval; the quartiles of log10 of the {what} (25% / 50% / 75%), which "
                             f"say more than a mean where losses are heavy-tailed (marked where the mean lies "
                             f"outside the interquartile range: {heavy} of {len(robust)} rows); and log10 of the "
                             f"median over the best tuned baseline's median, with a paired 95% bootstrap interval "
                             f"over the same test optimizees ('lower': the interval lies below 0). "
                             f"{RESAMPLES} resamples, seed {BOOTSTRAP_SEED}, so the intervals are reproducible."))
    rows = []
    for r in robust.to_dict("records"):
        best = r["best_baseline"]
        rows.append({"variant": _variant(r["task"], r["horizon"]), "optimizer": r["run"],
                     "median [95% bootstrap]": _interval(r["median"], r["median_low"], r["median_high"]),
                     "log10 quartiles": " / ".join(fmt(float(r[c]), 3) for c in
                                                   ("log10_q25", "log10_median", "log10_q75")),
                     "mean": fmt(float(r["mean"])) + (" (heavy-tailed)" if r["heavy_tailed"] else ""),
                     "log10 vs best baseline (median, paired)":
                         "(the best baseline)" if r["run"] == best else
                         "no tuned baseline" if not isinstance(best, str) else
                         f"{_ratio_text(r['log10_vs_best'], r['log10_vs_best_low'], r['log10_vs_best_high'])} "
                         f"vs {best}"})
    blocks.append(Block("table", pd.DataFrame(rows)))
    return blocks + meta_seed_blocks(results, robust, figures, palette, metric, measure, scores)


def meta_seed_blocks(results, robust, figures: Path, palette: dict[str, Any], metric: str = "loss",
                     measure: str = "final", scores=None) -> list[Block]:
    """"Meta-training seeds": each learned optimizer with several meta-training runs as
    the spread over them, with a two-level bootstrap interval that includes it, and in
    words whether it beats the best tuned baseline for a typical run or only for some."""
    import pandas as pd

    spread = meta_seed_spread(results, metric, measure, seed=BOOTSTRAP_SEED, scores=scores)
    if spread.empty:
        return []
    what = f"{measure} {'loss' if metric == 'loss' else metric}"
    blocks = [Block("h2", "Meta-training seeds"),
              Block("p", f"Each learned optimizer meta-trained from several seeds, as the spread over its "
                         f"meta-training runs: per variant, log10 of each run's median {what} over the best tuned "
                         f"baseline's (smallest, median and largest over the runs), and their mean with a "
                         f"two-level 95% bootstrap interval (resampling the runs, then each drawn run's test "
                         f"seeds), which holds the luck of meta-training as well as that of the test "
                         f"optimizees. 'typical': whether that interval lies below 0 (better), above 0 (worse) "
                         f"or neither (unclear); 'beat' / 'lost': the runs whose own paired interval lies "
                         f"below / above 0. With few runs the interval is rough.")]
    lines = []
    for opt, g in spread.groupby("optimizer", sort=False):
        n, better, worse = len(g), int((g["typical"] == "better").sum()), int((g["typical"] == "worse").sum())
        some = int((g["beat"] > 0).sum())
        every = int((g["beat"] == g["runs"]).sum())
        lines.append(f"**{opt}** ({int(g['runs'].max())} meta-training runs): a typical run is better than the "
                     f"best tuned baseline on {better} of {n} variants and worse on {worse}; every run beat it "
                     f"(paired 95%) on {every}, at least one run on {some}")
    blocks.append(Block("p", "; ".join(lines) + "."))
    runs = robust[robust["optimizer"].isin(set(spread["optimizer"])) & (robust["optimizer_kind"] == "learned")]
    fig = figures / "meta-seeds.png"
    meta_seed_figure(runs, spread, fig, palette)
    blocks.append(Block("img", f"figures/{fig.name}", "the spread over meta-training runs, per variant"))
    rows = [{"variant": _variant(r["task"], r["horizon"]), "optimizer": r["optimizer"],
             "runs (seeds)": f"{r['runs']} ({', '.join(map(str, r['meta_seeds']))})",
             "vs best baseline": r["best_baseline"],
             "log10 ratio: min / median / max": " / ".join(fmt(float(r[c]), 3) for c in
                                                          ("log10_vs_best_min", "log10_vs_best_median",
                                                           "log10_vs_best_max")),
             "mean [two-level 95%]": _interval(r["log10_vs_best_mean"], r["log10_vs_best_low"],
                                               r["log10_vs_best_high"]),
             "beat / lost": f"{r['beat']} / {r['lost']}", "typical": r["typical"]}
            for r in spread.to_dict("records")]
    blocks.append(Block("table", pd.DataFrame(rows)))
    return blocks
