"""The README stays true: every hook documented, plugin snippets copied from the
example plugin as it is, the set-up commands the ones CI runs."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pluggy
import pytest

from l2obench import hookspecs
from l2obench.registry import ALLOW_ENV, DISABLE_ENV

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TEST_COMMAND = "pip install torch==2.13.0 && pip install -e '.[test]' && pytest"
MAIN_COMMAND = ("pip install torch==2.13.0 && pip install -e . && "
                "l2obench run suites/smoke.toml --out runs/smoke --report")


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def code_blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)


def hookspec_names() -> list[str]:
    pm = pluggy.PluginManager("l2obench")
    return sorted(n for n in dir(hookspecs) if pm.parse_hookspec_opts(hookspecs, n) is not None)


def test_there_are_hookspecs():
    assert {"register_optimizers", "register_learned_optimizers", "register_task_families",
            "register_executors"} <= set(hookspec_names())


@pytest.mark.parametrize("name", hookspec_names())
def test_every_hookspec_is_documented_in_writing_a_plugin(name):
    """A heading with the hook's exact signature, followed by a description."""
    params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
    heading = f"#### `{name}({params})`\n"
    text = section("Writing a plugin")
    assert heading in text, f"README 'Writing a plugin' lacks the heading {heading.strip()!r}"
    body = text.split(heading, 1)[1].split("\n#", 1)[0]
    assert len(body.split()) >= 20, f"{name} is not described under its heading"


def test_plugin_snippets_are_copied_from_the_example_plugin():
    blocks = [b for _, b in code_blocks(section("Writing a plugin")) if b.startswith("# tests/example_plugin/")]
    assert len(blocks) >= 5
    for block in blocks:
        first, _, snippet = block.partition("\n")
        source = (ROOT / first[2:].strip()).read_text()
        assert snippet.strip() and snippet in source, f"README snippet no longer matches {first[2:]}"


def test_readme_gives_the_two_set_up_commands_each_on_one_line():
    commands = [b.strip() for lang, b in code_blocks(section("Quick start")) if lang == "bash"]
    assert commands[:2] == [MAIN_COMMAND, TEST_COMMAND]


def test_ci_runs_exactly_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in ci
    assert [line.strip() for line in ci.splitlines() if line.strip() == TEST_COMMAND] == [TEST_COMMAND]
    assert "L2OBENCH_DATA_DIR" in ci and "../shared/data" in ci  # one sub-directory per data set


@pytest.mark.parametrize("variable", ["L2OBENCH_DATA_DIR", DISABLE_ENV, ALLOW_ENV])
def test_environment_variables_are_documented(variable):
    assert f"`{variable}" in section("Writing a plugin")


#: absolute paths that would tie the README to one machine: home and work directories, drive letters
MACHINE_PATHS = re.compile("|".join([*(f"/{d}/" for d in ("work", "root", "home", "Users")), r"[A-Z]:\\"]))


def test_readme_names_no_machine_paths():
    assert not MACHINE_PATHS.search(README)
