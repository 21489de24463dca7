"""The public plugin API: the built-in plugins and the example plugin import
nothing from l2obench but ``l2obench.api`` (and the top-level names it
re-exports), and the README documents every public name."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import l2obench
from l2obench import api

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SOURCES = sorted([*(ROOT / "plugins").rglob("*.py"),
                         *(ROOT / "tests" / "example_plugin" / "src").rglob("*.py")])


def l2obench_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every import of an l2obench module in ``path``,
    relative imports resolved against the plugins package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "l2obench"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: within the plugin's own package
                continue
            if node.module and node.module.split(".")[0] == "l2obench":
                out.append((node.lineno, node.module, [a.name for a in node.names]))
    return out


def is_public(module: str, names: list[str]) -> bool:
    if module == "l2obench.api" or module.startswith("l2obench.plugins"):
        return True  # the public API, or a built-in plugin's own modules
    if module == "l2obench":
        return all(n in api.__all__ for n in names) and bool(names)
    return False


def test_there_are_plugin_sources():
    names = {p.name for p in PLUGIN_SOURCES}
    assert {"baselines.py", "quadratic.py", "lion.py"} <= names


@pytest.mark.parametrize("path", PLUGIN_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_only_the_public_api(path):
    private = [f"{path.relative_to(ROOT)}:{line}: {module} {names or ''}"
               for line, module, names in l2obench_imports(path) if not is_public(module, names)]
    assert not private, "imports from outside l2obench.api: " + "; ".join(private)


def test_the_check_catches_a_private_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from l2obench.optimizer import Optimizer\nfrom l2obench import hookimpl, Registry\n"
                   "import l2obench.registry\nfrom l2obench.api import chain\nfrom .local import x\n")
    found = [(m, n) for _, m, n in l2obench_imports(bad) if not is_public(m, n)]
    assert found == [("l2obench.optimizer", ["Optimizer"]), ("l2obench", ["hookimpl", "Registry"]),
                     ("l2obench.registry", [])]


def test_every_api_name_is_exported_at_the_top_level():
    for name in api.__all__:
        assert getattr(l2obench, name) is getattr(api, name), name
        assert name in l2obench.__all__, name


def test_every_api_name_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^### The public API\n(.*?)(?=^### )", readme, re.S | re.M)
    assert section, "README has no '### The public API' section"
    missing = [n for n in api.__all__ if f"`{n}`" not in section.group(1)]
    assert not missing, f"README's public API table does not name {missing}"
