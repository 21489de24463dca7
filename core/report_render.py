"""Rendering the report: a report is a list of :class:`Block` s (headings,
paragraphs, tables, images, preformatted text), written out as Markdown and as
HTML alike; numbers are formatted here, once for both."""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Block", "slug", "fmt", "ci_text", "diff_text", "loss_text", "paired_text", "seeds_text",
           "render_markdown", "render_html"]


@dataclass
class Block:
    """One piece of the report, rendered to Markdown and to HTML alike."""

    kind: str  # "h1", "h2", "h3", "p", "table", "img", "pre"
    content: Any
    caption: str = ""


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:80] or "figure"


def fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return f"{x:.{digits}g}"
    return str(x)


def diff_text(mean: float, low: float, high: float) -> str:
    """A paired difference with its 95% interval, marked when the interval excludes 0."""
    if not math.isfinite(mean):
        return ""
    mark = " (lower)" if high < 0 else " (higher)" if low > 0 else ""
    return f"{ci_text(mean, low, high)}{mark}"


def ci_text(mean: float, low: float, high: float) -> str:
    if not math.isfinite(mean):
        return "diverged" if math.isinf(mean) or math.isnan(mean) else fmt(mean)
    half = (high - low) / 2
    return f"{fmt(mean)} ± {fmt(half, 2)}" if math.isfinite(half) else fmt(mean)


def seeds_text(diverged: int, seeds: int) -> str:
    """``"every one of 4 seeds"`` or ``"1 of 4 seeds"``."""
    return f"every one of {seeds} seeds" if diverged >= seeds else f"{diverged} of {seeds} seeds"


def loss_text(row, metric: str) -> str:
    """A summary row's mean ``metric`` ("final" or "summed") with its interval, or, where
    seeds diverged, how many, and the mean over the others."""
    diverged, seeds = int(row["diverged"]), int(row["seeds"])
    if not diverged:
        return ci_text(row[f"{metric}_mean"], row[f"{metric}_low"], row[f"{metric}_high"])
    text = f"diverged ({diverged} of {seeds} seeds)"
    if diverged < seeds and math.isfinite(row[f"{metric}_ok_mean"]):
        text += f"; the others {ci_text(row[f'{metric}_ok_mean'], row[f'{metric}_ok_low'], row[f'{metric}_ok_high'])}"
    return text


def paired_text(row, metric: str) -> str:
    """A summary row's paired difference to the best tuned baseline, or in words why
    there is none."""
    best = row["best_baseline"]
    if not isinstance(best, str):
        return "no tuned baseline"
    if row["optimizer_id"] == best:
        return "(the best baseline)"
    mean = row[f"{metric}_vs_best_mean"]
    if math.isfinite(mean):
        return diff_text(mean, row[f"{metric}_vs_best_low"], row[f"{metric}_vs_best_high"])
    if int(row["diverged"]):
        return f"no interval: diverged on {seeds_text(int(row['diverged']), int(row['seeds']))}"
    if int(row["best_baseline_diverged"]):
        return (f"no interval: the best baseline {best} diverged on "
                f"{seeds_text(int(row['best_baseline_diverged']), int(row['best_baseline_seeds']))}")
    return f"no interval: no test seed shared with {best}"


def _md_table(frame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |")
    return "\n".join(lines)


def _html_table(frame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
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


def _heading_ids(blocks: list[Block]) -> dict[int, str]:
    """A unique anchor per heading (by block index), from its text."""
    ids: dict[int, str] = {}
    taken: set[str] = set()
    for i, b in enumerate(blocks):
        if b.kind in ("h1", "h2", "h3"):
            base = slug(b.content) or "section"
            anchor, n = base, 1
            while anchor in taken:
                n += 1
                anchor = f"{base}-{n}"
            taken.add(anchor)
            ids[i] = anchor
    return ids


def render_html(blocks: list[Block], title: str) -> str:
    parts = []
    ids = _heading_ids(blocks)
    sections = [(ids[i], b.content) for i, b in enumerate(blocks) if b.kind == "h2"]
    for i, b in enumerate(blocks):
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f'<{b.kind} id="{ids[i]}">{html.escape(b.content)}</{b.kind}>')
            if b.kind == "h1" and sections:  # the contents, after the title
                links = " · ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t in sections)
                parts.append(f"<nav>{links}</nav>")
        elif b.kind == "p":
            text = html.escape(b.content)
            text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
            text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
            text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', text)  # a Markdown link
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
             "code,pre{background:#f6f6f6}nav{font-size:13px;margin:0 0 1.5em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")

