"""Hyperparameters are declared once, on the factory, and checked the same way for
the command line, suites and the registry: a learning rate finite and positive,
decay rates in [0, 1), numbers finite, before any factory runs."""
from __future__ import annotations

import math
from typing import Annotated

import pydantic
import pytest

from l2obench import ConfigError, Registry, hookimpl
from l2obench.api import Beta, LearningRate, Optimizer, PositiveInt, scale
from l2obench.cli import main
from l2obench.registry import get_registry

BASELINES = ["sgd", "momentum", "nag", "rmsprop", "adam", "adamw", "adagrad"]


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("lr", [-1.0, 0.0, math.nan, math.inf, -math.inf, "0.1", True])
def test_a_learning_rate_must_be_finite_and_positive(name, lr):
    with pytest.raises(ConfigError, match=rf"^optimizer {name!r}: lr=.* must be") as info:
        get_registry().optimizer(name, lr=lr)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name,key", [("adam", "beta1"), ("adam", "beta2"), ("adamw", "beta1"),
                                      ("momentum", "momentum"), ("nag", "momentum"), ("rmsprop", "alpha")])
@pytest.mark.parametrize("value", [-0.1, 1.0, 2.0])
def test_decay_rates_lie_in_the_unit_interval(name, key, value):
    with pytest.raises(ConfigError, match=rf"{key}={value!r} must be"):
        get_registry().optimizer(name, **{key: value})


@pytest.mark.parametrize("name", BASELINES)
def test_the_defaults_and_ordinary_values_pass(name):
    get_registry().optimizer(name)
    get_registry().optimizer(name, lr=0.3)
    get_registry().optimizer(name, lr=3)  # an integer is a number


def plugin_with(factory):
    class Plugin:
        @hookimpl
        def register_optimizers(self, register):
            register("declared", factory)

    return Registry([Plugin()], entry_points=False)


def test_a_plugin_declares_bounds_with_annotations():
    def declared(lr: LearningRate = 0.1, decay: Beta = 0.5, steps: PositiveInt = 3,
                 shape: Annotated[float, pydantic.Field(ge=2, le=4)] = 3.0) -> Optimizer:
        return scale(-lr)

    reg = plugin_with(declared)
    reg.optimizer("declared", lr=0.2, decay=0.0, steps=5, shape=2.0)
    for bad, message in [({"steps": 0}, "steps=0 must be greater than or equal to 1"),
                         ({"steps": 2.5}, "steps=2.5 must be an integer"),
                         ({"shape": 5.0}, "shape=5.0 must be less than or equal to 4"),
                         ({"decay": 1.0}, "decay=1.0 must be less than 1")]:
        with pytest.raises(ConfigError, match=f"optimizer 'declared': {message}"):
            reg.optimizer("declared", **bad)


def test_an_unannotated_parameter_takes_its_type_from_its_default():
    def plain(lr=0.1, nesterov=False, name="x") -> Optimizer:
        return scale(-lr)

    reg = plugin_with(plain)
    with pytest.raises(ConfigError, match="nesterov=1 must be true or false"):
        reg.optimizer("declared", nesterov=1)
    with pytest.raises(ConfigError, match="lr=nan must be a finite number"):
        reg.optimizer("declared", lr=math.nan)
    with pytest.raises(ConfigError, match="name=3 must be"):
        reg.optimizer("declared", name=3)


@pytest.mark.parametrize("value", ["-1", "nan", "1e999", "0"])
def test_the_command_line_refuses_a_bad_learning_rate_before_running(capsys, value):
    assert main(["evaluate", "--optimizer", "adam", "--param", f"lr={value}", "--task", "quadratic",
                 "--steps", "2", "--seeds", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("l2obench: error: optimizer 'adam': lr=") and "\n" not in err


def test_a_suite_refuses_a_bad_baseline_parameter(tmp_path):
    from l2obench.suite import load_suite

    path = tmp_path / "bad.toml"
    path.write_text('[suite]\nname = "bad"\nseeds = 2\nvalidation_seeds = 2\n'
                    '[baselines]\noptimizers = ["adam"]\nlr_grid = [0.1]\nparams = { adam = { beta2 = 1.5 } }\n'
                    '[[test]]\ntask = { family = "quadratic" }\nhorizons = 5\n')
    with pytest.raises(ConfigError, match=r"baselines\.params\.adam\.beta2.*beta2=1\.5 must be less than 1"):
        load_suite(path)
