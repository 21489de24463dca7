"""Meta-gradient estimators (tbptt, es, pes): on a problem whose exact meta-gradient is
computable (a small float64 quadratic and a two-parameter learned optimizer), ES and PES
agree with it within their standard error, PES stays unbiased across truncations where
truncated ES does not, meta-training with each lowers the meta-loss (the training loss,
or a held-out metric from ``Task.evaluate``), and bad settings are refused in one line."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from l2obench import ConfigError, LearnedOptimizer, Optimizer
from l2obench.api import HeldOutTask, MetaProblem, get_registry, seed_generator
from l2obench.evaluate import loss_and_grad
from l2obench.metatrain import (MetaTrainConfig, build_estimator, episode_horizon, horizon_weights, meta_train,
                                validation_loss)

pytestmark = pytest.mark.usefixtures("single_thread")

DIM, SEEDS = 4, [3, 7]


@dataclass(frozen=True)
class Quadratic64:
    """``f(theta) = ||W theta - y||^2 / DIM`` in float64, the same minibatch every step, seeds
    drawing the initial theta; the held-out set is ``y`` plus noise (``evaluate``: its loss and
    a score in (0, 1], higher better, as accuracy is)."""

    dim: int = DIM
    metrics = ("loss", "accuracy")

    @property
    def groups(self):
        return {}

    def _draw(self, heldout=False):
        g = seed_generator(0, "q64")
        w = torch.eye(DIM, dtype=torch.float64) + 0.3 * torch.randn(DIM, DIM, generator=g, dtype=torch.float64)
        y = torch.randn(DIM, generator=g, dtype=torch.float64)
        noise = torch.randn(DIM, generator=g, dtype=torch.float64)
        return w, y + 0.1 * noise if heldout else y

    def init(self, seeds, device="cpu"):
        return torch.stack([torch.randn(DIM, generator=seed_generator(s, "init"), dtype=torch.float64)
                            for s in seeds]).to(device)

    def batches(self, split, seeds, device="cpu"):
        w, y = self._draw()
        batch = (w.expand(len(seeds), DIM, DIM), y.expand(len(seeds), DIM))
        while True:
            yield batch

    def loss(self, params, batch):
        w, y = batch
        return (torch.einsum("sij,sj->si", w, params) - y).pow(2).sum(-1) / DIM

    def evaluate(self, params, split):
        w, y = self._draw(heldout=True)
        loss = self.loss(params, (w.expand(params.shape[0], DIM, DIM), y.expand(params.shape[0], DIM)))
        return {"loss": loss, "accuracy": torch.exp(-loss)}


@dataclass(frozen=True)
class NoHeldOut(Quadratic64):
    evaluate = None  # type: ignore[assignment]
    metrics = ()


class StepAndMomentum(LearnedOptimizer):
    """``u_t = -exp(a) g_t + m u_{t-1}`` with the momentum ``m = 0.9 sigmoid(b)`` (so it stays
    stable): two meta-parameters, differentiable twice."""

    def __init__(self, log_lr: float = -3.0, momentum: float = 0.3):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(log_lr, dtype=torch.float64))
        self.b = nn.Parameter(torch.logit(torch.tensor(momentum / 0.9, dtype=torch.float64)))

    def opt_fn(self, groups=None) -> Optimizer:
        def init(params):
            return {"u": torch.zeros_like(params)}

        def update(g, state, params):
            u = -self.a.exp() * g + 0.9 * torch.sigmoid(self.b) * state["u"]
            return u, {"u": u}

        return Optimizer(init, update)


HORIZON = 12


def exact_gradient(lopt, task, seeds, horizon=HORIZON):
    """d/d(a, b) of ``sum_t mean_s f(theta_t)`` over the whole horizon, through every step
    (second derivatives kept): the meta-gradient every estimator here estimates."""
    opt = lopt.opt_fn()
    params = task.init(seeds)
    state = opt.init(params)
    stream = task.batches("train", seeds)
    total = 0
    for _ in range(horizon):
        p = params if params.requires_grad else params.requires_grad_(True)
        loss = task.loss(p, next(stream))
        (g,) = torch.autograd.grad(loss.sum(), p, create_graph=True)
        total = total + loss.mean()
        u, state = opt.update(g, state, p)
        params = p + u
    return torch.stack(torch.autograd.grad(total, [lopt.a, lopt.b]))


def problem(lopt, task=None, seed=0, objective="loss"):
    config = MetaTrainConfig(horizon=HORIZON, unroll=3)
    return MetaProblem(lopt, task or Quadratic64(), SEEDS, horizon_weights(config), config.unroll, objective,
                       torch.Generator().manual_seed(seed), torch.device("cpu"))


def episode_estimates(name, settings, repeats, seed=0):
    """``repeats`` episodes' meta-gradients, each summed over the episode's truncations (the
    meta-parameters held fixed), as a ``(repeats, 2)`` tensor."""
    lopt = StepAndMomentum()
    estimator = get_registry().estimator(name, **settings)
    prob = problem(lopt, seed=seed)
    out = []
    for _ in range(repeats):
        total = torch.zeros(2, dtype=torch.float64)
        for est in estimator.episode(prob):
            assert est.finite
            total += torch.stack([g for g in est.grads])
        out.append(total)
    return torch.stack(out)


def within_standard_error(samples, exact, k=4.0):
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(samples.shape[0])
    return mean, se, bool(((mean - exact).abs() < k * se).all())


def test_full_unroll_es_agrees_with_the_exact_meta_gradient():
    exact = exact_gradient(StepAndMomentum(), Quadratic64(), SEEDS)
    samples = episode_estimates("es", {"population": 16, "sigma": 1e-3, "truncation": HORIZON}, 200)
    mean, se, ok = within_standard_error(samples, exact)
    assert (se < 0.2 * exact.abs()).all(), (se, exact)  # precise enough that the check can fail
    assert ok, (mean, se, exact)


def test_pes_is_unbiased_across_truncations_where_truncated_es_is_not():
    exact = exact_gradient(StepAndMomentum(), Quadratic64(), SEEDS)
    settings = {"population": 16, "sigma": 1e-3, "truncation": 3}
    pes = episode_estimates("pes", settings, 200)
    mean, se, ok = within_standard_error(pes, exact)
    assert (se < 0.25 * exact.abs()).all(), (se, exact)
    assert ok, ("pes", mean, se, exact)
    tes = episode_estimates("es", settings, 100)
    mean, se, ok = within_standard_error(tes, exact, k=8.0)
    assert not ok, ("truncated es should be biased", mean, se, exact)


def test_tbptt_full_unroll_with_second_derivatives_is_the_exact_meta_gradient():
    lopt = StepAndMomentum()
    exact = exact_gradient(StepAndMomentum(), Quadratic64(), SEEDS)
    prob = problem(lopt)
    prob.second_order = True
    (est,) = list(get_registry().estimator("tbptt", truncation=HORIZON).episode(prob))
    torch.testing.assert_close(torch.stack(est.grads), exact)


@pytest.mark.parametrize("name,settings", [("tbptt", {}), ("es", {"population": 4, "sigma": 0.01}),
                                           ("pes", {"population": 4, "sigma": 0.01})])
def test_meta_training_with_each_estimator_lowers_the_meta_loss(name, settings):
    lopt = StepAndMomentum(log_lr=-4.0)
    config = dict(horizon=HORIZON, unroll=4, epochs=4, episodes_per_epoch=5, meta_batch=2, lr=0.05,
                  validation_seeds=4, estimator=name, estimator_params=settings)
    result = meta_train(lopt, Quadratic64(), config, progress=False)
    assert result.skipped == 0
    assert result.best_val < 0.9 * result.validation[0], result.validation
    rows = result.history
    assert sum(r["meta_loss"] for r in rows[-5:]) < sum(r["meta_loss"] for r in rows[:5])
    per_step = 2 if name == "tbptt" else 2 * settings["population"]
    assert result.optimizee_steps == 20 * HORIZON * per_step


@pytest.mark.parametrize("objective", ["heldout_loss", "heldout_accuracy"])
@pytest.mark.parametrize("name", ["es", "pes"])
def test_es_and_pes_follow_a_held_out_metric(name, objective):
    task = Quadratic64()
    lopt = StepAndMomentum(log_lr=-4.0)

    def heldout(lopt):
        """The held-out loss summed over the ends of the truncations, as the objective reads it."""
        params = task.init(SEEDS)
        opt, stream = lopt.opt_fn(), task.batches("train", SEEDS)
        state, total = opt.init(params), 0.0
        with torch.no_grad():
            for t in range(HORIZON):
                _, g = loss_and_grad(task, params, next(stream))
                u, state = opt.update(g, state, params)
                params = params + u
                if (t + 1) % 4 == 0:
                    total += float(task.evaluate(params, "validation")["loss"].mean())
        return total

    before = heldout(lopt)
    config = dict(horizon=HORIZON, unroll=4, epochs=3, episodes_per_epoch=5, meta_batch=2, lr=0.05,
                  validation_seeds=2, estimator=name, objective=objective,
                  estimator_params={"population": 4, "sigma": 0.01})
    result = meta_train(lopt, task, config, progress=False)
    assert result.skipped == 0
    assert heldout(lopt) < 0.9 * before
    # early stopping validated the objective itself: the held-out metric over the truncations' ends
    measured = validation_loss(lopt, [(task, [1_000_000, 1_000_001])], HORIZON, objective=objective, every=4)
    assert measured == pytest.approx(result.best_val)
    assert (measured < 0) == (objective == "heldout_accuracy")


def test_heldout_needs_a_task_with_evaluate_and_tbptt_refuses_it():
    assert isinstance(Quadratic64(), HeldOutTask) and not isinstance(NoHeldOut(), HeldOutTask)
    with pytest.raises(ConfigError, match=r"needs a task with held-out data") as info:
        meta_train(StepAndMomentum(), NoHeldOut(), dict(horizon=4, unroll=2, epochs=1, episodes_per_epoch=1,
                                                       validation_seeds=0, estimator="es", objective="heldout_loss"),
                   progress=False)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=r"objective='heldout_acc': Quadratic64 has the held-out metrics loss, "
                                          r"accuracy, not 'acc'; use one of heldout_loss, heldout_accuracy"):
        meta_train(StepAndMomentum(), Quadratic64(), dict(horizon=4, unroll=2, epochs=1, episodes_per_epoch=1,
                                                         validation_seeds=0, estimator="es",
                                                         objective="heldout_acc"), progress=False)
    with pytest.raises(ConfigError, match=r"estimator 'tbptt' backpropagates .* objective='heldout_accuracy' is not "
                                          r"differentiable.*\"es\" or \"pes\""):
        build_estimator(MetaTrainConfig(objective="heldout_accuracy"))


@pytest.mark.parametrize("settings,message", [
    ({"estimator": "pse"}, r"unknown estimator 'pse': did you mean 'pes'"),
    ({"estimator": "es", "estimator_params": {"population": 0}}, r"population=0 must be"),
    ({"estimator": "es", "estimator_params": {"population": 7}}, r"population=7 must be an even number"),
    ({"estimator": "pes", "estimator_params": {"sigma": -0.1}}, r"sigma=-0.1 must be greater than 0"),
    ({"estimator": "pes", "estimator_params": {"truncation": 200}}, r"truncation=200 is longer than the horizon=100"),
    ({"estimator": "pes", "estimator_params": {"sigmas": 0.1}}, r"unknown parameter 'sigmas'.*did you mean 'sigma'"),
    ({"objective": "accuracy"}, r"objective='accuracy'.*expected loss .* or heldout_<metric>"),
])
def test_bad_estimator_settings_are_one_line(settings, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_estimator(MetaTrainConfig.from_params(**settings))
    assert "\n" not in str(info.value)


def test_the_estimators_are_listed_with_their_settings():
    entries = get_registry().entries["estimator"]
    assert {"tbptt", "es", "pes"} <= set(entries)
    assert entries["pes"].parameters() == {"population": 8, "sigma": 0.01, "truncation": None}


def test_a_log_uniform_truncation_schedule_is_deterministic_per_seed_and_within_its_bounds():
    config = MetaTrainConfig.from_params(horizon=1000, unroll=20, truncation_schedule="log-uniform", min_horizon=10)
    draws = [[episode_horizon(config, g) for _ in range(400)] for g in
             (torch.Generator().manual_seed(5), torch.Generator().manual_seed(5))]
    assert draws[0] == draws[1]
    assert min(draws[0]) >= 10 and max(draws[0]) <= 1000
    logs = torch.tensor(draws[0], dtype=torch.float64).log()
    # log-uniform: the median of the log-lengths near the middle of [log 10, log 1000]
    assert abs(float(logs.median()) - math.log(100)) < 0.5
    assert sum(d < 100 for d in draws[0]) == pytest.approx(200, abs=50)
    # the constant schedule draws nothing, so the optimizees drawn stay those of a config without one
    g = torch.Generator().manual_seed(5)
    before = g.get_state().clone()
    assert episode_horizon(MetaTrainConfig(horizon=30), g) == 30
    assert torch.equal(g.get_state(), before)
    # the weights are the episode's own horizon's: "final" weighs the last of its steps
    final = MetaTrainConfig(horizon=30, weights="final")
    assert horizon_weights(final, 7) == [0.0] * 6 + [1.0]


@pytest.mark.parametrize("name,settings", [("tbptt", {}), ("pes", {"population": 4, "sigma": 0.01})])
def test_meta_training_under_a_log_uniform_schedule_runs_the_drawn_horizons(name, settings):
    def run():
        config = dict(horizon=HORIZON, unroll=4, epochs=2, episodes_per_epoch=6, meta_batch=2, lr=0.05,
                      validation_seeds=2, estimator=name, estimator_params=settings,
                      truncation_schedule="log-uniform", min_horizon=2)
        return meta_train(StepAndMomentum(log_lr=-4.0), Quadratic64(), config, progress=False)

    first, second = run(), run()
    assert [r["meta_loss"] for r in first.history] == [r["meta_loss"] for r in second.history]
    per_step = 2 if name == "tbptt" else 2 * settings["population"]
    # 12 episodes of 2 to 12 steps each, not all of them 12 long
    assert 12 * 2 * per_step <= first.optimizee_steps < 12 * HORIZON * per_step
    assert first.optimizee_steps % per_step == 0


@pytest.mark.parametrize("settings,message", [
    ({"truncation_schedule": "cosine"}, r"truncation_schedule='cosine': expected one of constant, log-uniform"),
    ({"min_horizon": 10}, r"min_horizon=10 is for truncation_schedule = \"log-uniform\""),
    ({"truncation_schedule": "log-uniform", "min_horizon": 200}, r"min_horizon=200 is longer than horizon=100"),
    ({"truncation_schedule": "log-uniform", "min_horizon": 0}, r"min_horizon=0"),
])
def test_bad_truncation_schedules_are_one_line(settings, message):
    with pytest.raises(ConfigError, match=message) as info:
        MetaTrainConfig.from_params(**settings)
    assert "\n" not in str(info.value) and str(info.value).startswith("meta-train config: ")
