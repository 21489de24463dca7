"""``l2obench list``: the table and the JSON a script reads."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from l2obench.cli import main

BASELINES = ["sgd", "momentum", "nag", "rmsprop", "adam", "adagrad", "adamw"]
FAMILIES = ["quadratic", "mnist-mlp"]


@pytest.fixture
def listing(capsys, plugin_env):
    def run(*args: str):
        assert main(["list", *args]) == 0
        out = capsys.readouterr().out
        return json.loads(out) if "--json" in args else out

    return run


def test_json_lists_baselines_and_task_families_with_their_distribution(listing):
    rows = {(r["kind"], r["name"]): r for r in listing("--json")}
    for name in BASELINES:
        row = rows[("optimizer", name)]
        assert row["distribution"] == "l2obench"
        assert row["version"]
        assert "lr" in row["parameters"]
    for name in FAMILIES:
        assert rows[("task", name)]["distribution"] == "l2obench"
    for row in rows.values():
        assert set(row) >= {"name", "kind", "distribution", "version", "parameters"}


def test_json_parameters_carry_the_defaults(listing):
    rows = {(r["kind"], r["name"]): r for r in listing("--json")}
    assert rows[("optimizer", "adam")]["parameters"] == {
        "lr": 0.001, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0}
    assert rows[("optimizer", "sgd")]["parameters"]["lr"] == 0.01
    assert rows[("task", "quadratic")]["parameters"]["dim"] == 10
    assert rows[("task", "quadratic")]["parameters"]["distribution"] == "gaussian"
    mlp = rows[("task", "mnist-mlp")]["parameters"]
    assert mlp["hidden"] == 20 and mlp["activation"] == "sigmoid"


def test_json_follows_the_registry(listing):
    from l2obench import get_registry

    expected = {(e.kind, e.name) for e in get_registry().all_entries()}
    assert {(r["kind"], r["name"]) for r in listing("--json")} == expected


def test_kind_filter(listing):
    rows = listing("--json", "--kind", "task")
    assert {r["kind"] for r in rows} == {"task"}
    assert set(FAMILIES) <= {r["name"] for r in rows}


def test_table_has_one_row_per_entry_with_distribution_and_defaults(listing):
    lines = listing().splitlines()
    assert lines[0].split() == ["kind", "name", "distribution", "capabilities", "parameters"]
    by_name = {line.split()[1]: line for line in lines[1:]}
    for name in BASELINES:
        assert by_name[name].split()[:3] == ["optimizer", name, "l2obench"]
        assert "lr=" in by_name[name]
    assert "l2obench" in by_name["quadratic"] and "dim=10" in by_name["quadratic"]
    assert "mnist-mlp" in by_name


def test_learned_optimizers_show_their_capabilities(listing):
    """Built with their defaults; the other kinds have none (null)."""
    rows = {(r["kind"], r["name"]): r for r in listing("--json")}
    assert rows[("learned", "lstm")]["capabilities"] == {"replay": True, "groups": [], "second_derivatives": False}
    assert rows[("learned", "rnnprop")]["capabilities"]["replay"] is True
    assert rows[("learned", "lstm-gac")]["capabilities"]["replay"] is False
    assert rows[("learned", "lstm-groups")]["capabilities"]["groups"] == ["conv", "fc"]
    assert rows[("optimizer", "adam")]["capabilities"] is None
    by_name = {line.split()[1]: line for line in listing("--kind", "learned").splitlines()[1:]}
    assert "  replay 1st-order  " in by_name["lstm"] and "  no-replay 1st-order  " in by_name["lstm-gac"]
    assert "replay groups=conv,fc 1st-order" in by_name["lstm-groups"]


def test_a_learned_optimizer_that_does_not_build_with_its_defaults_is_still_listed(plugin_env, capsys):
    from l2obench import hookimpl, registry

    class Needy:
        @hookimpl
        def register_learned_optimizers(register):
            def needy(width: int):
                """Needs a width."""
                raise AssertionError("not called")

            register("needy", needy)

    plugin_env.setattr(registry, "_default", registry.Registry([Needy]))
    assert main(["list", "--json"]) == 0
    out, err = capsys.readouterr()
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["needy"]["capabilities"] is None and rows["lstm"]["capabilities"]["replay"] is True
    assert "learned optimizer 'needy' of <inline> - does not build with its defaults" in err


def test_listing_leaves_the_global_random_state_alone(listing):
    import torch

    torch.manual_seed(0)
    listing("--json")
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


def test_console_script_prints_json():
    """The installed ``l2obench`` entry point, as a user runs it."""
    proc = subprocess.run([sys.executable, "-m", "l2obench.cli", "list", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    names = {r["name"] for r in json.loads(proc.stdout)}
    assert set(BASELINES + FAMILIES) <= names
