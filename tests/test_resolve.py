"""One resolver from an optimizer spec to an Optimizer for a task: names (hand-designed,
untrained learned), checkpoints (file or bytes), learned optimizers in hand; the same one
behind ``l2obench evaluate`` and the runner's cells."""
from __future__ import annotations

import json

import pytest
import torch

import l2obench.registry
from l2obench import ConfigError, Registry, hookimpl
from l2obench.api import Optimizer
from l2obench.checkpoint import checkpoint_bytes, save_checkpoint
from l2obench.cli import main
from l2obench.evaluate import run
from l2obench.plugins import baselines, quadratic
from l2obench.resolve import INIT_SEED, learned_optimizer, resolve_optimizer

from test_metatrain import TinyPlugin

pytestmark = pytest.mark.usefixtures("single_thread")


class GroupsPlugin:
    """A hand-designed optimizer whose factory takes the task's parameter groups."""

    seen: list = []

    @hookimpl
    def register_optimizers(self, register):
        def layerwise(lr: float = 0.1, *, groups):
            GroupsPlugin.seen.append(dict(groups))
            return Optimizer(lambda p: {}, lambda g, s, p: (-lr * g, s))

        register("layerwise", layerwise)


@pytest.fixture
def registry(monkeypatch):
    reg = Registry([TinyPlugin(), GroupsPlugin(), baselines, quadratic], entry_points=False)
    monkeypatch.setattr(l2obench.registry, "_default", reg)
    return reg


@pytest.fixture
def task(registry):
    return registry.task("quadratic", dim=6)


def losses(resolved, task, steps=8):
    return run(resolved.optimizer, task, [0, 1, 2], steps, "test").losses


def test_a_hand_designed_optimizer_gets_its_hyperparameters_and_the_task_groups(registry, task):
    resolved = resolve_optimizer("adam", task, params={"lr": 0.1})
    assert resolved.id == "adam[lr=0.1]" and resolved.learned is None and resolved.checkpoint is None
    assert torch.equal(losses(resolved, task), run(registry.optimizer("adam", lr=0.1), task, [0, 1, 2], 8).losses)
    GroupsPlugin.seen.clear()
    assert resolve_optimizer("layerwise", task).id == "layerwise"
    assert GroupsPlugin.seen == [task.groups]


def test_an_untrained_learned_optimizer_is_seeded_and_frozen(registry, task):
    a = resolve_optimizer("tiny", task, params={"hidden": 4})
    b = resolve_optimizer("tiny", task, params={"hidden": 4})
    assert a.untrained and a.id == "tiny[hidden=4]" and not a.learned.training
    same = learned_optimizer("tiny", {"hidden": 4}, seed=INIT_SEED)
    for lopt in (b.learned, same):
        assert all(torch.equal(x, y) for x, y in zip(a.learned.state_dict().values(), lopt.state_dict().values()))
    other = resolve_optimizer("tiny", task, params={"hidden": 4}, seed=1)
    assert not torch.equal(other.learned.net[0].weight, a.learned.net[0].weight)
    assert torch.equal(losses(a, task), losses(b, task))


def test_a_checkpoint_as_file_or_bytes_gives_the_same_optimizer(registry, task, tmp_path):
    lopt = learned_optimizer("tiny", {"hidden": 5}, seed=3)
    path = tmp_path / "tiny.safetensors"
    digest = save_checkpoint(path, lopt)
    from_file = resolve_optimizer(path, task)
    from_bytes = resolve_optimizer(checkpoint_bytes(lopt)[0], task)
    for resolved in (from_file, from_bytes):
        assert resolved.checkpoint.content_hash == digest and not resolved.untrained
        assert resolved.id == "tiny[hidden=5,init_log_lr=-6.0]" and not resolved.learned.training
    assert torch.equal(losses(from_file, task), losses(from_bytes, task))
    assert torch.equal(losses(from_file, task), losses(resolve_optimizer(lopt, task), task))


def test_mistakes_are_one_line(registry, task, tmp_path):
    with pytest.raises(ConfigError, match="unknown optimizer 'adamm': did you mean 'adam'"):
        resolve_optimizer("adamm", task)
    with pytest.raises(ConfigError, match="carries its own"):
        resolve_optimizer(tmp_path / "x.safetensors", task, params={"lr": 1})


def test_evaluate_and_the_runner_resolve_alike(registry, monkeypatch, capsys):
    """``l2obench evaluate`` and a runner cell go through the one resolver, and give the
    same losses for the same optimizer, task and seeds."""
    from l2obench import resolve, work
    from l2obench.cells import CellKind, OptimizerKind

    calls = []
    real = resolve.resolve_optimizer

    def recording(spec, *args, **kwargs):
        calls.append(spec)
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(resolve, "resolve_optimizer", recording)
    assert main(["evaluate", "--optimizer", "adam", "--param", "lr=0.05", "--task", "quadratic",
                 "--task-param", "dim=6", "--steps", "12", "--seeds", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    config = {"dim": 6, "functions": 1, "distribution": "gaussian", "init_scale": 0.01}
    spec = {"optimizer": {"kind": OptimizerKind.BASELINE.value, "plugin": "adam", "params": {"lr": 0.05}},
            "task": {"family": "quadratic", "config": config}, "seeds": [0, 1, 2, 3], "horizon": 12,
            "split": "test", "device": "cpu"}
    cell = work.run_cell(CellKind.TEST, spec, {})
    assert calls == ["adam", "adam"]
    assert report["optimizer"] == "adam[lr=0.05]"
    summed = cell["losses"].sum(axis=1).mean()
    assert report["summed"]["mean"] == pytest.approx(summed, rel=1e-5)  # evaluate sums in float32
