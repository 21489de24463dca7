"""The generalization report of a run directory: REPORT.md, index.html, figures, summary.csv.

It reads the results table and the manifest only (never training code), so
any run directory, also a copied or partial one, can be reported on:

- loss curves per test variant (task config and horizon): median over test seeds
  and the 2.5-97.5 percentile band, log scale, as in the paper's Fig. 4 and 5;
  baselines with the settings tuned on validation optimizees;
- a generalization heatmap: optimizer x variant, ``log10`` of the mean final loss
  over the best tuned baseline's (negative: better than every baseline);
- a table per variant of mean final and summed losses with 95% t-intervals
  over seeds, held-out loss and accuracy at the last step where the task has
  held-out data, and ranks (also by the suite's ``rank``); held-out curves; time
  to target (:mod:`l2obench.targets`); the settings tuning chose, its budget and
  any chosen value on the edge of its grid; meta-training curves;
- the runs that diverged, and any reference numbers the suite quotes, next to ours;
- across variants (:mod:`l2obench.report_across`): a performance profile, a rank summary,
  medians and log-ratios to the best baseline with bootstrap intervals, log-loss
  quartiles, and each learned optimizer's spread over its meta-training seeds.
- for a task whose test cells left images (:mod:`l2obench.artifacts`), a grid per
  variant of the references and each optimizer's final images, after its curves.

The numbers are :mod:`l2obench.report_tables`, the figures :mod:`l2obench.report_figures`,
and the Markdown and HTML writers :mod:`l2obench.report_render`; this module puts them together.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from . import store
from .artifacts import read_artifacts
from .criteria import CRITERIA
from .report_across import across_blocks
from .report_figures import curves_figure, heatmap_figure, heldout_figure, image_grid_figure, meta_train_figure, palette_for, plotting
from .report_render import (Block, ci_text, fmt, loss_text, paired_text, render_html, render_markdown, seeds_text,
                            slug)
from .report_tables import failed_meta_training, heldout_per_seed, missing_cells, per_seed, summarize

__all__ = ["write_report", "plotting", "per_seed", "summarize", "curves_figure", "heatmap_figure",
           "meta_train_figure", "Block", "render_markdown", "render_html"]


def write_report(directory: str | Path) -> dict[str, Path]:
    """Write REPORT.md, index.html, figures/*.png and summary.csv into ``directory``."""
    import pandas as pd

    from .errors import ConfigError

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory}: is a file, not a run directory; give the directory `l2obench run --out` "
                          f"wrote")
    manifest = store.read_manifest(directory)
    if not isinstance(manifest, dict):
        raise ConfigError(f"{directory / store.MANIFEST}: not a run manifest (a JSON {type(manifest).__name__}, "
                          f"not an object); rerun `l2obench run` to rewrite it")
    df = store.load_results(directory)
    tests = df[df["kind"] == "test"] if len(df) else df
    test = tests[tests["metric"] == "loss"] if len(df) else df
    heldout = tests[tests["metric"].astype(str).str.startswith("heldout_")] if len(df) else df
    if test.empty and not manifest.get("failures"):
        raise ConfigError(f"{directory}: no test results yet; run `l2obench run` to finish the suite")
    figures = directory / "figures"
    figures.mkdir(exist_ok=True)

    seeds = heldout_per_seed(heldout, per_seed(test))
    rank_by = manifest.get("rank_rule", "final")
    summary = summarize(seeds, rank=rank_by)
    missing = missing_cells(manifest, summary)
    variants = [(v["task"], int(h)) for v in manifest.get("variants", []) for h in v["horizons"]]
    present = set(zip(summary["task"], summary["horizon"].astype(int))) | set(zip(missing["task"], missing["horizon"]))
    order = [v for v in dict.fromkeys(variants) if v in present]
    order += sorted(present - set(order))
    summary = summarize(seeds, order, rank=rank_by)
    summary.to_csv(directory / "summary.csv", index=False)
    optimizers = list(dict.fromkeys(list(manifest.get("learned", [])) + list(manifest.get("baselines", []))
                                    + list(summary["optimizer"])))
    palette = palette_for(optimizers)

    name = manifest.get("suite", "suite")
    blocks: list[Block] = [Block("h1", f"{name}: l2obench report")]
    if manifest.get("description"):
        blocks.append(Block("p", manifest["description"]))
    blocks += _run_blocks(manifest, seeds)
    files = ["REPORT.md", "summary.csv", store.MANIFEST] + [store.RESULTS] * (directory / store.RESULTS).exists()
    blocks.append(Block("p", "Files: " + ", ".join(f"[{f}]({f})" for f in files) + "."))
    blocks += _missing_blocks(missing)

    blocks.append(Block("h2", "Generalization"))
    heat = figures / "heatmap.png"
    if len(summary):
        heatmap_figure(summary, heat, order, optimizers)
        blocks.append(Block("img", f"figures/{heat.name}", "log10 of each optimizer's mean final test loss over "
                                                           "the best tuned baseline's, per test variant"))
    else:
        blocks.append(Block("p", "No test cell has results yet; nothing to compare."))
    wins = summary[summary["optimizer_kind"] == "learned"]
    if len(wins):
        lines = []
        for opt, g in wins.groupby("optimizer_id", sort=False):  # each meta-training run
            better = int((g["log10_vs_best_baseline"] < 0).sum())
            sure = int(((g["final_vs_best_high"] < 0) & (g["summed_vs_best_high"] < 0)).sum())
            lines.append(f"**{opt}** has a lower mean final loss than every tuned baseline on {better} of "
                         f"{len(g)} test variants, and lower final and summed losses with 95% confidence "
                         f"(paired over the same test optimizees) on {sure}")
        blocks.append(Block("p", "; ".join(lines) + "."))
    blocks += across_blocks(df, figures, palette)

    refs = manifest.get("references") or []
    if refs:
        blocks.append(Block("h2", "Reference numbers"))
        blocks.append(Block("p", "Published numbers quoted by the suite next to ours (mean over our test "
                                 "seeds with 95% t-interval; the learning rate is the one tuning chose)."))
        blocks.append(Block("table", _reference_table(refs, summary)))

    blocks += _target_blocks(df, manifest, order)

    blocks.append(Block("h2", "Test variants"))
    blocks.append(Block("p", "Final loss: mean loss at the last step, over test seeds; summed loss: the loss "
                             "summed over the horizon (the paper's measure); both on the minibatch of each step. "
                             "Held-out loss and accuracy: at the last step, on the test split's fixed evaluation "
                             "set, where the task has one. ± is the 95% t-interval half-width; rank 1 is best, "
                             f"by {CRITERIA.get(rank_by, rank_by)} (the suite's rank = \"{rank_by}\"; a diverged "
                             "seed counts as the worst possible). Curves: median over seeds, band 2.5-97.5 "
                             "percentile."))
    for task, horizon in order:
        label = f"{task} @ T={horizon}"
        blocks.append(Block("h3", label))
        part = summary[(summary["task"] == task) & (summary["horizon"] == horizon)]
        gone = missing[(missing["task"] == task) & (missing["horizon"] == horizon)]
        if len(part):
            fig = figures / f"curves-{slug(label)}.png"
            curves_figure(test, task, horizon, palette, fig)
            blocks.append(Block("img", f"figures/{fig.name}", f"test loss, {label}"))
            here = heldout[(heldout["task"] == task) & (heldout["horizon"] == horizon)] if len(heldout) else heldout
            if len(here):
                fig = figures / f"heldout-{slug(label)}.png"
                heldout_figure(here, task, horizon, palette, fig)
                blocks.append(Block("img", f"figures/{fig.name}", f"held-out loss and accuracy on the test "
                                                                   f"split's evaluation set, {label}"))
            blocks += _image_blocks(directory, test, task, horizon, optimizers, figures / f"images-{slug(label)}.png")
        blocks += _diverged_words(part)
        blocks.append(Block("table", _variant_table(part, gone)))

    tuning = manifest.get("tuning") or {}
    rank = {v: i for i, v in enumerate(order)}
    if tuning:
        blocks.append(Block("h2", "Tuning"))
        rule = manifest.get("tune_rule", "final")
        blocks.append(Block("p", f"Each baseline's settings chosen per test variant on "
                                 f"{len(manifest.get('validation_seeds', []))} validation optimizees by the "
                                 f"rule '{rule}' (the mean over them of {CRITERIA.get(rule, rule)}; a diverged "
                                 f"seed counts as the worst possible). " + _budget_text(tuning)))
        rows = [{"baseline": t["baseline"], "variant": f"{t['task']} @ T={t['horizon']}", "chosen": t["chosen"],
                 "validation score": t["scores"].get(t["chosen"], math.nan),
                 "grid": ", ".join(f"{k.split('[', 1)[-1].rstrip(']')}: {fmt(v, 3)}" for k, v in t["scores"].items())}
                for t in sorted(tuning.values(), key=lambda t: (rank.get((t["task"], t["horizon"]), len(rank)),
                                                                t["baseline"]))]
        blocks.append(Block("table", pd.DataFrame(rows)))
        edges = [f"{t['baseline']} @ {t['task']} @ T={t['horizon']}: {', '.join(t['edge'])}"
                 for t in tuning.values() if t.get("edge")]
        if edges:
            blocks.append(Block("p", "Warning: these chosen values lie on the edge of their grid, so a better "
                                     "one may lie beyond it; widen the grid: " + "; ".join(edges) + "."))

    meta = df[df["kind"] == "meta-train"] if len(df) else df
    if len(meta):
        blocks.append(Block("h2", "Meta-training"))
        fig = figures / "meta-training.png"
        meta_train_figure(meta, fig)
        blocks.append(Block("img", f"figures/{fig.name}", "meta-loss per episode and validation loss per epoch; "
                                                           "the meta-parameters of the best validation were kept"))
        rows = []
        for opt, g in meta.groupby("optimizer_id", sort=False):  # each meta-training run
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
    failed = failed_meta_training(manifest)
    if len(failed):
        blocks.append(Block("p", "Meta-training failed (no finite meta-loss, or no validation loss better than "
                                 "the initialisation's), so these learned optimizers were not tested:"))
        blocks.append(Block("table", failed))
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
        blocks.append(Block("p", "No test or tuning run diverged." if len(failed) else "No run diverged."))

    paths = {"markdown": directory / "REPORT.md", "html": directory / "index.html",
             "summary": directory / "summary.csv", "figures": figures}
    store.atomic_write_bytes(paths["markdown"], render_markdown(blocks).encode())
    store.atomic_write_bytes(paths["html"], render_html(blocks, f"{name}: l2obench report").encode())
    return paths


def _budget_text(tuning: dict[str, Any]) -> str:
    """What tuning cost, in runs: per baseline, the settings tried, each on the validation seeds."""
    per: dict[str, dict[str, Any]] = {}
    for t in tuning.values():
        b = t.get("budget")
        if b:
            p = per.setdefault(t["baseline"], {"trials": b["trials"], "search": b.get("search", "grid"),
                                               "seeds": b["validation_seeds"], "groups": set()})
            p["groups"].add((t["task"], b["steps"]))
    if not per:
        return ""
    parts = [f"{name}: {p['trials']} settings ({p['search']}) x {p['seeds']} seeds on each of {len(p['groups'])} "
             f"variants, {sum(steps for _, steps in p['groups']) * p['trials'] * p['seeds']:,} optimizee steps"
             for name, p in per.items()]
    return "Budget: " + "; ".join(parts) + "."


def _target_blocks(df, manifest: dict[str, Any], order) -> list[Block]:
    """Time to target (AlgoPerf): per test cell, steps and seconds to reach the suite's target."""
    import pandas as pd

    from .targets import time_to_target

    setting = manifest.get("target") or {"metric": "loss", "value": None}
    metric, value = setting.get("metric") or "loss", setting.get("value")
    if not len(df) or not ((df["kind"] == "test") & (df["metric"] == metric)).any():
        return []
    table = time_to_target(df, value, metric)
    rank = {v: i for i, v in enumerate(order)}
    table = table.assign(_o=[rank.get((t, h), len(rank)) for t, h in zip(table["task"], table["horizon"])])
    table = table.sort_values(["_o", "steps"], kind="stable")
    goal = (f"{metric} {'at least' if metric.endswith('accuracy') else 'at most'} {fmt(float(value))}"
            if value is not None else f"the best tuned baseline's final {metric} on each variant")
    rows = pd.DataFrame({"variant": [f"{t} @ T={h}" for t, h in zip(table["task"], table["horizon"])],
                         "optimizer": table["optimizer_id"], "target": table["target"],
                         "steps": [fmt(x) if r else "not reached" for x, r in zip(table["steps"], table["reached"])],
                         "seconds": [fmt(x, 3) if r else "inf" for x, r in zip(table["seconds"], table["reached"])],
                         "final": table["final"]})
    return [Block("h2", "Time to target"),
            Block("p", f"Steps and seconds (of optimizer steps, held-out evaluation left out) until the mean over "
                       f"test seeds reaches {goal}; a run that never does, or whose seeds diverge first, takes "
                       f"infinitely long (AlgoPerf)."),
            Block("table", rows)]


#: the test seeds whose final images a variant's grid shows
GRID_SEEDS = 4


def _image_blocks(directory: Path, test, task: str, horizon: int, optimizers: list[str], path: Path) -> list[Block]:
    """The grid of the images the variant's test cells left (:mod:`l2obench.artifacts`): the
    references on top, then a row per optimizer with its final images of the first seeds."""
    cells = test[(test["task"] == task) & (test["horizon"] == horizon)].drop_duplicates("cell_key")
    order = {o: i for i, o in enumerate(optimizers)}
    found = [(r["optimizer_id"], read_artifacts(directory, r["cell_key"]))
             for r in sorted(cells.to_dict("records"), key=lambda r: order.get(r["optimizer"], len(order)))]
    found = [(opt, a) for opt, a in found if a is not None and a["seeds"]]
    if not found:
        return []
    refs = next((a["references"] for _, a in found if a["references"]), {})
    rows = [("targets", list(refs.items()))] if refs else []
    rows += [(opt, [(f"seed {s}", a["seeds"][s]) for s in sorted(a["seeds"])[:GRID_SEEDS]]) for opt, a in found]
    image_grid_figure(rows, path, f"{task} @ T={horizon}")
    captions = list(dict.fromkeys(a["caption"] for _, a in found if a["caption"]))
    text = (f"final images of the first {min(GRID_SEEDS, max(len(a['seeds']) for _, a in found))} test seeds per "
            f"optimizer, {task} @ T={horizon}" + ("; " + "; ".join(captions) if captions else ""))
    return [Block("p", text + "."), Block("img", f"figures/{path.name}", f"final images, {task} @ T={horizon}")]


def _variant_table(part, gone):
    """One variant's table: a row per optimizer with results, then one per test cell
    without (failed or not run), so every cell the suite asked for is accounted for."""
    import pandas as pd

    import numpy as np

    columns = ["optimizer", "final loss", "rank", "summed loss", "rank (summed)",
               "final − best baseline (paired)", "summed − best baseline (paired)", "diverged"]
    heldout = [m for m in ("heldout_loss", "heldout_accuracy") if len(part) and np.isfinite(part[f"{m}_mean"]).any()]
    names = {"heldout_loss": "held-out loss", "heldout_accuracy": "held-out accuracy"}
    by = str(part["rank_by"].iloc[0]) if len(part) else "final"
    ranked = [] if by in ("final", "summed") else [f"rank ({names.get(by, by)})"]
    columns[5:5] = [names[m] for m in heldout] + ranked
    rows = [{"optimizer": r["optimizer_id"], "final loss": loss_text(r, "final"), "rank": r["rank_final"],
             "summed loss": loss_text(r, "summed"), "rank (summed)": r["rank_summed"],
             **{names[m]: ci_text(r[f"{m}_mean"], r[f"{m}_low"], r[f"{m}_high"]) for m in heldout},
             **{c: r["rank"] for c in ranked},
             "final − best baseline (paired)": paired_text(r, "final"),
             "summed − best baseline (paired)": paired_text(r, "summed"),
             "diverged": f"{r['diverged']}/{r['seeds']}"} for r in part.to_dict("records")]
    for r in gone.to_dict("records"):
        rows.append({c: "" for c in columns} | {"optimizer": r["optimizer"], "final loss": r["state"],
                                                 "summed loss": r["state"]})
    return pd.DataFrame(rows, columns=columns)


def _diverged_words(part) -> list[Block]:
    """In words, which optimizers of a variant diverged, and what that does to the comparison."""
    if not len(part):
        return []
    said = []
    for r in part[part["diverged"] > 0].to_dict("records"):
        said.append(f"{r['optimizer_id']} diverged on {seeds_text(int(r['diverged']), int(r['seeds']))}")
    if not said:
        return []
    text = "; ".join(said) + ". A diverged seed counts as inf in the mean and the ranks"
    best = part["best_baseline"].iloc[0]
    if isinstance(best, str) and int(part["best_baseline_diverged"].iloc[0]):
        text += (f"; even the best tuned baseline, {best}, diverged, so no paired difference to it is "
                 f"given")
    else:
        text += "; there is no paired difference for an optimizer that diverged on any seed"
    return [Block("p", text + ".")]


def _missing_blocks(missing) -> list[Block]:
    """The test cells the suite asked for that have no results: failed, or not run yet."""
    import pandas as pd

    if not len(missing):
        return []
    failed = int((missing["state"] == "failed").sum())
    text = (f"{len(missing)} test cells of the suite have no results: {failed} failed and "
            f"{len(missing) - failed} were not run; they are listed here and in their variant's table, "
            f"and the numbers below leave them out.")
    rows = pd.DataFrame({"variant": [f"{t} @ T={h}" for t, h in zip(missing["task"], missing["horizon"])],
                         "optimizer": missing["optimizer"], "state": missing["state"],
                         "reason": missing["reason"]})
    return [Block("h2", "Missing and failed cells"), Block("p", text), Block("table", rows)]


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
            "reference summed": fmt(r.get("summed_loss")), "reference final": fmt(r.get("final_loss")),
            "reference lr": fmt(r.get("lr")),
            "ours summed": ci_text(o["summed_mean"], o["summed_low"], o["summed_high"]) if o is not None else "-",
            "ours final": ci_text(o["final_mean"], o["final_low"], o["final_high"]) if o is not None else "-",
            "ours lr": fmt(o["lr"]) if o is not None and o["optimizer_kind"] == "baseline" else "",
            "source": r.get("source", ""),
        })
    return pd.DataFrame(rows)
