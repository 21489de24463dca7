"""``l2obench meta-train`` and ``l2obench evaluate`` end to end through ``cli.main``."""
from __future__ import annotations

import json

import pytest
import torch

import l2obench.registry
from l2obench import Registry
from l2obench.checkpoint import load_checkpoint
from l2obench.cli import main
from l2obench.plugins import baselines, estimators, quadratic

from test_metatrain import TinyPlugin

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    reg = Registry([TinyPlugin(), baselines, quadratic, estimators], entry_points=False)
    monkeypatch.setattr(l2obench.registry, "_default", reg)
    return reg


TRAIN = ["meta-train", "--optimizer", "tiny", "--param", "hidden=4", "--param", "init_log_lr=-5",
         "--task", "quadratic", "--task-param", "dim=6", "--horizon", "10", "--unroll", "5", "--epochs", "2",
         "--episodes-per-epoch", "3", "--meta-batch", "2", "--lr", "0.05", "--validation-seeds", "3", "--quiet"]


def error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("l2obench: error: ") and "\n" not in err
    return err


def test_meta_train_then_evaluate(tmp_path, capsys, registry):
    ckpt = tmp_path / "tiny.safetensors"
    assert main(TRAIN + ["--seed", "3", "--out", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert f"saved {ckpt}" in out and "validation summed loss" in out
    lopt, info = load_checkpoint(ckpt, registry)
    assert info.hyperparameters == {"hidden": 4, "init_log_lr": -5}
    assert info.training["task"] == "quadratic" and info.training["task_config"]["dim"] == 6
    assert info.training["config"]["horizon"] == 10 and info.training["config"]["seed"] == 3
    assert set(info.training["validation"]) == {"0", "1", "2"}

    again = tmp_path / "again.safetensors"
    assert main(TRAIN + ["--seed", "3", "--out", str(again)]) == 0
    capsys.readouterr()
    lopt2, _ = load_checkpoint(again, registry)
    assert all(torch.equal(a, b) for a, b in zip(lopt.state_dict().values(), lopt2.state_dict().values()))

    argv = ["evaluate", "--checkpoint", str(ckpt), "--task", "quadratic", "--task-param", "dim=6",
            "--steps", "10", "--seeds", "5", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["seeds"] == 5 and report["steps"] == 10 and report["split"] == "test"
    assert report["optimizer"].startswith("tiny[") and report["sha256"] == info.content_hash
    assert report["final"]["low"] <= report["final"]["mean"] <= report["final"]["high"]
    assert report["summed"]["mean"] >= report["final"]["mean"]


def test_evaluate_baseline_text_and_json(capsys):
    argv = ["evaluate", "--optimizer", "adam", "--param", "lr=0.1", "--task", "quadratic",
            "--steps", "20", "--seeds", "8"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "adam[lr=0.1] on quadratic" in text and "final loss" in text and "±" in text
    assert main(argv + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    from l2obench.evaluate import run
    from l2obench.stats import mean_ci

    reg = l2obench.registry._default
    traj = run(reg.optimizer("adam", lr=0.1), reg.task("quadratic"), list(range(8)), 20, "test")
    expected = mean_ci(traj.summed.tolist())
    assert report["summed"]["mean"] == pytest.approx(expected.mean)
    assert report["summed"]["ci95"] == pytest.approx(expected.half_width)


def test_evaluate_untrained_learned_optimizer(capsys):
    assert main(["evaluate", "--optimizer", "tiny", "--task", "quadratic", "--steps", "5", "--seeds", "3",
                 "--json"]) == 0
    assert "untrained" in json.loads(capsys.readouterr().out)["optimizer"]


@pytest.mark.parametrize("argv, match", [
    (["meta-train", "--optimizer", "lstmm", "--task", "quadratic", "--out", "x.safetensors"],
     "unknown learned optimizer 'lstmm'"),
    (["meta-train", "--optimizer", "tiny", "--param", "depth=3", "--task", "quadratic", "--out", "x"],
     "unknown parameter 'depth'"),
    (["meta-train", "--optimizer", "tiny", "--task", "quadratic", "--task-param", "dim=-1", "--out", "x"],
     "invalid dim=-1"),
    (["meta-train", "--optimizer", "tiny", "--task", "quadratic", "--horizon", "0", "--out", "x"],
     "meta-train config: invalid horizon=0"),
    (["meta-train", "--optimizer", "tiny", "--task", "quadratic", "--device", "cuda:0", "--out", "x"]
     if not torch.cuda.is_available() else
     ["meta-train", "--optimizer", "tiny", "--task", "quadratic", "--device", "tpu", "--out", "x"],
     "--device"),
    (["meta-train", "--optimizer", "tiny", "--task", "quadratic", "--param", "hidden", "--out", "x"],
     "expected key=value"),
    (["evaluate", "--optimizer", "adamm", "--task", "quadratic"], "did you mean 'adam'"),
    (["evaluate", "--optimizer", "adam", "--task", "quadratic", "--steps", "0"], "must be positive"),
    (["evaluate", "--checkpoint", "nowhere.safetensors", "--task", "quadratic"], "no such file"),
    (["evaluate", "--checkpoint", "x", "--param", "lr=1", "--task", "quadratic"], "--param applies"),
])
def test_bad_arguments_are_one_line_errors(capsys, tmp_path, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)
    assert match in error_line(capsys, argv)
    assert not list(tmp_path.iterdir())


def test_argparse_refuses_bad_choices(capsys):
    with pytest.raises(SystemExit) as info:
        main(TRAIN + ["--weights", "heavy", "--out", "x"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_meta_train_options_are_the_config_fields_with_its_defaults():
    """Every MetaTrainConfig setting is an option, its default the config's (written once)."""
    from l2obench.cli import build_parser
    from l2obench.commands.metatrain import config_from_args
    from l2obench.config import MetaTrainConfig

    args = build_parser().parse_args(["meta-train", "--optimizer", "tiny", "--task", "quadratic", "--out", "x"])
    assert config_from_args(args) == MetaTrainConfig()
    args = build_parser().parse_args(["meta-train", "--optimizer", "tiny", "--task", "quadratic", "--out", "x",
                                      "--estimator", "pes", "--estimator-param", "population=4",
                                      "--estimator-param", "sigma=0.1", "--objective", "heldout_loss"])
    assert config_from_args(args) == MetaTrainConfig(estimator="pes", estimator_params={"population": 4, "sigma": 0.1},
                                                     objective="heldout_loss")
    args = build_parser().parse_args(TRAIN + ["--clip", "none", "--time-limit", "30", "--second-order",
                                              "--weights", "final", "--out", "x"])
    assert (args.clip, args.time_limit_s, args.second_order, args.weights) == (None, 30.0, True, "final")
    assert (args.horizon, args.unroll, args.meta_batch, args.lr) == (10, 5, 2, 0.05)


@pytest.mark.parametrize("name, match", [
    ("tpu", "expected cpu, cuda or cuda:N"),
    ("mps", "mps is not supported"),
    ("cuda:x", "expected cpu, cuda or cuda:N"),
    *([("cuda", "no CUDA device")] if not torch.cuda.is_available() else []),
])
def test_one_device_check_for_every_command(name, match, capsys, tmp_path, monkeypatch):
    from l2obench.devices import resolve_device

    with pytest.raises(l2obench.ConfigError, match=match) as info:
        resolve_device(name, "suite.device")
    assert str(info.value).startswith("suite.device") and "\n" not in str(info.value)
    monkeypatch.chdir(tmp_path)
    for argv in (["evaluate", "--optimizer", "adam", "--task", "quadratic"],
                 TRAIN + ["--out", "x.safetensors"], ["run", "nowhere.toml", "--out", "out", "--dry-run"]):
        assert match in error_line(capsys, argv + ["--device", name])
    assert resolve_device("cpu").type == "cpu"


# -- --out is checked before any training; a save that still fails keeps the checkpoint

@pytest.mark.parametrize("out, match", [
    ("/proc/x.safetensors", "cannot write in /proc"),
    ("{tmp}/missing/x.safetensors", "does not exist"),
    ("{tmp}/file/x.safetensors", "is not a directory"),
    ("{tmp}", "expected a file name"),
])
def test_out_is_checked_before_training(capsys, tmp_path, monkeypatch, out, match):
    (tmp_path / "file").write_text("")
    trained = []
    monkeypatch.setattr("l2obench.metatrain.meta_train", lambda *a, **k: trained.append(1))
    err = error_line(capsys, TRAIN + ["--out", out.format(tmp=tmp_path)])
    assert match in err and "--out" in err and not trained
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the probe is gone


def test_a_save_that_fails_after_training_keeps_the_checkpoint_elsewhere(capsys, tmp_path, monkeypatch, registry):
    import l2obench.checkpoint

    out = tmp_path / "out" / "tiny.safetensors"
    out.parent.mkdir()
    (tmp_path / "tiny.safetensors").write_text("someone else's")
    real = l2obench.checkpoint.atomic_write_bytes

    def refuse_out(path, data):
        if path.parent == out.parent:
            raise OSError(28, "No space left on device")
        real(path, data)

    monkeypatch.setattr(l2obench.checkpoint, "atomic_write_bytes", refuse_out)
    monkeypatch.chdir(tmp_path)
    err = error_line(capsys, TRAIN + ["--out", str(out)])
    kept = tmp_path / "tiny-1.safetensors"
    assert "No space left on device" in err and f"saved to {kept} instead" in err
    assert (tmp_path / "tiny.safetensors").read_text() == "someone else's"
    lopt, info = load_checkpoint(kept, registry)
    assert info.training["task"] == "quadratic" and not out.exists()


def test_a_failed_meta_training_writes_no_checkpoint(capsys, tmp_path):
    out = tmp_path / "tiny.safetensors"
    err = error_line(capsys, TRAIN + ["--lr", "1e30", "--out", str(out)])
    assert "meta-training failed:" in err and f"nothing was written to {out}" in err
    assert not out.exists()


def test_help_comes_from_the_config_field_descriptions(capsys):
    from l2obench.config import MetaTrainConfig

    with pytest.raises(SystemExit):
        main(["meta-train", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps after hyphens
    for name, info in MetaTrainConfig.model_fields.items():
        assert info.description and info.description.split(";")[0] in text, name
