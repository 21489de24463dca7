"""The figures of the report: loss curves per test variant, the generalization
heatmap, the meta-training curves and grids of the images renderable tasks leave
(matplotlib's Agg backend and seaborn)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plotting", "palette_for", "curves_figure", "heatmap_figure", "meta_train_figure", "image_grid_figure"]


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
    labels_of = {(o, f"{t} @ T={h}"): _heat_label(v, d)
                 for o, t, h, v, d in zip(summary["optimizer"], summary["task"], summary["horizon"],
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
    plt, _ = plotting()
    names = list(dict.fromkeys(meta["optimizer"]))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.95, wspace=0.3)
    palette = palette_for(names)
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
