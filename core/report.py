"""The generalization report of a run directory: REPORT.md, index.html, figures, summary.csv.

It reads the results table and the manifest only (never training code), so
any run directory, also a copied or partial one, can be reported on:

- loss curves per test variant (task config and horizon): median over test seeds
  and the 2.5-97.5 percentile band, log scale, as in the paper's Fig. 4 and 5;
  baselines with the settings tuned on validation optimizees;
- a generalization heatmap: optimizer x variant, ``log10`` of the mean final loss
  over the best tuned baseline's (negative: better than every baseline);
- a table per variant of mean final and summed losses with 95% t-intervals
  over seeds, and their ranks; the settings tuning chose; meta-training curves;
- the runs that diverged, and any reference numbers the suite quotes, next to ours.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import store
from .stats import mean_ci


@dataclass
class Block:
    """One piece of the report, rendered to Markdown and to HTML alike."""

    kind: str  # "h1", "h2", "h3", "p", "table", "img", "pre"
    content: Any
    caption: str = ""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:80] or "figure"


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:.{digits}g}"
    return str(x)


def _diff_text(mean: float, low: float, high: float) -> str:
    """A paired difference with its 95% interval, marked when the interval excludes 0."""
    if not math.isfinite(mean):
        return ""
    mark = " (lower)" if high < 0 else " (higher)" if low > 0 else ""
    return f"{_ci_text(mean, low, high)}{mark}"


def _ci_text(mean: float, low: float, high: float) -> str:
    if not math.isfinite(mean):
        return "diverged" if math.isinf(mean) or math.isnan(mean) else _fmt(mean)
    half = (high - low) / 2
    return f"{_fmt(mean)} ± {_fmt(half, 2)}" if math.isfinite(half) else _fmt(mean)


# -- numbers ---------------------------------------------------------------------------

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


# -- figures -----------------------------------------------------------------------------

def plotting():
    """matplotlib's pyplot (the Agg backend) and seaborn with the report's theme.  Loading
    them takes about a second: ``l2obench run --report`` calls this in a thread while the
    cells run, so the report does not wait for it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def _palette(optimizers: list[str]) -> dict[str, Any]:
    import seaborn as sns

    colors = sns.color_palette("tab10", n_colors=max(10, len(optimizers)))
    return {o: colors[i % len(colors)] for i, o in enumerate(optimizers)}


def curves_figure(test, task: str, horizon: int, palette, path: Path) -> None:
    """Median loss over seeds per step with the 95% percentile band, log scale."""
    import numpy as np

    plt, _ = plotting()
    data = test[(test["task"] == task) & (test["horizon"] == horizon)]
    lows, tops = [], []
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.14, top=0.92)  # fixed: tight_layout is slow
    for (optimizer, opt_id), g in data.groupby(["optimizer", "optimizer_id"], sort=False):
        m = g.pivot_table(index="seed", columns="step", values="loss", aggfunc="first", dropna=False)
        values = m.to_numpy(dtype=float)
        values = np.where(np.isfinite(values), values, np.inf)
        steps = m.columns.to_numpy()
        with np.errstate(invalid="ignore"):  # inf (diverged) seeds sit at the top of the band
            med = np.median(values, axis=0)
            lo, hi = np.percentile(values, [2.5, 97.5], axis=0)
        ok = np.isfinite(med) & (med > 0)
        if ok.any():
            tops.append(med[ok].max())
            positive = np.where(np.isfinite(lo) & (lo > 0), lo, np.nan)
            lows.append(np.nanmin(positive) if (lo > 0).any() else med[ok].min())
        color = palette.get(optimizer)
        ax.plot(steps[ok], med[ok], label=opt_id, color=color, lw=1.4)
        band = np.isfinite(lo) & np.isfinite(hi) & (lo > 0)
        ax.fill_between(steps[band], lo[band], hi[band], color=color, alpha=0.15, lw=0)
    ax.set_yscale("log")
    if tops:  # a diverging seed's band would stretch the axis over dozens of decades
        finite_lows = [x for x in lows if np.isfinite(x)]
        ax.set_ylim(bottom=0.7 * min(finite_lows) if finite_lows else None, top=3 * max(tops))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"{task} @ T={horizon}", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heatmap_figure(summary, path: Path, order: list[tuple[str, int]], optimizers: list[str]) -> None:
    """log10(mean final loss / best tuned baseline's) for every optimizer x variant."""
    import numpy as np

    plt, sns = plotting()
    labels = [f"{t} @ T={h}" for t, h in order]
    frame = summary.assign(variant=[f"{t} @ T={h}" for t, h in zip(summary["task"], summary["horizon"])])
    grid = frame.pivot_table(index="optimizer", columns="variant", values="log10_vs_best_baseline",
                             aggfunc="first", dropna=False)
    grid = grid.reindex(columns=[c for c in labels if c in grid.columns],
                        index=[o for o in optimizers if o in set(summary["optimizer"])])
    values = grid.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    vmax = max(0.05, float(np.abs(finite).max())) if finite.size else 1.0
    width = max(len(str(i)) for i in grid.index) * 0.07
    fig, ax = plt.subplots(figsize=(2.0 + width + 1.1 * grid.shape[1], 1.8 + 0.4 * grid.shape[0]))
    annot = np.vectorize(lambda v: "div." if not np.isfinite(v) else f"{v:+.2f}")(values) if values.size else None
    sns.heatmap(np.where(np.isfinite(values), values, np.nan), ax=ax, cmap="RdBu_r", center=0, vmin=-vmax,
                vmax=vmax, annot=annot, fmt="", annot_kws={"fontsize": 7}, cbar_kws={"label": "log10 ratio"},
                xticklabels=list(grid.columns), yticklabels=list(grid.index), linewidths=0.5)
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_title("final loss vs the best tuned baseline (log10; < 0 is better)", fontsize=9)
    plt.setp(ax.get_xticklabels(), rotation=35, ha="right", fontsize=7)
    plt.setp(ax.get_yticklabels(), rotation=0, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def meta_train_figure(meta, path: Path) -> None:
    plt, _ = plotting()
    names = list(dict.fromkeys(meta["optimizer"]))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.95, wspace=0.3)
    palette = _palette(names)
    for name in names:
        g = meta[meta["optimizer"] == name]
        tr = g[g["metric"] == "meta_loss"].sort_values("step")
        va = g[g["metric"] == "validation_loss"].sort_values("step")
        axes[0].plot(tr["step"], tr["loss"], lw=0.8, color=palette[name], label=name)
        axes[1].plot(va["step"], va["loss"], marker="o", ms=3, color=palette[name], label=name)
    axes[0].set(xlabel="episode", ylabel="meta-loss", yscale="log")
    axes[1].set(xlabel="epoch", ylabel="validation loss (summed)", yscale="log")
    for ax in axes:
        ax.legend(fontsize=7, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- rendering ----------------------------------------------------------------------------

def _md_table(frame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def _html_table(frame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.content)
        elif b.kind == "p":
            out.append(b.content)
        elif b.kind == "pre":
            out.append("```\n" + b.content + "\n```")
        elif b.kind == "table":
            out.append(_md_table(b.content))
        elif b.kind == "img":
            out.append(f"![{b.caption}]({b.content})")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[Block], title: str) -> str:
    parts = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind}>{html.escape(b.content)}</{b.kind}>")
        elif b.kind == "p":
            text = html.escape(b.content)
            text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
            text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
            parts.append(f"<p>{text}</p>")
        elif b.kind == "pre":
            parts.append(f"<pre>{html.escape(b.content)}</pre>")
        elif b.kind == "table":
            parts.append(_html_table(b.content))
        elif b.kind == "img":
            parts.append(f'<figure><img src="{html.escape(b.content)}" alt="{html.escape(b.caption)}">'
                         f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}"
             "td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f3f3f3}"
             "img{max-width:100%}figure{margin:1em 0}figcaption{font-size:12px;color:#555}"
             "code,pre{background:#f6f6f6}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


# -- the report --------------------------------------------------------------------------

def write_report(directory: str | Path) -> dict[str, Path]:
    """Write REPORT.md, index.html, figures/*.png and summary.csv into ``directory``."""
    import pandas as pd

    from .errors import ConfigError

    directory = Path(directory)
    manifest = store.read_manifest(directory)
    df = store.load_results(directory)
    test = df[(df["kind"] == "test") & (df["metric"] == "loss")] if len(df) else df
    if test.empty:
        raise ConfigError(f"{directory}: no test results yet; run `l2obench run` to finish the suite")
    figures = directory / "figures"
    figures.mkdir(exist_ok=True)

    variants = [(v["task"], h) for v in manifest.get("variants", []) for h in v["horizons"]]
    present = set(zip(test["task"], test["horizon"].astype(int)))
    order = [v for v in dict.fromkeys(variants) if v in present]
    order += sorted(present - set(order))
    seeds = per_seed(test)
    summary = summarize(seeds, order)
    summary.to_csv(directory / "summary.csv", index=False)
    optimizers = list(dict.fromkeys(list(manifest.get("learned", [])) + list(manifest.get("baselines", []))
                                    + list(summary["optimizer"])))
    palette = _palette(optimizers)

    name = manifest.get("suite", "suite")
    blocks: list[Block] = [Block("h1", f"{name}: l2obench report")]
    if manifest.get("description"):
        blocks.append(Block("p", manifest["description"]))
    blocks += _run_blocks(manifest, seeds)

    blocks.append(Block("h2", "Generalization"))
    heat = figures / "heatmap.png"
    heatmap_figure(summary, heat, order, optimizers)
    blocks.append(Block("img", f"figures/{heat.name}", "log10 of each optimizer's mean final test loss over "
                                                       "the best tuned baseline's, per test variant"))
    wins = summary[summary["optimizer_kind"] == "learned"]
    if len(wins):
        lines = []
        for opt, g in wins.groupby("optimizer", sort=False):
            better = int((g["log10_vs_best_baseline"] < 0).sum())
            sure = int(((g["final_vs_best_high"] < 0) & (g["summed_vs_best_high"] < 0)).sum())
            lines.append(f"**{opt}** has a lower mean final loss than every tuned baseline on {better} of "
                         f"{len(g)} test variants, and lower final and summed losses with 95% confidence "
                         f"(paired over the same test optimizees) on {sure}")
        blocks.append(Block("p", "; ".join(lines) + "."))

    refs = manifest.get("references") or []
    if refs:
        blocks.append(Block("h2", "Reference numbers"))
        blocks.append(Block("p", "Published numbers quoted by the suite next to ours (mean over our test "
                                 "seeds with 95% t-interval; the learning rate is the one tuning chose)."))
        blocks.append(Block("table", _reference_table(refs, summary)))

    blocks.append(Block("h2", "Test variants"))
    blocks.append(Block("p", "Final loss: mean loss at the last step, over test seeds; summed loss: the loss "
                             "summed over the horizon (the paper's measure); ± is the 95% t-interval half-width; "
                             "rank 1 is best. Curves: median over seeds, band 2.5-97.5 percentile."))
    for task, horizon in order:
        label = f"{task} @ T={horizon}"
        blocks.append(Block("h3", label))
        fig = figures / f"curves-{_slug(label)}.png"
        curves_figure(test, task, horizon, palette, fig)
        blocks.append(Block("img", f"figures/{fig.name}", f"test loss, {label}"))
        part = summary[(summary["task"] == task) & (summary["horizon"] == horizon)]
        blocks.append(Block("table", pd.DataFrame({
            "optimizer": part["optimizer_id"],
            "final loss": [_ci_text(m, lo, hi) for m, lo, hi in zip(part["final_mean"], part["final_low"],
                                                                     part["final_high"])],
            "rank": part["rank_final"],
            "summed loss": [_ci_text(m, lo, hi) for m, lo, hi in zip(part["summed_mean"], part["summed_low"],
                                                                      part["summed_high"])],
            "rank (summed)": part["rank_summed"],
            "final − best baseline (paired)": [_diff_text(m, lo, hi) for m, lo, hi in zip(
                part["final_vs_best_mean"], part["final_vs_best_low"], part["final_vs_best_high"])],
            "summed − best baseline (paired)": [_diff_text(m, lo, hi) for m, lo, hi in zip(
                part["summed_vs_best_mean"], part["summed_vs_best_low"], part["summed_vs_best_high"])],
            "diverged": [f"{d}/{n}" for d, n in zip(part["diverged"], part["seeds"])],
        })))

    tuning = manifest.get("tuning") or {}
    rank = {v: i for i, v in enumerate(order)}
    if tuning:
        blocks.append(Block("h2", "Tuning"))
        blocks.append(Block("p", f"Each baseline's settings chosen per test variant on "
                                 f"{len(manifest.get('validation_seeds', []))} validation optimizees by the "
                                 f"rule '{manifest.get('tune_rule', 'final')}' (mean "
                                 f"{'final' if manifest.get('tune_rule', 'final') == 'final' else 'summed'} "
                                 f"loss; a diverged seed counts as inf)."))
        rows = [{"baseline": t["baseline"], "variant": f"{t['task']} @ T={t['horizon']}", "chosen": t["chosen"],
                 "validation score": min(t["scores"].values()),
                 "grid": ", ".join(f"{k.split('[', 1)[-1].rstrip(']')}: {_fmt(v, 3)}" for k, v in t["scores"].items())}
                for t in sorted(tuning.values(), key=lambda t: (rank.get((t["task"], t["horizon"]), len(rank)),
                                                                t["baseline"]))]
        blocks.append(Block("table", pd.DataFrame(rows)))

    meta = df[df["kind"] == "meta-train"] if len(df) else df
    if len(meta):
        blocks.append(Block("h2", "Meta-training"))
        fig = figures / "meta-training.png"
        meta_train_figure(meta, fig)
        blocks.append(Block("img", f"figures/{fig.name}", "meta-loss per episode and validation loss per epoch; "
                                                           "the meta-parameters of the best validation were kept"))
        rows = []
        for opt, g in meta.groupby("optimizer", sort=False):
            va = g[g["metric"] == "validation_loss"]
            best = va.loc[va["loss"].idxmin()] if len(va) and va["loss"].notna().any() else None
            rows.append({"optimizer": opt, "plugin": g["optimizer_plugin"].iloc[0], "task": g["task"].iloc[0],
                         "horizon": int(g["horizon"].iloc[0]),
                         "episodes": int((g["metric"] == "meta_loss").sum()),
                         "best epoch": int(best["step"]) if best is not None else "",
                         "best validation loss": float(best["loss"]) if best is not None else math.nan,
                         "wall time (s)": float(g["wall_time"].iloc[0]),
                         "checkpoint": str(g["checkpoint"].iloc[0])[:12]})
        blocks.append(Block("table", pd.DataFrame(rows)))

    blocks.append(Block("h2", "Diverged runs"))
    div = df[(df["status"] == "diverged") & (df["metric"] == "loss")] if len(df) else df
    if len(div):
        first = div.groupby(["kind", "cell_id", "seed"], sort=False)["diverged_step"].first().reset_index()
        agg = first.groupby(["kind", "cell_id"], sort=False).agg(
            seeds=("seed", "size"), first_step=("diverged_step", "min"),
            seed_list=("seed", lambda s: ", ".join(map(str, list(s)[:8])) + (" ..." if len(s) > 8 else ""))
        ).reset_index().sort_values("kind", key=lambda k: k != "test", kind="stable")
        blocks.append(Block("p", "A run diverged when its loss became NaN or inf; it is recorded with the "
                                 "first non-finite step and counted as inf when tuning and ranking."))
        blocks.append(Block("table", agg.rename(columns={"seeds": "diverged seeds", "first_step": "first step",
                                                          "seed_list": "seeds"})))
    else:
        blocks.append(Block("p", "No run diverged."))

    paths = {"markdown": directory / "REPORT.md", "html": directory / "index.html",
             "summary": directory / "summary.csv", "figures": figures}
    store.atomic_write_bytes(paths["markdown"], render_markdown(blocks).encode())
    store.atomic_write_bytes(paths["html"], render_html(blocks, f"{name}: l2obench report").encode())
    return paths


def _run_blocks(manifest: dict[str, Any], seeds) -> list[Block]:
    versions = manifest.get("versions", {})
    timing = manifest.get("timing") or {}
    lines = [
        f"suite file: {manifest.get('suite_file')} (sha256 {str(manifest.get('suite_sha256'))[:12]})",
        f"command: {' '.join(manifest.get('command') or [])}",
        f"status: {manifest.get('status')}; started {manifest.get('started')}, ended {manifest.get('ended')}",
        f"device: {manifest.get('device')}; executor: {manifest.get('executor')} with {manifest.get('workers')} "
        f"workers; host: {manifest.get('host', {}).get('platform')}, {manifest.get('host', {}).get('cpus')} cpus",
        f"versions: l2obench {versions.get('l2obench')}, torch {versions.get('torch')}, python "
        f"{versions.get('python')}; plugins: "
        + ", ".join(f"{d} {v}" for d, v in (versions.get("plugins") or {}).items()),
        f"seeds: {len(manifest.get('test_seeds', []))} test optimizees per cell (split test), "
        f"{len(manifest.get('validation_seeds', []))} validation optimizees for tuning (split validation)",
    ]
    if timing:
        lines.append(f"last run: {timing.get('cells_run')} cells in {timing.get('wall_s', 0):.1f} s; "
                     f"{100 * timing.get('outside_fraction', 0):.1f}% of it outside optimizer steps")
    return [Block("h2", "Run"), Block("pre", "\n".join(lines))]


def _reference_table(refs: list[dict[str, Any]], summary):
    import pandas as pd

    rows = []
    for r in refs:
        ours = summary[(summary["task"] == r["task"]) & (summary["horizon"] == r["horizon"])
                       & (summary["optimizer"] == r["optimizer"])]
        o = ours.iloc[0] if len(ours) else None
        rows.append({
            "problem": r["problem"], "optimizer": r["optimizer"],
            "reference summed": _fmt(r.get("summed_loss")), "reference final": _fmt(r.get("final_loss")),
            "reference lr": _fmt(r.get("lr")),
            "ours summed": _ci_text(o["summed_mean"], o["summed_low"], o["summed_high"]) if o is not None else "-",
            "ours final": _ci_text(o["final_mean"], o["final_low"], o["final_high"]) if o is not None else "-",
            "ours lr": _fmt(o["lr"]) if o is not None and o["optimizer_kind"] == "baseline" else "",
            "source": r.get("source", ""),
        })
    return pd.DataFrame(rows)
