"""The figures of the report: loss curves per test variant, the generalization
heatmap, the meta-training curves and grids of the images renderable tasks leave
(matplotlib's Agg backend and seaborn)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .analysis import run_labels

__all__ = ["plotting", "palette_for", "curves_figure", "heldout_figure", "heatmap_figure", "meta_train_figure",
           "profile_figure", "meta_seed_figure", "image_grid_figure"]


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


def palette_for(optimizers: list[str]) -> dict[str, Any]:
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


def heldout_figure(rows, task: str, horizon: int, palette, path: Path) -> None:
    """Held-out loss (log scale) and accuracy against the step: the mean over seeds at each
    evaluated step, with the 2.5-97.5 percentile band; one panel per held-out metric."""
    import numpy as np

    plt, _ = plotting()
    data = rows[(rows["task"] == task) & (rows["horizon"] == horizon)]
    metrics = [m for m in ("heldout_loss", "heldout_accuracy") if (data["metric"] == m).any()]
    metrics += sorted(set(data["metric"]) - set(metrics))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False)
    fig.subplots_adjust(left=0.11, right=0.98, bottom=0.15, top=0.9, wspace=0.3)
    for ax, metric in zip(axes[0], metrics):
        for (optimizer, opt_id), g in data[data["metric"] == metric].groupby(["optimizer", "optimizer_id"],
                                                                            sort=False):
            m = g.pivot_table(index="seed", columns="step", values="loss", aggfunc="first", dropna=False)
            values = m.to_numpy(dtype=float)
            with np.errstate(invalid="ignore"):
                mean = np.where(np.isfinite(values).all(axis=0), values.mean(axis=0), np.nan)
                lo, hi = np.nanpercentile(values, [2.5, 97.5], axis=0) if np.isfinite(values).any() else (mean, mean)
            color = palette.get(optimizer)
            ax.plot(m.columns, mean, marker="o", ms=2.5, lw=1.3, label=opt_id, color=color)
            ax.fill_between(m.columns, lo, hi, color=color, alpha=0.15, lw=0)
        if metric.endswith("loss"):
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel=metric.replace("heldout_", "held-out ").replace("_", " "))
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.suptitle(f"{task} @ T={horizon}, test split's evaluation set", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heatmap_figure(summary, path: Path, order: list[tuple[str, int]], optimizers: list[str]) -> None:
    """log10(mean final loss / best tuned baseline's) for every optimizer x variant."""
    import numpy as np

    plt, sns = plotting()
    labels = [f"{t} @ T={h}" for t, h in order]
    # a row per baseline and per meta-training run of a learned optimizer (lstm[seed=1])
    rows = run_labels(summary)
    frame = summary.assign(variant=[f"{t} @ T={h}" for t, h in zip(summary["task"], summary["horizon"])], row=rows)
    grid = frame.pivot_table(index="row", columns="variant", values="log10_vs_best_baseline",
                             aggfunc="first", dropna=False)
    runs = [r for o in optimizers for r in dict.fromkeys(frame.loc[frame["optimizer"] == o, "row"])]
    grid = grid.reindex(columns=[c for c in labels if c in grid.columns], index=runs)
    values = grid.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    vmax = max(0.05, float(np.abs(finite).max())) if finite.size else 1.0
    width = max(len(str(i)) for i in grid.index) * 0.07
    fig, ax = plt.subplots(figsize=(2.0 + width + 1.1 * grid.shape[1], 1.8 + 0.4 * grid.shape[0]))
    labels_of = {(o, f"{t} @ T={h}"): _heat_label(v, d)
                 for o, t, h, v, d in zip(rows, summary["task"], summary["horizon"],
                                          summary["log10_vs_best_baseline"], summary["diverged"])}
    annot = np.array([[labels_of.get((o, c), "") for c in grid.columns] for o in grid.index],
                     dtype=object).reshape(values.shape) if values.size else None
    sns.heatmap(np.where(np.isfinite(values), values, np.nan), ax=ax, cmap="RdBu_r", center=0, vmin=-vmax,
                vmax=vmax, annot=annot, fmt="", annot_kws={"fontsize": 7}, cbar_kws={"label": "log10 ratio"},
                xticklabels=list(grid.columns), yticklabels=list(grid.index), linewidths=0.5)
    for i, j in zip(*np.nonzero(~np.isfinite(values))) if annot is not None else ():
        ax.text(j + 0.5, i + 0.5, annot[i, j], ha="center", va="center", fontsize=7, color="#555")  # seaborn skips NaN
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_title("final loss vs the best tuned baseline (log10; < 0 is better)", fontsize=9)
    plt.setp(ax.get_xticklabels(), rotation=35, ha="right", fontsize=7)
    plt.setp(ax.get_yticklabels(), rotation=0, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _heat_label(value: float, diverged: int) -> str:
    """A heatmap cell's text: the log10 ratio, "div." where the optimizer diverged on a
    seed, "base. div." where only the best baseline did (the ratio is -inf)."""
    import math

    if diverged:
        return "div."
    if math.isfinite(value):
        return f"{value:+.2f}"
    return "base. div." if value < 0 else "n/a"


def meta_train_figure(meta, path: Path) -> None:
    """Meta-loss per episode and validation loss per epoch, a line per meta-training run."""
    plt, _ = plotting()
    names = list(dict.fromkeys(meta["optimizer_id"]))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.95, wspace=0.3)
    palette = palette_for(names)
    for name in names:
        g = meta[meta["optimizer_id"] == name]
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



_DASHES = ["-", "--", ":", "-."]


def profile_figure(profile, path: Path, palette, metric: str = "loss") -> None:
    """Performance profiles (:func:`l2obench.analysis.performance_profile`): the fraction of
    variants within a factor tau of the best, a step line per run; the meta-training runs of
    one learned optimizer share its colour."""
    import numpy as np

    plt, _ = plotting()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    fig.subplots_adjust(left=0.12, right=0.72, bottom=0.14, top=0.92)
    taus = profile["tau"].to_numpy(dtype=float)
    top = float(taus[np.isfinite(taus)].max()) if len(taus) else 2.0
    top = max(top * 1.25, 1.1)
    seen: dict[str, int] = {}
    for (optimizer, run), g in profile.groupby(["optimizer", "run"], sort=False):
        g = g.sort_values("tau")
        x = np.append(g["tau"].to_numpy(dtype=float), top)
        y = np.append(g["fraction"].to_numpy(dtype=float), g["fraction"].iloc[-1])
        k = seen[optimizer] = seen.get(optimizer, -1) + 1
        ax.step(x, y, where="post", label=run, color=palette.get(optimizer), lw=1.4 if k == 0 else 1.0,
                ls=_DASHES[k % len(_DASHES)])
    ax.set_xscale("log")
    ax.set_xlim(1, top)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("tau (score / best score)")
    ax.set_ylabel("fraction of variants")
    ax.set_title(f"performance profile ({metric})", fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def meta_seed_figure(runs, spread, path: Path, palette) -> None:
    """Per variant, each meta-training run's log10 ratio to the best tuned baseline (dots)
    and the two-level bootstrap interval of their mean (a bar), per learned optimizer."""
    import numpy as np

    plt, _ = plotting()

    def labelled(frame):
        return frame.assign(variant=[f"{t} @ T={h}" for t, h in zip(frame["task"], frame["horizon"])])

    spread, runs = labelled(spread), labelled(runs)
    variants = list(dict.fromkeys(spread["variant"]))
    optimizers = list(dict.fromkeys(spread["optimizer"]))
    fig, ax = plt.subplots(figsize=(6.5, 1.4 + 0.45 * len(variants) * len(optimizers)))
    width = 0.8 / max(1, len(optimizers))
    for j, opt in enumerate(optimizers):
        color = palette.get(opt)
        for i, v in enumerate(variants):
            y = i + (j - (len(optimizers) - 1) / 2) * width
            row = spread[(spread["optimizer"] == opt) & (spread["variant"] == v)]
            if row.empty:
                continue
            r = row.iloc[0]
            ax.plot([r["log10_vs_best_low"], r["log10_vs_best_high"]], [y, y], color=color, lw=4, alpha=0.35,
                    solid_capstyle="butt")
            ax.plot([r["log10_vs_best_mean"]], [y], marker="|", ms=12, color=color)
            dots = runs[(runs["optimizer"] == opt) & (runs["variant"] == v)]
            x = dots["log10_vs_best"].to_numpy(dtype=float)
            ax.scatter(x[np.isfinite(x)], np.full(np.isfinite(x).sum(), y), color=color, s=16, zorder=3,
                       label=opt if i == 0 else None)
    ax.axvline(0, color="#555", lw=0.8)
    ax.set_yticks(range(len(variants)), variants, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("log10(median final loss / best tuned baseline's); < 0 is better")
    ax.set_title("meta-training runs (dots) and the two-level 95% interval of their mean (bar)", fontsize=9)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def image_grid_figure(rows: list[tuple[str, list[tuple[str, Any]]]], path: Path, title: str = "") -> None:
    """A grid of image files: ``rows`` of (row label, [(column label, image path), ...]),
    e.g. the references, then each optimizer's final images, one per seed."""
    import matplotlib.image as mpimg

    plt, _ = plotting()
    columns = max(len(cells) for _, cells in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns + 1.4, 1.75 * len(rows)), squeeze=False)
    fig.subplots_adjust(left=1.3 / (1.6 * columns + 1.4), right=0.99, bottom=0.02, top=0.9 if title else 0.96,
                        wspace=0.05, hspace=0.3)
    for r, (label, cells) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if c >= len(cells):
                ax.axis("off")
                continue
            name, file = cells[c]
            image = mpimg.imread(file)
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(name, fontsize=6)
        axes[r][0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
