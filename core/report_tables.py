"""The numbers of the report, from the tidy results table alone: per-seed final
and summed losses, and per (variant, optimizer) means with 95% t-intervals, ranks
and paired differences to the best tuned baseline; and, from the manifest, the
test cells the suite asked for that have no results (failed or not run)."""
from __future__ import annotations

from typing import Any

from .stats import mean_ci

__all__ = ["per_seed", "heldout_per_seed", "summarize", "SUMMARY_COLUMNS", "missing_cells", "failed_meta_training"]

#: the held-out metrics the report summarises at the last step, when a variant has them
HELDOUT_SUMMARY = ("heldout_loss", "heldout_accuracy")

#: The columns of :func:`summarize`'s table (summary.csv), also when it has no rows.
SUMMARY_COLUMNS = [
    "task", "horizon", "optimizer", "optimizer_id", "optimizer_kind", "lr", "seeds", "diverged",
    "final_mean", "final_low", "final_high", "summed_mean", "summed_low", "summed_high",
    "final_ok_mean", "final_ok_low", "final_ok_high", "summed_ok_mean", "summed_ok_low", "summed_ok_high",
    "rank_final", "rank_summed", "best_baseline", "best_baseline_diverged", "best_baseline_seeds",
    "log10_vs_best_baseline", "paired_seeds",
    "final_vs_best_mean", "final_vs_best_low", "final_vs_best_high",
    "summed_vs_best_mean", "summed_vs_best_low", "summed_vs_best_high",
    "heldout_loss_mean", "heldout_loss_low", "heldout_loss_high",
    "heldout_accuracy_mean", "heldout_accuracy_low", "heldout_accuracy_high", "rank_by", "rank",
]


def per_seed(test) -> "Any":
    """Per (cell, seed): the final loss (step T-1) and the loss summed over the T steps;
    non-finite values stay non-finite (a diverged seed is not hidden), and ``diverged``
    says so."""
    import numpy as np
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
            step = int(s["diverged_step"].iloc[0])
            rows.append((*key, int(seed), float(losses[-1]), float(losses.sum()), step,
                         bool(step >= 0 or not np.isfinite(losses).all()), float(s["wall_time"].iloc[0])))
    return pd.DataFrame(rows, columns=[*keys, "seed", "final", "summed", "diverged_step", "diverged", "wall_time"])


def heldout_per_seed(rows, seeds):
    """``seeds`` (:func:`per_seed`) with, per cell and seed, each held-out metric of
    :data:`HELDOUT_SUMMARY` at the last step (step T-1) from the test ``rows`` of every
    metric; NaN where a cell has none."""
    import numpy as np

    out = seeds.copy()
    for metric in HELDOUT_SUMMARY:
        part = rows[(rows["metric"] == metric) & (rows["step"] == rows["horizon"] - 1)]
        last = part.groupby(["cell_id", "seed"], sort=False)["loss"].first()
        out[metric] = [last.get((c, s), np.nan) for c, s in zip(out["cell_id"], out["seed"])] if len(out) else []
    return out


def summarize(seeds, order: list[tuple[str, int]] | None = None, rank: str = "final"):
    """One row per (variant, optimizer): mean final and summed loss with 95% t-intervals
    (a diverged seed counts as inf), the same over the seeds that did not diverge
    (``*_ok_*``), ranks within the variant, log10 of the final loss over the best tuned
    baseline's, and the paired difference to that baseline (see :func:`_paired_vs_best_baseline`);
    held-out loss and accuracy at the last step where ``seeds`` has them
    (:func:`heldout_per_seed`); and ``rank``, by the criterion ``rank``
    (:mod:`l2obench.criteria`; a diverged seed is the worst possible)."""
    import numpy as np
    import pandas as pd

    from . import criteria

    rows = []
    for (task, horizon, optimizer, opt_id, kind, lr), g in seeds.groupby(
            ["task", "horizon", "optimizer", "optimizer_id", "optimizer_kind", "lr"], sort=False, dropna=False):
        ok = g[~g["diverged"].astype(bool)]
        row = {"task": task, "horizon": int(horizon), "optimizer": optimizer, "optimizer_id": opt_id,
               "optimizer_kind": kind, "lr": lr, "seeds": len(g), "diverged": len(g) - len(ok)}
        for metric in ("final", "summed"):
            every = mean_ci(np.where(np.isfinite(g[metric]), g[metric], np.inf))
            kept = mean_ci(ok[metric].to_numpy(dtype=float)) if len(ok) else None
            row.update({f"{metric}_mean": every.mean, f"{metric}_low": every.low, f"{metric}_high": every.high,
                        f"{metric}_ok_mean": kept.mean if kept else np.nan,
                        f"{metric}_ok_low": kept.low if kept else np.nan,
                        f"{metric}_ok_high": kept.high if kept else np.nan})
        for metric in HELDOUT_SUMMARY:
            v = g[metric].to_numpy(dtype=float) if metric in g else np.full(len(g), np.nan)
            ci = mean_ci(criteria.scores(v, metric)) if np.isfinite(v).any() else None
            row.update({f"{metric}_mean": ci.mean if ci else np.nan, f"{metric}_low": ci.low if ci else np.nan,
                        f"{metric}_high": ci.high if ci else np.nan})
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    for c in ("final_mean", "summed_mean"):
        table[c] = table[c].astype(float)
    grouped = table.groupby(["task", "horizon"], sort=False)
    table["rank_final"] = grouped["final_mean"].rank(method="min", na_option="bottom").astype(int)
    table["rank_summed"] = grouped["summed_mean"].rank(method="min", na_option="bottom").astype(int)
    by = {"final": "final_mean", "summed": "summed_mean"}.get(rank, f"{rank}_mean")
    table["rank_by"] = rank
    table["rank"] = table.groupby(["task", "horizon"], sort=False)[by].rank(
        method="min", na_option="bottom", ascending=not criteria.maximised(rank)).astype(int)
    best = _best_baselines(table)
    for column, k in (("best_baseline", "optimizer_id"), ("best_baseline_diverged", "diverged"),
                      ("best_baseline_seeds", "seeds")):
        table[column] = [best[(t, h)][k] if (t, h) in best else (None if k == "optimizer_id" else 0)
                         for t, h in zip(table["task"], table["horizon"])]
    ref = [best[(t, h)]["final_mean"] if (t, h) in best else np.nan for t, h in zip(table["task"], table["horizon"])]
    with np.errstate(divide="ignore", invalid="ignore"):
        table["log10_vs_best_baseline"] = np.log10(table["final_mean"].to_numpy() / np.asarray(ref, dtype=float))
    table["paired_seeds"] = 0
    for metric in ("final", "summed"):
        paired = _paired_vs_best_baseline(seeds, table, metric)
        values = np.array([paired.get(i, (np.nan,) * 4)[:3] for i in table.index], dtype=float).reshape(-1, 3)
        for k, end in enumerate(("mean", "low", "high")):
            table[f"{metric}_vs_best_{end}"] = values[:, k]
        table["paired_seeds"] = [paired[i][3] if i in paired else 0 for i in table.index]
    if order:
        rank = {v: i for i, v in enumerate(order)}
        table["_o"] = [rank.get((t, h), len(rank)) for t, h in zip(table["task"], table["horizon"])]
        table = table.sort_values(["_o", "rank"], kind="stable").drop(columns="_o")
    return table[SUMMARY_COLUMNS].reset_index(drop=True)


def _best_baselines(table) -> dict[tuple[str, int], dict[str, Any]]:
    """Per variant, the best tuned baseline's row: the lowest mean final loss, and among
    baselines that all diverged somewhere (every mean inf), the one that diverged least."""
    out = {}
    baselines = table[table["optimizer_kind"] == "baseline"]
    for (task, horizon), rows in baselines.groupby(["task", "horizon"], sort=False):
        rows = rows.assign(_d=rows["diverged"] / rows["seeds"].clip(lower=1))
        row = rows.sort_values(["final_mean", "_d"], kind="stable", na_position="last").iloc[0]
        out[(task, int(horizon))] = row.to_dict()
    return out


def _paired_vs_best_baseline(seeds, table, metric: str) -> dict[int, tuple[float, float, float, int]]:
    """Per row of ``table`` (by index): the mean over shared test seeds of its ``metric``
    minus that of the variant's best tuned baseline, with a 95% t-interval, and how many
    seeds it pairs.  Every optimizer of a variant runs on the same test optimizees, so the
    paired difference is what says "lower" with confidence.  There is no interval (NaN)
    where either side diverged on a seed, or they share no seed: the report says why."""
    import numpy as np

    out: dict[int, tuple[float, float, float, int]] = {}
    for (task, horizon), rows in table.groupby(["task", "horizon"], sort=False):
        best = rows["best_baseline"].iloc[0]
        if best is None or not isinstance(best, str):
            continue
        part = seeds[(seeds["task"] == task) & (seeds["horizon"] == horizon)]
        # dropna=False keeps an optimizer whose every seed is NaN (diverged) as a column
        wide = part.pivot_table(index="seed", columns="optimizer_id", values=metric, aggfunc="first",
                                dropna=False)
        for i, opt_id in zip(rows.index, rows["optimizer_id"]):
            if opt_id == best or opt_id not in wide.columns or best not in wide.columns:
                continue
            both = wide[[opt_id, best]].dropna(how="all")
            ran = part[part["optimizer_id"].isin([opt_id, best])].groupby("seed")["optimizer_id"].nunique()
            both = both[both.index.isin(ran[ran == 2].index)]
            if both.empty:
                continue
            diff = (both[opt_id] - both[best]).to_numpy(dtype=float)
            if not np.isfinite(diff).all():
                out[i] = (np.nan, np.nan, np.nan, 0)
                continue
            ci = mean_ci(diff)
            out[i] = (ci.mean, ci.low, ci.high, len(diff))
    return out


def missing_cells(manifest: dict[str, Any], summary) -> "Any":
    """The test cells the suite asked for (the manifest's variants, horizons and
    optimizers) without a row in ``summary``: per (task, horizon, optimizer) its
    ``state``, "failed" or "missing", and the ``reason`` (the recorded error, a failed
    meta-training or tuning it needed, or not run yet)."""
    import pandas as pd

    failures = [(str(f.get("cell", "")), str(f.get("error", ""))) for f in manifest.get("failures") or []
                if isinstance(f, dict)]
    present = set(zip(summary["task"], summary["horizon"].astype(int), summary["optimizer"])) if len(summary) else set()
    ids = set(zip(summary["task"], summary["horizon"].astype(int), summary["optimizer_id"])) if len(summary) else set()
    runs_of = manifest.get("learned_runs") or {}
    rows = []
    for v in manifest.get("variants") or []:
        names = v.get("optimizers") or list(manifest.get("learned", [])) + list(manifest.get("baselines", []))
        for horizon in v.get("horizons", []):
            for name in names:
                runs = runs_of.get(name, [name])
                if len(runs) == 1 and (v["task"], int(horizon), name) in present:
                    continue
                for run in runs:  # several meta-training seeds: each run accounted for
                    if len(runs) > 1 and (v["task"], int(horizon), run) in ids:
                        continue
                    rows.append({"task": v["task"], "horizon": int(horizon), "optimizer": run,
                                 **_why_missing(failures, name, v["task"], int(horizon), run)})
    return pd.DataFrame(rows, columns=["task", "horizon", "optimizer", "state", "reason"])


def _why_missing(failures: list[tuple[str, str]], name: str, task: str, horizon: int,
                 run: str | None = None) -> dict[str, str]:
    """Why optimizer ``name`` (its meta-training run ``run``, for one of several
    meta-training seeds) has no results on a variant."""
    run = run or name

    def optimizer_of(cell_id: str) -> tuple[str, list[str]]:
        parts = cell_id.split(" @ ")
        head = parts[0].removeprefix("tune ")
        return (head if run != name else head.split("[", 1)[0]), parts[1:]

    for cell_id, error in failures:
        opt, rest = optimizer_of(cell_id)
        if not cell_id.startswith("tune ") and opt == run and rest == [task, f"T={horizon}"]:
            return {"state": "failed", "reason": error}
    for cell_id, error in failures:
        if cell_id == f"meta-train {run}":
            return {"state": "failed", "reason": f"its meta-training failed: {error}"}
        opt, rest = optimizer_of(cell_id)
        if cell_id.startswith("tune ") and opt == name and rest[:1] == [task]:
            return {"state": "failed", "reason": f"its tuning failed ({cell_id}): {error}"}
    return {"state": "missing", "reason": "not run yet (rerun `l2obench run` to finish the suite)"}


def failed_meta_training(manifest: dict[str, Any]):
    """One row per learned optimizer whose meta-training failed in the last run (the
    manifest's failures of ``meta-train NAME`` cells), with the reason."""
    import pandas as pd

    rows = [{"learned optimizer": f["cell"].split(" ", 1)[1], "reason": f["error"]}
            for f in manifest.get("failures") or [] if str(f.get("cell", "")).startswith("meta-train ")]
    return pd.DataFrame(rows, columns=["learned optimizer", "reason"])
