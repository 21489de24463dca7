"""The conformance kit catches what it promises to catch (issue 5): each
deliberately broken optimizer, learned optimizer and task family fails its
specific check with a message naming the property and the shrunk example,
and correct ones pass."""
from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap
from typing import Literal

import pydantic
import pytest
import torch
from hypothesis import Phase, find, given, settings
from hypothesis import strategies as st

from l2obench import Capabilities, ConfigError, LearnedOptimizer, Optimizer, TaskConfig, TaskFamily, get_registry
from l2obench.plugins.baselines import adam, sgd
from l2obench.plugins.quadratic import family as quadratic
from l2obench.task import seed_generator
from l2obench.testing import (check_batched_equals_rows, check_capabilities, check_config_errors,
                              check_coordinates_independent, check_descent_on_quadratic, check_deterministic,
                              check_inputs_unchanged, check_learned_optimizer, check_meta_gradients, check_optimizer,
                              check_permutation_equivariant, check_replay, check_second_derivatives,
                              check_state_round_trip, check_state_structure, check_task_batching,
                              check_task_deterministic, check_task_family, check_task_finite_at_init, check_task_gradient,
                              check_task_heldout,
                              check_updates_finite, check_uses_groups, check_zero_grad, checks_for,
                              parametrize_with_checks, strategies)

KIT = settings(max_examples=10, deadline=None, derandomize=True, database=None)


def fails(check, obj, *phrases: str) -> str:
    """Run ``check`` on ``obj``; it must raise AssertionError naming the check and every phrase."""
    with pytest.raises(AssertionError) as info:
        check(obj)
    message = str(info.value)
    assert message.startswith(check.__name__), message
    for phrase in phrases:
        assert phrase in message, message
    return message


# -- broken optimizers --------------------------------------------------------------


def grad_in_place(lr: float = 0.01) -> Optimizer:
    """Scales the gradient in place and returns it as the update."""
    return Optimizer(lambda p: {}, lambda g, s, p: (g.mul_(-lr), s))


def nan_below_1e30(lr: float = 0.01) -> Optimizer:
    """NaN wherever a non-zero gradient is smaller than 1e-30 (a log(|g|) gone wrong)."""

    def update(g, s, p):
        tiny = (g != 0) & (g.abs() < 1e-30)
        return torch.where(tiny, torch.full_like(g, math.nan), -lr * g), s

    return Optimizer(lambda p: {}, update)


def growing_state(lr: float = 0.01) -> Optimizer:
    """Keeps a history of gradients that starts growing after the second step."""

    def init(p):
        return {"history": torch.zeros_like(p), "count": torch.zeros(p.shape[:-1], dtype=p.dtype)}

    def update(g, s, p):
        count = s["count"] + 1
        history = torch.cat([s["history"], g], -1) if bool((count > 2).all()) else s["history"]
        return -lr * g, {"history": history, "count": count}

    return Optimizer(init, update)


def rolled(lr: float = 0.01) -> Optimizer:
    """Declared coordinatewise, but each update also takes the neighbour's gradient."""
    return Optimizer(lambda p: {}, lambda g, s, p: (-lr * (g + g.roll(1, -1)), s), coordinatewise=True)


def mean_mixing(lr: float = 0.01) -> Optimizer:
    """Declared coordinatewise, but adds the mean gradient: symmetric, so permutations miss it."""
    return Optimizer(lambda p: {}, lambda g, s, p: (-lr * (g + g.mean(-1, keepdim=True)), s), coordinatewise=True)


def noisy(lr: float = 0.01) -> Optimizer:
    """Adds noise from torch's global generator: not deterministic."""
    return Optimizer(lambda p: {}, lambda g, s, p: (-lr * g + 1e-3 * torch.randn_like(g), s))


def state_in_place(lr: float = 0.01, mu: float = 0.9) -> Optimizer:
    """Momentum whose buffer is updated in place."""
    return Optimizer(lambda p: {"buf": torch.zeros_like(p)},
                     lambda g, s, p: (-lr * s["buf"].mul_(mu).add_(g), s))


def batch_normalised(lr: float = 0.01) -> Optimizer:
    """Normalises by the norm over the whole batch, so seeds leak into each other."""
    return Optimizer(lambda p: {}, lambda g, s, p: (-lr * g / (g.norm() + 1.0), s), coordinatewise=False)


def test_a_correct_optimizer_passes_every_check():
    check_optimizer(adam())
    check_optimizer(sgd(lr=0.1, weight_decay=0.01))


def test_changing_the_input_gradient_in_place_is_caught():
    fails(check_inputs_unchanged, grad_in_place(), "update() changed its input grads in place", "shrunk example")


def test_changing_the_input_state_in_place_is_caught():
    fails(check_inputs_unchanged, state_in_place(), "changed the input state tensor 'buf' in place")


def test_nan_for_gradients_below_1e_30_is_caught():
    message = fails(check_updates_finite, nan_below_1e30(), "is not finite", "gradient there")
    # the shrunk example shows the offending tiny gradient
    shown = float(re.search(r"gradient there: (\S+)\)", message).group(1))
    assert shown != 0 and abs(shown) < 1e-30


def test_state_changing_shape_after_a_few_steps_is_caught():
    fails(check_state_structure, growing_state(), "after step 3 the state's structure changed", "'history'")


def test_coordinatewise_claim_with_mixed_coordinates_is_caught():
    fails(check_permutation_equivariant, rolled(), "declared coordinatewise", "permuting the coordinates")
    fails(check_coordinates_independent, rolled(), "changing only coordinate")


def test_symmetric_mixing_escapes_permutations_but_not_coordinate_independence():
    check_permutation_equivariant(mean_mixing())
    fails(check_coordinates_independent, mean_mixing(), "declared coordinatewise")


def test_mixing_is_fine_when_not_declared_coordinatewise():
    undeclared = rolled().with_flags(coordinatewise=False)
    names = [c.__name__ for c in checks_for(undeclared)]
    assert "check_permutation_equivariant" not in names and "check_coordinates_independent" not in names
    check_optimizer(undeclared)


def test_nondeterminism_is_caught():
    fails(check_deterministic, noisy(), "two runs on the same inputs gave different updates")


def test_seeds_leaking_into_each_other_are_caught():
    fails(check_batched_equals_rows, batch_normalised(), "row", "running that row alone")


def test_zero_gradient_behaviour_is_checked_as_declared():
    decaying = sgd(weight_decay=0.1)
    assert decaying.zero_grad == "any" and "check_zero_grad" not in [c.__name__ for c in checks_for(decaying)]
    fails(check_zero_grad, decaying.with_flags(zero_grad="no-op"), "declared zero_grad='no-op'")


def test_ascent_is_caught():
    fails(check_descent_on_quadratic, sgd(lr=-0.01), "instead of decreasing")


def test_check_optimizer_lists_every_failure_and_honours_expected_ones():
    with pytest.raises(AssertionError) as info:
        check_optimizer(sgd(lr=-0.01))
    message = str(info.value)
    assert message.startswith("the optimizer failed 1 conformance check(s):\n- check_descent_on_quadratic:"), message
    check_optimizer(grad_in_place(), expected_failed_checks={"check_inputs_unchanged": "mutates on purpose"})
    with pytest.raises(AssertionError, match="expected to fail .* but passed"):
        check_optimizer(adam(), expected_failed_checks={"check_zero_grad": "wrongly listed"})
    with pytest.raises(ValueError, match="unknown checks check_typo"):
        check_optimizer(adam(), expected_failed_checks={"check_typo": "x"})


# -- learned optimizers -------------------------------------------------------------


class TinyLearned(LearnedOptimizer):
    """A coordinatewise learned optimizer: ``update = -softplus(a) * g / (|g| + softplus(b))``."""

    def __init__(self, scale: float = 0.1, detach_b: bool = False):
        super().__init__()
        self.hyperparameters = {"scale": scale, "detach_b": detach_b}
        self.a = torch.nn.Parameter(torch.tensor(math.log(math.expm1(scale))))
        self.b = torch.nn.Parameter(torch.tensor(0.5))
        self.detach_b = detach_b

    def opt_fn(self, groups=None) -> Optimizer:
        b = self.b.detach() if self.detach_b else self.b

        def update(g, s, p):
            step = torch.nn.functional.softplus(self.a).to(g.dtype)
            return -step * g / (g.abs() + torch.nn.functional.softplus(b).to(g.dtype)), s

        return Optimizer(lambda p: {}, update, zero_grad="no-op")


class Forgetful(TinyLearned):
    """Does not record ``width`` in its hyperparameters, so a rebuilt copy has the wrong shape."""

    def __init__(self, scale: float = 0.1, width: int = 1):
        super().__init__(scale)
        self.hyperparameters = {"scale": scale}
        self.w = torch.nn.Parameter(torch.zeros(width))

    def opt_fn(self, groups=None) -> Optimizer:
        inner = super().opt_fn(groups)
        return Optimizer(inner.init, lambda g, s, p: (inner.update(g, s, p)[0] * (1 + self.w.sum()), s))


def test_a_correct_learned_optimizer_passes():
    check_learned_optimizer(TinyLearned(), factory=TinyLearned)


def test_the_round_trip_rebuilds_through_the_registry_by_name_and_guesses_nothing():
    check_state_round_trip(get_registry().learned("lstm", hidden=3, layers=1))
    message = fails(check_state_round_trip, TinyLearned(), "has no name", "factory=")
    assert "\n" not in message


def test_detached_meta_parameters_are_caught():
    fails(check_meta_gradients, TinyLearned(detach_b=True), "no meta-gradient reaches b")


def test_unrecorded_hyperparameters_break_the_round_trip():
    with pytest.raises(AssertionError, match="load_state_dict failed.*size mismatch"):
        check_state_round_trip(Forgetful(width=3), factory=Forgetful)
    check_state_round_trip(Forgetful(width=1), factory=Forgetful)  # happens to match the default


def test_learned_optimizer_checks_run_on_opt_fn():
    names = [c.__name__ for c in checks_for(TinyLearned())]
    assert "check_inputs_unchanged" in names and "check_meta_gradients" in names
    assert "check_descent_on_quadratic" not in names


# -- task families ------------------------------------------------------------------


class ToyConfig(TaskConfig):
    dim: int = pydantic.Field(3, gt=0)
    kind: Literal["bowl", "valley"] = "bowl"


class ToyTask:
    """f(theta) = sum(c * theta**2) with c drawn per seed; ``leak`` seeds rows with the sum of all seeds."""

    def __init__(self, config, leak=False, noise=False, log=False):
        self.config, self.dim, self.groups = config, config.dim, {"all": slice(0, config.dim)}
        self.leak, self.noise, self.log = leak, noise, log

    def _gen(self, seeds, s, salt):
        return seed_generator(sum(seeds) if self.leak else s, salt)

    def init(self, seeds, device="cpu"):
        rows = [torch.randn(self.dim, generator=self._gen(seeds, s, "init")) for s in seeds]
        out = torch.stack(rows)
        return out + torch.randn_like(out) if self.noise else out

    def batches(self, split, seeds, device="cpu"):
        c = torch.stack([torch.rand(self.dim, generator=self._gen(seeds, s, split)) + 0.5 for s in seeds])
        while True:
            yield c

    def loss(self, params, batch):
        value = (batch * params**2).sum(-1)
        return torch.log(value - value) if self.log else value


class ToyHeldout(ToyTask):
    """ToyTask with a held-out loss: ``(params**2).sum``; ``leak`` adds the mean over seeds,
    ``shape`` returns one value for all seeds, ``undeclared`` drops ``metrics``."""

    metrics = ("loss",)

    def __init__(self, config, leak=False, shape=False, undeclared=False):
        super().__init__(config)
        self.heldout_leak, self.shape = leak, shape
        if undeclared:
            self.metrics = ()

    def evaluate(self, params, split):
        value = (params**2).sum(-1)
        if self.heldout_leak:
            value = value + value.mean()
        return {"loss": value.sum() if self.shape else value}


def test_a_correct_task_family_passes():
    check_task_family(TaskFamily(ToyConfig, ToyTask, name="toy"))
    check_task_family(TaskFamily(ToyConfig, ToyHeldout, name="toy-heldout"))
    check_task_family(quadratic)


@pytest.mark.parametrize("kwargs, phrases", [
    ({"leak": True}, ("row 0 of the batched call", "alone gives")),
    ({"shape": True}, ("'loss' on split 'validation' is ()", "expected a tensor of shape")),
    ({"undeclared": True}, ("has evaluate() but declares no metrics",)),
], ids=["rows-depend-on-other-seeds", "not-per-seed", "undeclared"])
def test_held_out_metrics_that_lie_are_caught(kwargs, phrases):
    family = TaskFamily(ToyConfig, lambda c: ToyHeldout(c, **kwargs), name="bad-heldout")
    fails(check_task_heldout, family, *phrases)


class ToyWrittenGradient(ToyTask):
    """ToyTask with its gradient written out; ``wrong`` forgets the factor 2, ``double`` gives
    it in float64."""

    def __init__(self, config, wrong=False, double=False):
        super().__init__(config)
        self.wrong, self.double = wrong, double

    def loss_and_grad(self, params, batch):
        grad = (1 if self.wrong else 2) * batch * params
        return self.loss(params, batch), grad.double() if self.double else grad


def test_a_written_out_gradient_is_checked_against_autograd():
    check_task_gradient(TaskFamily(ToyConfig, ToyWrittenGradient, name="toy-grad"))
    check_task_gradient(TaskFamily(ToyConfig, ToyTask, name="toy"))  # none written out: nothing to check
    wrong = TaskFamily(ToyConfig, lambda c: ToyWrittenGradient(c, wrong=True), name="toy-grad-wrong")
    fails(check_task_gradient, wrong, "loss_and_grad's gradient differs from autograd through loss", "seeds=")
    double = TaskFamily(ToyConfig, lambda c: ToyWrittenGradient(c, double=True), name="toy-grad-double")
    fails(check_task_gradient, double, "loss_and_grad's gradient:", "torch.float64", "give", "torch.float32")
    with pytest.raises(AssertionError, match="check_task_gradient"):
        check_task_family(wrong)


def test_rows_depending_on_other_seeds_are_caught():
    leaky = TaskFamily(ToyConfig, lambda c: ToyTask(c, leak=True), name="leaky")
    fails(check_task_batching, leaky, "differs from init", "seeds=")


def test_nondeterministic_tasks_are_caught():
    fails(check_task_deterministic, TaskFamily(ToyConfig, lambda c: ToyTask(c, noise=True), name="noisy"),
          "init() gave different parameters")


def test_non_finite_loss_at_init_is_caught():
    fails(check_task_finite_at_init, TaskFamily(ToyConfig, lambda c: ToyTask(c, log=True), name="log0"),
          "not finite at init")


@pytest.mark.parametrize("group", [slice(0, 99), slice(2, 1), slice(-1, None), [0, 1]],
                         ids=["past-dim", "reversed", "negative", "not-a-slice"])
def test_groups_outside_the_parameters_are_caught(group):
    def make(config):
        task = ToyTask(config)
        task.groups = {"bad": group}
        return task

    fails(check_task_finite_at_init, TaskFamily(ToyConfig, make, name="grouped"), "group 'bad' is",
          "not a slice inside dim=")


def test_config_mistakes_must_be_one_line_config_errors_naming_the_key():
    class Lenient(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="ignore")
        dim: int = 3

    fails(check_config_errors, TaskFamily(Lenient, ToyTask, name="lenient"), "no_such_key_l2obench", "was accepted")

    class Chatty(TaskFamily):
        def validate(self, **params):
            try:
                return self.config(**params)
            except pydantic.ValidationError as exc:
                raise ConfigError(str(exc)) from None

    fails(check_config_errors, Chatty(ToyConfig, ToyTask, name="chatty"), "spans several lines")


# -- parametrize_with_checks ----------------------------------------------------------


def _cases(mark):
    (argnames, params), _ = mark.args, mark.kwargs
    assert argnames == "obj, check"
    return {p.id: p for p in params}


def test_parametrize_ids_and_applicability_follow_the_flags():
    cases = _cases(parametrize_with_checks({"adam": adam(), "mixer": rolled().with_flags(coordinatewise=False),
                                            "toy": TaskFamily(ToyConfig, ToyTask)}))
    assert "adam-check_inputs_unchanged" in cases and "adam-check_permutation_equivariant" in cases
    assert "mixer-check_batched_equals_rows" in cases and "mixer-check_permutation_equivariant" not in cases
    assert "toy-check_task_batching" in cases
    obj, check = cases["adam-check_zero_grad"].values
    assert check.__name__ == "check_zero_grad" and isinstance(obj, Optimizer)


def test_parametrize_default_ids_and_expected_failures():
    family = TaskFamily(ToyConfig, ToyTask, name="toy")
    cases = _cases(parametrize_with_checks([adam(), sgd(), family],
                                           expected_failed_checks=lambda o: {"check_zero_grad": "because"}
                                           if isinstance(o, Optimizer) else {}))
    assert "optimizer0-check_deterministic" in cases and "optimizer1-check_deterministic" in cases
    assert "toy-check_config_errors" in cases
    (xfail,) = cases["optimizer1-check_zero_grad"].marks
    assert xfail.name == "xfail" and xfail.kwargs == {"strict": True, "reason": "because"}
    assert not cases["optimizer1-check_deterministic"].marks


def test_the_usage_of_a_plugin_package_and_the_pytest_plugin_work_end_to_end(tmp_path):
    (tmp_path / "test_mine.py").write_text(textwrap.dedent("""
        from l2obench.plugins.baselines import sgd
        from l2obench.plugins.quadratic import family
        from l2obench.testing import parametrize_with_checks

        ascent = sgd(lr=-0.01)

        @parametrize_with_checks({"sgd": sgd(), "ascent": ascent, "quadratic": family},
                                 expected_failed_checks=lambda obj: {"check_descent_on_quadratic": "lr < 0"}
                                 if obj is ascent else {})
        def test_conformance(obj, check):
            check(obj)

        def test_fixture(l2obench_check):
            l2obench_check(family)
    """))
    (tmp_path / "pytest.ini").write_text("[pytest]\nl2obench_expected_failures =\n"
                                         "    sgd-check_zero_grad: listed to see a strict xpass\n")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--l2obench-conformance=l2obench",
         "-k", "test_mine or sgd-check_zero_grad or quadratic-check_config_errors", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = result.stdout
    # 12 sgd + 12 ascent (1 xfail) + 7 quadratic checks + the fixture; the option adds 2 (1 strict XPASS)
    assert re.search(r"\b1 failed, 32 passed, (\d+ deselected, )?1 xfailed\b", out), out
    assert "test_conformance[ascent-check_descent_on_quadratic]" not in out, out
    assert "l2obench[l2obench]::sgd-check_zero_grad" in out and "XPASS(strict)" in out, out


# -- strategies ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_reach_every_magnitude(dtype):
    tiny_normal = torch.finfo(dtype).tiny
    grads = strategies.gradients(shape=(1, 4), dtype=dtype)
    for label, holds in {
        "zero": lambda g: (g == 0).any(),
        "subnormal": lambda g: ((g != 0) & (g.abs() < tiny_normal)).any(),
        "tiny": lambda g: ((g.abs() >= tiny_normal) & (g.abs() < 1e-30)).any(),
        "huge": lambda g: (g.abs() > 1e30).any(),
        "mixed signs": lambda g: (g > 0).any() and (g < 0).any(),
    }.items():
        found = find(grads, lambda g: bool(holds(g)), settings=settings(KIT, phases=[Phase.generate]))
        assert found.dtype == dtype and found.shape == (1, 4), label


@KIT
@given(strategies.gradients(), strategies.parameters())
def test_drawn_tensors_are_finite_and_batched(grads, params):
    for t in (grads, params):
        assert t.dim() == 2 and t.dtype in (torch.float32, torch.float64) and bool(torch.isfinite(t).all())


@KIT
@given(st.data())
def test_drawn_hyperparameters_build_every_registered_optimizer(data):
    registry = get_registry()
    for entry in registry.entries["optimizer"].values():
        hp = data.draw(strategies.hyperparameters(entry.obj), label=entry.name)
        assert set(hp) == set(entry.parameters())
        assert all(v > 0 for k, v in hp.items() if isinstance(v, float) and entry.parameters()[k] > 0)
        assert 0.5 <= hp.get("beta2", 0.5) < 1
        assert isinstance(registry.optimizer(entry.name, **hp), Optimizer)


@KIT
@given(strategies.task_configs(quadratic))
def test_drawn_task_configs_are_valid_and_small(config):
    task = quadratic.task(**config)
    assert 1 <= config["dim"] <= 4 and 1 <= config["functions"] <= 4
    assert task.dim == config["dim"] * config["functions"]


def test_strategy_overrides():
    hp = find(strategies.hyperparameters(adam, lr=0.5, beta1=st.just(0.0)), lambda _: True, settings=KIT)
    assert hp["lr"] == 0.5 and hp["beta1"] == 0.0
    with pytest.raises(ValueError, match="unknown overrides nope"):
        strategies.hyperparameters(adam, nope=1)


class BadReplay(TinyLearned):
    """A replay whose meta-gradient is twice the steps' (``2 u - u.detach()``): the values
    agree, the gradients do not."""

    capabilities = Capabilities(replay=True)

    def opt_fn(self, groups=None) -> Optimizer:
        inner = super().opt_fn(groups)

        def replay(grads, state, updates):
            outs = []
            for g in grads:
                u, state = inner.update(g, state, None)
                outs.append(u)
            stacked = torch.stack(outs)
            return stacked * 2 - stacked.detach()

        return inner.with_flags(replay=replay)


def test_a_replay_with_the_wrong_meta_gradient_is_caught():
    fails(check_replay, BadReplay(), "through replay differs from the one through the steps")
    assert "check_replay" not in [c.__name__ for c in checks_for(TinyLearned())]  # no replay, no check


# -- capabilities ---------------------------------------------------------------------


class UndeclaredReplay(BadReplay):
    """Gives a replay but declares none."""

    capabilities = Capabilities(replay=False)


class ClaimedReplay(TinyLearned):
    """Declares replay but gives none."""

    capabilities = Capabilities(replay=True)


def test_the_replay_flag_must_tell_the_truth():
    check_capabilities(TinyLearned())
    fails(check_capabilities, UndeclaredReplay(), "carries replay, but capabilities.replay is False")
    fails(check_capabilities, ClaimedReplay(), "capabilities.replay is True, but")
    assert "check_replay" in [c.__name__ for c in checks_for(ClaimedReplay())]  # read from the flag


class _MetaGradientsOnly(torch.autograd.Function):
    """The identity, with a hand-written backward that gives no gradient with respect to
    the optimizee's gradients (as a fused kernel's may): first-order meta-training never
    asks for one, a second-order meta-gradient does."""

    @staticmethod
    def forward(ctx, g):
        return g.clone()

    @staticmethod
    def backward(ctx, d_out):
        raise RuntimeError("the fused backward gives no gradient with respect to the optimizee's gradients")


class OnceDifferentiable(TinyLearned):
    """Feeds the gradients through :class:`_MetaGradientsOnly` but declares second derivatives."""

    def opt_fn(self, groups=None) -> Optimizer:
        inner = super().opt_fn(groups)
        return Optimizer(inner.init, lambda g, s, p: inner.update(_MetaGradientsOnly.apply(g), s, p))


def test_a_false_claim_of_second_derivatives_is_caught():
    check_second_derivatives(TinyLearned())
    fails(check_second_derivatives, OnceDifferentiable(), "second_derivatives is True", "second_derivatives=False")
    honest = OnceDifferentiable()
    honest.capabilities = Capabilities(second_derivatives=False)
    assert "check_second_derivatives" not in [c.__name__ for c in checks_for(honest)]


def test_meta_training_refuses_second_order_for_an_optimizer_without_second_derivatives():
    from l2obench.metatrain import meta_train

    lopt = OnceDifferentiable()
    lopt.capabilities = Capabilities(second_derivatives=False)
    with pytest.raises(ConfigError, match="second_order") as info:
        meta_train(lopt, quadratic.task(dim=2), {"second_order": True, "epochs": 1, "episodes_per_epoch": 1},
                   progress=False)
    assert "\n" not in str(info.value)


# -- optimizers that use the task's parameter groups --------------------------------------


def _group_norms(x, groups):
    """Per coordinate, the norm of its group's entries (coordinates in no group form one more)."""
    label = torch.zeros(x.shape[-1], dtype=torch.long, device=x.device)
    for k, sl in enumerate(groups.values(), 1):
        label[sl] = k
    out = torch.zeros_like(x)
    for k in label.unique():
        mask = label == k
        out = torch.where(mask, x[..., mask].norm(dim=-1, keepdim=True), out)
    return out


def normalised(lr: float = 0.1, *, groups) -> Optimizer:
    """Layer-wise normalised gradient descent: ``-lr * g / (||g_group|| + 1)``."""
    return Optimizer(lambda p: {}, lambda g, s, p: (-lr * g / (_group_norms(g, groups) + 1.0), s),
                     coordinatewise=False, uses_groups=True)


def ignores_groups(lr: float = 0.1, *, groups) -> Optimizer:
    """Takes groups and says it uses them, but normalises over all coordinates."""
    return normalised(lr, groups={})


def unflagged(lr: float = 0.1, *, groups) -> Optimizer:
    """Uses its groups without saying so."""
    return normalised(lr, groups=groups).with_flags(uses_groups=False)


def flagged_without_groups(lr: float = 0.1) -> Optimizer:
    return normalised(lr, groups={})


def positional_groups(lr: float = 0.1, groups=None) -> Optimizer:
    return normalised(lr, groups=groups or {})


def nan_with_groups(lr: float = 0.1, *, groups) -> Optimizer:
    """Divides by each group's norm unguarded: zero gradients give NaN."""
    return Optimizer(lambda p: {}, lambda g, s, p: (-lr * g / _group_norms(g, groups), s), coordinatewise=False,
                     uses_groups=True)


def test_a_correct_layer_wise_optimizer_passes_through_its_factory():
    check_optimizer(normalised)
    assert "check_uses_groups" in [c.__name__ for c in checks_for(normalised)]
    assert "check_uses_groups" not in [c.__name__ for c in checks_for(sgd)]  # a factory without groups


def test_the_groups_flag_is_checked_against_what_the_optimizer_does():
    fails(check_uses_groups, ignores_groups, "do not depend on the groups")
    fails(check_uses_groups, unflagged, "says uses_groups=False")
    fails(check_uses_groups, flagged_without_groups, "takes no groups")
    fails(check_uses_groups, positional_groups, "keyword-only")
    fails(check_uses_groups, nan_with_groups, "not all finite", "with groups {first: 0:")


def test_an_optimizer_instance_that_uses_groups_must_be_checked_through_its_factory():
    message = fails(check_uses_groups, normalised(groups={}), "needs its factory")
    assert "\n" not in message
    with pytest.raises(AssertionError, match="check_uses_groups"):
        check_optimizer(normalised(groups={}))
