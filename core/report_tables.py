"""The numbers of the report, from the tidy results table alone: per-seed final
and summed losses, and per (variant, optimizer) means with 95% t-intervals, ranks
and paired differences to the best tuned baseline."""
from __future__ import annotations

from typing import Any

from .stats import mean_ci

__all__ = ["per_seed", "summarize", "failed_meta_training"]


def per_seed(test) -> "Any":
    """Per (cell, seed): the final loss (step T-1) and the loss summed over the T steps;
    non-finite values stay non-finite (a diverged seed is not hidden)."""
    import pandas as pd

    rows = []
    keys = ["task", "horizon", "optimizer", "optimizer_id", "optimizer_kind", "lr", "cell_id"]
    for key, g in test.groupby(keys, sort=False, dropna=False):
        g = g.sort_values(["seed", "step"], kind="stable")
        T = int(key[1])
        for seed, s in g.groupby("seed", sort=False):
            losses = s["loss"].to_numpy(dtype=float)
            if len(losses) != T:
                continue
            rows.append((*key, int(seed), float(losses[-1]), float(losses.sum()),
                         int(s["diverged_step"].iloc[0]), float(s["wall_time"].iloc[0])))
    return pd.DataFrame(rows, columns=[*keys, "seed", "final", "summed", "diverged_step", "wall_time"])


def summarize(seeds, order: list[tuple[str, int]] | None = None):
    """One row per (variant, optimizer): mean final and summed loss with 95% t-intervals,
    ranks within the variant, and log10 of the final loss over the best tuned baseline's."""
    import numpy as np
    import pandas as pd

    rows = []
    for (task, horizon, optimizer, opt_id, kind, lr), g in seeds.groupby(
            ["task", "horizon", "optimizer", "optimizer_id", "optimizer_kind", "lr"], sort=False, dropna=False):
        fin = mean_ci(np.where(np.isnan(g["final"]), np.inf, g["final"]))
        tot = mean_ci(np.where(np.isnan(g["summed"]), np.inf, g["summed"]))
        rows.append({"task": task, "horizon": int(horizon), "optimizer": optimizer, "optimizer_id": opt_id,
                     "optimizer_kind": kind, "lr": lr, "seeds": len(g),
                     "diverged": int((g["diverged_step"] >= 0).sum()),
                     "final_mean": fin.mean, "final_low": fin.low, "final_high": fin.high,
                     "summed_mean": tot.mean, "summed_low": tot.low, "summed_high": tot.high})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["final_mean"] = table["final_mean"].astype(float)
    grouped = table.groupby(["task", "horizon"], sort=False)
    table["rank_final"] = grouped["final_mean"].rank(method="min", na_option="bottom").astype(int)
    table["rank_summed"] = grouped["summed_mean"].rank(method="min", na_option="bottom").astype(int)
    best = table[table["optimizer_kind"] == "baseline"].groupby(["task", "horizon"])["final_mean"].min()
    ref = table.set_index(["task", "horizon"]).index.map(lambda k: best.get(k, np.nan))
    with np.errstate(divide="ignore", invalid="ignore"):
        table["log10_vs_best_baseline"] = np.log10(table["final_mean"].to_numpy() / np.asarray(ref, dtype=float))
    for metric in ("final", "summed"):
        paired = _paired_vs_best_baseline(seeds, table, metric)
        values = np.array([paired.get(i, (np.nan,) * 3) for i in table.index], dtype=float).reshape(-1, 3)
        for k, end in enumerate(("mean", "low", "high")):
            table[f"{metric}_vs_best_{end}"] = values[:, k]
    if order:
        rank = {v: i for i, v in enumerate(order)}
        table["_o"] = [rank.get((t, h), len(rank)) for t, h in zip(table["task"], table["horizon"])]
        table = table.sort_values(["_o", "rank_final"], kind="stable").drop(columns="_o")
    return table.reset_index(drop=True)


def _paired_vs_best_baseline(seeds, table, metric: str) -> dict[int, tuple[float, float, float]]:
    """Per row of ``table`` (by index): the mean over shared test seeds of its ``metric``
    minus that of the variant's best tuned baseline (lowest mean ``metric``), with a 95%
    t-interval.  Every optimizer of a variant runs on the same test optimizees, so the
    paired difference is what says "lower" with confidence.  NaN where a seed diverged."""
    import numpy as np

    out: dict[int, tuple[float, float, float]] = {}
    for (task, horizon), rows in table.groupby(["task", "horizon"], sort=False):
        baselines = rows[rows["optimizer_kind"] == "baseline"]
        if baselines.empty:
            continue
        best = baselines.loc[baselines[f"{metric}_mean"].astype(float).idxmin(), "optimizer_id"]
        part = seeds[(seeds["task"] == task) & (seeds["horizon"] == horizon)]
        wide = part.pivot_table(index="seed", columns="optimizer_id", values=metric, aggfunc="first")
        for i, opt_id in zip(rows.index, rows["optimizer_id"]):
            both = wide[[opt_id, best]].dropna(how="all") if opt_id != best else None
            if both is None or both.empty:
                continue
            diff = (both[opt_id] - both[best]).to_numpy(dtype=float)
            if not np.isfinite(diff).all():
                out[i] = (np.nan, np.nan, np.nan)
                continue
            ci = mean_ci(diff)
            out[i] = (ci.mean, ci.low, ci.high)
    return out



def failed_meta_training(manifest: dict[str, Any]):
    """One row per learned optimizer whose meta-training failed in the last run (the
    manifest's failures of ``meta-train NAME`` cells), with the reason."""
    import pandas as pd

    rows = [{"learned optimizer": f["cell"].split(" ", 1)[1], "reason": f["error"]}
            for f in manifest.get("failures") or [] if str(f.get("cell", "")).startswith("meta-train ")]
    return pd.DataFrame(rows, columns=["learned optimizer", "reason"])
