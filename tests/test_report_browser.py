"""The HTML report opened in a real headless browser (the system's Chromium, driven by
playwright): it renders, every figure loads, no link is broken, and nothing fails on
the page.  Skipped where Chromium or playwright is missing, except in CI (``CI=true``),
which installs both (``.ci/run``)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from l2obench.report import write_report
from test_report import run_dir  # noqa: F401  (a fixture: a hand-written results directory)

CHROMIUM = os.environ.get("L2OBENCH_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    """A fresh Chromium profile; a missing browser skips, but not in CI."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install -e '.[test]')"
    if reason is None and not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        reason = f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("profile")), headless=True,
                                                       executable_path=CHROMIUM, args=FLAGS)
        try:
            yield context
        finally:
            context.close()


def broken_parts(context, html: Path) -> tuple[dict, list[str]]:
    """Open ``html`` and return what the page shows (title, headings, tables, images)
    and everything broken on it: images that did not load, links to anchors or files
    that do not exist, links off the page's directory, failed requests, page errors."""
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
    try:
        page.goto(html.resolve().as_uri(), wait_until="load")
        page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=15_000)
        shown = page.evaluate("""() => ({
            title: document.title,
            h1: document.querySelector('h1') && document.querySelector('h1').innerText,
            tables: document.querySelectorAll('table').length,
            height: document.body.scrollHeight,
            images: Array.from(document.images).map(i => ({src: i.getAttribute('src'),
                                                            ok: i.complete && i.naturalWidth > 0})),
            links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
            ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
        })""")
    finally:
        page.close()
    problems += [f"image did not load: {i['src']}" for i in shown["images"] if not i["ok"]]
    for href in shown["links"]:
        if href.startswith("#"):
            if unquote(href[1:]) not in shown["ids"]:
                problems.append(f"link to a missing anchor: {href}")
            continue
        url = urlparse(href)
        if url.scheme or url.netloc:
            problems.append(f"link off the report's directory: {href}")
        elif not (html.parent / unquote(url.path)).is_file():
            problems.append(f"link to a missing file: {href}")
    return shown, problems


def test_the_html_report_renders_with_every_figure_and_link(browser_context, run_dir):  # noqa: F811
    paths = write_report(run_dir)
    shown, problems = broken_parts(browser_context, paths["html"])
    assert problems == []
    assert shown["title"] == "mini: l2obench report" and shown["h1"] == "mini: l2obench report"
    assert shown["tables"] >= 5 and shown["height"] > 2000
    figures = sorted(p.name for p in (run_dir / "figures").glob("*.png"))
    assert sorted(Path(i["src"]).name for i in shown["images"]) == figures
    assert {"figures/heatmap.png", "figures/performance-profile.png"} <= {i["src"] for i in shown["images"]}
    assert "#across-variants" in shown["links"] and "summary.csv" in shown["links"]


def test_the_browser_check_sees_a_missing_figure_and_a_broken_link(browser_context, run_dir):  # noqa: F811
    paths = write_report(run_dir)
    (run_dir / "figures" / "heatmap.png").unlink()
    html = paths["html"].read_text().replace('href="summary.csv"', 'href="gone.csv"')
    paths["html"].write_text(html.replace('href="#tuning"', 'href="#nowhere"'))
    _, problems = broken_parts(browser_context, paths["html"])
    assert "image did not load: figures/heatmap.png" in problems
    assert "link to a missing file: gone.csv" in problems and "link to a missing anchor: #nowhere" in problems
