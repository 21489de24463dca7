"""Data flows one way: no module of the library imports one of a higher layer (suite
file -> cells -> runner -> executor -> rows -> store -> report; the commands on top),
and no core module names a plugin.  Imports under ``if TYPE_CHECKING:`` are types
only and do not count; imports inside functions do."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "core"

#: each module's layer: a module imports only modules of its own layer or below
LAYERS: list[set[str]] = [
    {"errors", "env", "atomic", "hookspecs", "config", "stats", "hyperparameters", "optimizer",
     "report_figures", "report_render", "testing.strategies", "cellfile", "bootstrap", "analysis", "report_across",
     "criteria", "targets"},
    {"transforms", "learned", "task", "datasets", "devices", "memory", "evaluate", "from_torch", "metatrain_progress",
     "from_module", "artifacts"},
    {"registry", "executor", "metatrain", "unroll", "suite_format", "suite_specs", "estimator", "population"},
    {"checkpoint", "api", "report_tables", "provenance"},
    {"suite", "resolve", "cells"},
    {"tuning", "plan", "store", "manifest", "work"},
    {"schedule", "report"},
    {"runner", "bench", "testing.properties"},
    {"testing.group_checks", "testing.optimizer_checks", "testing.task_checks", "testing.learned_checks",
     "testing.conformance", "testing", "testing.pytest_plugin", "testing.numeric_checks"},
    {"commands", "cli", "__init__"},
]


def layer_of(module: str) -> int:
    for i, layer in enumerate(LAYERS):
        if module in layer or module.split(".")[0] in layer:
            return i
    raise AssertionError(f"core module {module!r} has no layer in tests/test_layers.py: give it one")


def core_modules() -> dict[str, Path]:
    out = {}
    for path in CORE.rglob("*.py"):
        parts = list(path.relative_to(CORE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports(module: str, path: Path) -> set[str]:
    """The l2obench modules ``module`` imports, as dotted names below ``l2obench``."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if module == "__init__":
        package = []
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                names = [".".join(base + [node.module])] if node.module else [".".join(base + [a.name]) for a in node.names]
            elif node.module and node.module.split(".")[0] == "l2obench":
                names = [node.module[len("l2obench."):]] if "." in node.module else []
            else:
                continue
            out |= {n for n in names if n}
        elif isinstance(node, ast.Import):
            out |= {a.name[len("l2obench."):] for a in node.names if a.name.startswith("l2obench.")}
    return out


def known(name: str, modules: dict[str, Path]) -> str | None:
    """The core module ``name`` refers to (a module, or a name imported from a package)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


MODULES = core_modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_runs_up_the_layers(module):
    mine = layer_of(module)
    upward = []
    for name in sorted(imports(module, MODULES[module])):
        if name.startswith("plugins"):
            upward.append(f"{name} (a plugin)")
            continue
        target = known(name, MODULES)
        if target is None or target == module or target == "__init__":
            continue
        if layer_of(target) > mine:
            upward.append(f"{target} (layer {layer_of(target)})")
    assert not upward, f"core/{module} (layer {mine}) imports from above: {', '.join(upward)}"


def test_the_check_sees_an_upward_import(tmp_path):
    path = tmp_path / "store.py"
    path.write_text("from .runner import Runner\nif TYPE_CHECKING:\n    from .report import x\n"
                    "def f():\n    from l2obench.cli import main\n")
    assert imports("store", path) == {"runner", "cli"}
