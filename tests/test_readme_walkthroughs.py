"""The README's walk-throughs do what they say: their code blocks, run in order
as one module, define a plugin, check it with the conformance kit and use it."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def walkthrough(title: str) -> str:
    match = re.search(rf"^### Walk-through: {re.escape(title)}\n(.*?)(?=^### |^## )", README, re.S | re.M)
    assert match, f"README has no walk-through '{title}'"
    blocks = re.findall(r"^```python\n(.*?)^```", match.group(1), re.S | re.M)
    assert blocks, f"walk-through '{title}' has no python code"
    return "\n".join(blocks)


def run_as_module(source: str, name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    sys.modules[name] = module
    try:
        exec(compile(source, f"<README {name}>", "exec"), module.__dict__)
    finally:
        sys.modules.pop(name, None)
    return module


def test_adding_a_task_family():
    module = run_as_module(walkthrough("adding a task family"), "readme_task_family")
    assert module.trajectory.losses.shape == (8, 100)
    assert module.task.dim == 4
    # the module-task family: the Sequential's layers with parameters are its groups
    assert module.classifier.losses.shape == (8, 100)
    assert list(module.registry.task("blobs").groups) == ["0", "1", "3"]


def test_the_walkthrough_family_refuses_a_bad_config_in_one_line():
    from l2obench.errors import ConfigError

    module = run_as_module(walkthrough("adding a task family"), "readme_task_family_bad")
    with pytest.raises(ConfigError, match=r"features") as info:
        module.registry.task("regression", features=0)
    assert "\n" not in str(info.value)
