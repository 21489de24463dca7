"""The README's walk-through "Adding a learned-optimizer variant", done as it says:
its plugin module registered, then its commands run (listing the variant, and
meta-training it a few steps on a quadratic into a checkpoint that rebuilds)."""
from __future__ import annotations

import re
import shlex
import types
from pathlib import Path

import pytest
import torch

from l2obench import registry
from l2obench.checkpoint import load_checkpoint
from l2obench.cli import main
from l2obench.plugins import lstm_kernel
from l2obench.testing import check_replay

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
TITLE = "### Adding a learned-optimizer variant"


def walkthrough() -> tuple[str, list[str]]:
    """The walk-through's python block and the lines of its bash block."""
    assert TITLE in README, f"README lacks {TITLE!r}"
    text = README.split(TITLE, 1)[1].split("\n### ", 1)[0]
    blocks = dict((lang, code) for lang, code in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M))
    return blocks["python"], [line for line in blocks["bash"].splitlines() if line.strip()]


@pytest.fixture
def installed(plugin_env, tmp_path):
    """The walk-through's module as an installed plugin would be: loaded next to the built-ins."""
    code, _ = walkthrough()
    module = types.ModuleType("my_l2o")
    exec(compile(code, "README.md (walk-through)", "exec"), module.__dict__)
    plugin_env.setattr(registry, "_default", registry.Registry([module]))
    plugin_env.chdir(tmp_path)
    return module


def test_the_variant_is_a_few_lines_of_its_own():
    code, _ = walkthrough()
    assert len([line for line in code.splitlines() if line.strip()]) < 40


def test_the_walkthrough_lists_and_meta_trains_the_variant(installed, tmp_path, capsys):
    _, commands = walkthrough()
    assert [shlex.split(c)[:2] for c in commands] == [["l2obench", "list"], ["l2obench", "meta-train"]]
    listing, meta_train = (shlex.split(c)[1:] for c in commands)
    assert main(listing) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.split()[1] == "lstm-raw")
    assert "replay 1st-order" in row and "p=10.0" in row

    assert main(meta_train) == 0
    checkpoint = tmp_path / "lstm-raw.safetensors"
    assert checkpoint.exists()
    loaded = load_checkpoint(checkpoint)
    lopt = loaded[0] if isinstance(loaded, tuple) else loaded
    assert lopt.name == "lstm-raw" and lopt.hyperparameters == {"hidden": 20, "layers": 2, "p": 10.0,
                                                                 "output_scale": 0.1}
    fresh = registry.get_registry().learned("lstm-raw")
    assert not all(torch.equal(a, b) for a, b in zip(lopt.parameters(), fresh.parameters()))  # it trained


@pytest.mark.skipif(not lstm_kernel.available(), reason="the fused LSTM kernel could not be built here")
def test_the_variant_replays_unrolls_correctly_on_the_kernel(installed):
    lopt = registry.get_registry().learned("lstm-raw")
    assert lopt.capabilities.replay and lopt.opt_fn().replay is not None
    check_replay(lopt)
