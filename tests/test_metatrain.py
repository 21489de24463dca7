"""Meta-training (paper Eq. 3, truncated BPTT): learning happens, the meta-gradient is
the one a straightforward implementation computes (second derivatives dropped or kept),
non-finite steps are skipped, early stopping keeps the best, a seed fixes the result."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from l2obench import ConfigError, LearnedOptimizer, Optimizer, hookimpl
from l2obench.metatrain import (MetaTrainConfig, horizon_weights, meta_train, unroll, validation_loss,
                                VALIDATION_SEED_BASE)
from l2obench.plugins.quadratic import family as quadratic


pytestmark = pytest.mark.usefixtures("single_thread")


class TinyLearned(LearnedOptimizer):
    """A learned per-coordinate step size plus a small MLP correction on (grad, trace)."""

    def __init__(self, hidden: int = 8, init_log_lr: float = -6.0):
        super().__init__()
        self.hyperparameters = {"hidden": hidden, "init_log_lr": init_log_lr}
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.mix = nn.Parameter(torch.tensor([0.5, 0.1]))
        self.log_lr = nn.Parameter(torch.tensor(float(init_log_lr)))

    def opt_fn(self, groups=None) -> Optimizer:
        def init(params):
            return {"h": torch.zeros_like(params)}

        def update(g, state, params):
            h = torch.tanh(self.mix[0] * state["h"] + self.mix[1] * g)
            correction = self.net(torch.stack([g, h], -1)).squeeze(-1)
            return -self.log_lr.exp() * (g + 0.1 * correction), {"h": h}

        return Optimizer(init, update)


class TinyLSTM(LearnedOptimizer):
    """The naive reference's CoordinatewiseLSTM structure (2 LSTM cells, log/sign
    preprocessing, linear output x scale), small."""

    def __init__(self, hidden: int = 4, p: float = 10.0, scale: float = 0.1):
        super().__init__()
        self.hyperparameters = {"hidden": hidden, "p": p, "scale": scale}
        self.cell1, self.cell2 = nn.LSTMCell(2, hidden), nn.LSTMCell(hidden, hidden)
        self.out = nn.Linear(hidden, 1)
        self.hidden, self.p, self.scale = hidden, p, scale

    def initial_state(self, n):
        z = lambda: torch.zeros(n, self.hidden)  # noqa: E731
        return ((z(), z()), (z(), z()))

    def forward(self, g, state):
        big = g.abs() >= math.exp(-self.p)
        x1 = torch.where(big, g.abs().clamp_min(1e-30).log() / self.p, torch.full_like(g, -1.0))
        x2 = torch.where(big, g.sign(), g * math.exp(self.p))
        (h1, c1), (h2, c2) = state
        h1, c1 = self.cell1(torch.stack([x1, x2], 1), (h1, c1))
        h2, c2 = self.cell2(h1, (h2, c2))
        return self.out(h2).squeeze(1) * self.scale, ((h1, c1), (h2, c2))

    def opt_fn(self, groups=None) -> Optimizer:
        def init(params):
            n = params.numel()
            (h1, c1), (h2, c2) = self.initial_state(n)
            return {"h1": h1, "c1": c1, "h2": h2, "c2": c2}

        def update(g, s, params):
            out, ((h1, c1), (h2, c2)) = self(g.reshape(-1), ((s["h1"], s["c1"]), (s["h2"], s["c2"])))
            return out.reshape(g.shape), {"h1": h1, "c1": c1, "h2": h2, "c2": c2}

        return Optimizer(init, update, coordinatewise=True, zero_grad="any")


class TinyPlugin:
    @hookimpl
    def register_learned_optimizers(self, register):
        register("tiny", TinyLearned)
        register("tiny-lstm", TinyLSTM)


class FixedSeeds:
    """A task that ignores the seeds it is given and uses ``seeds`` instead, so a
    hand-written loop sees exactly the optimizees meta_train drew."""

    def __init__(self, task, seeds):
        self.task, self.seeds = task, list(seeds)
        self.dim, self.groups = task.dim, task.groups

    def init(self, seeds, device="cpu"):
        return self.task.init(self.seeds, device)

    def batches(self, split, seeds, device="cpu"):
        return self.task.batches(split, self.seeds, device)

    def loss(self, params, batch):
        return self.task.loss(params, batch)


def small_config(**kw) -> MetaTrainConfig:
    base = dict(horizon=20, unroll=5, epochs=2, episodes_per_epoch=5, meta_batch=4, lr=0.05,
                validation_seeds=4)
    base.update(kw)
    return MetaTrainConfig(**base)


QUAD = quadratic.task(dim=10)


def test_meta_loss_falls_on_quadratics():
    torch.manual_seed(0)
    lopt = TinyLearned()
    result = meta_train(lopt, QUAD, small_config(epochs=3, episodes_per_epoch=10, meta_batch=8), progress=False)
    losses = [row["meta_loss"] for row in result.history]
    assert len(losses) == 30 and result.skipped == 0
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.7 * first, (first, last)
    assert result.best_val < 0.7 * result.validation[0]
    assert result.best_epoch >= 1 and result.optimizee_steps == 30 * 20 * 8


def naive_meta_grads(lopt, task, seeds, steps_per_unroll, unrolls, second_order):
    """A straightforward implementation: real losses, gradient by autograd with the
    optimizee graph kept, detached (or not) before it is fed to the optimizer."""
    opt = lopt.opt_fn(task.groups)
    theta = task.init(seeds).requires_grad_()
    stream = task.batches("train", seeds)
    state = opt.init(theta)
    grads = []
    for _ in range(unrolls):
        lopt.zero_grad()
        meta = 0.0
        for _ in range(steps_per_unroll):
            loss = task.loss(theta, next(stream))
            (g,) = torch.autograd.grad(loss.sum(), theta, retain_graph=True, create_graph=second_order)
            update, state = opt.update(g if second_order else g.detach(), state, theta)
            theta = theta + update
            meta = meta + loss.mean()
        meta.backward()
        grads.append({n: p.grad.clone() for n, p in lopt.named_parameters()})
        theta = theta.detach().requires_grad_()
        state = {k: v.detach() for k, v in state.items()}
    return grads


def project_meta_grads(lopt: TinyLSTM, task, seeds, steps_per_unroll, unrolls, second_order):
    opt = lopt.opt_fn(task.groups)
    params = task.init(seeds)
    state = opt.init(params)
    stream = task.batches("train", seeds)
    grads = []
    for _ in range(unrolls):
        lopt.zero_grad()
        out = unroll(opt, task, params, state, stream, [1.0] * steps_per_unroll, second_order=second_order)
        out.meta_loss.backward()
        grads.append({n: p.grad.clone() for n, p in lopt.named_parameters()})
        params, state = out.params.detach(), {k: v.detach() for k, v in out.state.items()}
    return grads


def _rel_err(a, b):
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-12)).item() for k in b)


@pytest.mark.parametrize("make", [lambda: TinyLSTM(scale=0.3, p=3.0), lambda: TinyLearned(init_log_lr=-4.0)],
                         ids=["lstm", "mlp"])
def test_dropped_second_derivatives_match_straightforward_implementation(make):
    torch.manual_seed(1)
    lopt = make()
    seeds = [11, 12, 13]
    first = project_meta_grads(lopt, QUAD, seeds, 4, 2, second_order=False)
    naive_first = naive_meta_grads(lopt, QUAD, seeds, 4, 2, second_order=False)
    second = project_meta_grads(lopt, QUAD, seeds, 4, 2, second_order=True)
    naive_second = naive_meta_grads(lopt, QUAD, seeds, 4, 2, second_order=True)
    for ours, ref in zip(first + second, naive_first + naive_second):
        assert _rel_err(ours, ref) < 1e-5
    # The dropped terms are really dropped: the two meta-gradients differ, far beyond rounding.
    assert _rel_err(first[0], second[0]) > 5e-3


def test_meta_train_loop_matches_straightforward_loop():
    """Two unrolls of one episode with Adam steps, against a plain PyTorch loop."""
    torch.manual_seed(2)
    lopt = TinyLSTM(scale=0.3)
    ref = TinyLSTM(scale=0.3)
    ref.load_state_dict(lopt.state_dict())
    seeds = [5, 6]
    task = FixedSeeds(QUAD, seeds)
    config = MetaTrainConfig(horizon=8, unroll=4, epochs=1, episodes_per_epoch=1, meta_batch=2, lr=0.01,
                             clip=None, validation_seeds=0)
    meta_train(lopt, task, config, progress=False)

    adam = torch.optim.Adam(ref.parameters(), lr=0.01)
    theta = QUAD.init(seeds).requires_grad_()
    stream = QUAD.batches("train", seeds)
    state = ref.initial_state(theta.numel())
    for _ in range(2):
        meta = 0.0
        for _ in range(4):
            loss = QUAD.loss(theta, next(stream))
            (g,) = torch.autograd.grad(loss.sum(), theta, retain_graph=True)
            update, state = ref(g.detach().reshape(-1), state)
            theta = theta + update.reshape(theta.shape)
            meta = meta + loss.mean()
        adam.zero_grad()
        meta.backward()
        adam.step()
        theta = theta.detach().requires_grad_()
        state = tuple((h.detach(), c.detach()) for h, c in state)
    for (name, p), q in zip(lopt.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), name


class Exploding(TinyLearned):
    """Steps so large that the optimizee's loss overflows: a non-finite meta-loss."""

    def __init__(self):
        super().__init__(init_log_lr=8.0)


class NanGradient(TinyLearned):
    """Finite updates and losses, but a non-finite meta-gradient (0 * d sqrt(z)/dz at z=0)."""

    def __init__(self):
        super().__init__(init_log_lr=-4.0)
        self.z = nn.Parameter(torch.zeros(()))

    def opt_fn(self, groups=None):
        base = super().opt_fn(groups)

        def update(g, state, params):
            out, state = base.update(g, state, params)
            return out + 0.0 * torch.sqrt(self.z), state

        return Optimizer(base.init, update)


@pytest.mark.parametrize("make", [Exploding, NanGradient])
def test_non_finite_steps_are_skipped_and_counted(make):
    torch.manual_seed(0)
    lopt = make()
    before = {k: v.clone() for k, v in lopt.state_dict().items()}
    result = meta_train(lopt, QUAD, small_config(horizon=400, unroll=100, epochs=1, episodes_per_epoch=3,
                                                 validation_seeds=0), progress=False)
    assert result.skipped == 3
    assert all(row["skipped"] == 1 and math.isnan(row["meta_loss"]) for row in result.history)
    for k, v in lopt.state_dict().items():
        assert torch.equal(v, before[k]), k  # never learned from


def test_early_stopping_keeps_the_best_meta_parameters():
    torch.manual_seed(0)
    lopt = TinyLearned(init_log_lr=-6.0)
    config = small_config(epochs=3, episodes_per_epoch=4)

    def sabotage(row):
        if row["episode"] == 8:  # first episode of epoch 3: the optimizer is ruined, then cannot learn
            with torch.no_grad():
                lopt.log_lr.fill_(8.0)

    result = meta_train(lopt, QUAD, config, progress=False, callback=sabotage)
    assert result.validation[3] == math.inf
    assert result.best_epoch in (1, 2)
    assert result.best_val == min(result.validation.values())
    assert lopt.log_lr.item() < 0
    val_tasks = [(QUAD, list(range(VALIDATION_SEED_BASE, VALIDATION_SEED_BASE + config.validation_seeds)))]
    assert validation_loss(lopt, val_tasks, config.horizon) == pytest.approx(result.best_val, rel=1e-6)


def test_same_seed_same_optimizer():
    def train(seed):
        torch.manual_seed(seed)
        lopt = TinyLearned()
        res = meta_train(lopt, QUAD, small_config(seed=seed, epochs=1), progress=False)
        return lopt.state_dict(), [r["meta_loss"] for r in res.history]

    (a, la), (b, lb), (_c, lc) = train(3), train(3), train(4)
    assert la == lb and all(torch.equal(a[k], b[k]) for k in a)
    assert la != lc


def test_weights():
    cfg = lambda w: MetaTrainConfig(horizon=6, unroll=4, weights=w)  # noqa: E731
    assert horizon_weights(cfg("ones")) == [1.0] * 6
    assert horizon_weights(cfg("final")) == [0, 0, 0, 0, 0, 1.0]
    assert horizon_weights(cfg("unroll-final")) == [0, 0, 0, 1.0, 0, 1.0]
    assert horizon_weights(cfg("linear")) == pytest.approx([(t + 1) / 6 for t in range(6)])
    assert horizon_weights(cfg(lambda t, T: t % 2)) == [0, 1, 0, 1, 0, 1]
    with pytest.raises(ConfigError, match="weights"):
        MetaTrainConfig.from_params(weights="last")


def test_final_weights_learn_only_from_the_last_step(monkeypatch):
    """With w = final, the logged meta-loss is the mean loss at the last step, and the
    first unrolls (no weighted step) make no Adam step."""
    torch.manual_seed(0)
    lopt = TinyLearned(init_log_lr=-4.0)
    steps = []
    orig = torch.optim.Adam.step

    def counting_step(self, *a, **k):
        steps.append(1)
        return orig(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", counting_step)
    result = meta_train(lopt, FixedSeeds(QUAD, [1, 2]), small_config(
        horizon=12, unroll=4, epochs=1, episodes_per_epoch=1, meta_batch=2, weights="final", lr=1e-12,
        validation_seeds=0), progress=False)
    assert len(steps) == 1
    from l2obench.evaluate import run

    with torch.no_grad():
        traj = run(lopt.opt_fn(), FixedSeeds(QUAD, [1, 2]), [0, 0], 12, split="train")
    assert result.history[0]["meta_loss"] == pytest.approx(float(traj.losses[:, -1].mean()), rel=1e-5)


def test_config_errors_are_one_line():
    for bad in (dict(horizon=0), dict(unroll=-1), dict(bogus=1), dict(clip=0), dict(lr="fast")):
        with pytest.raises(ConfigError) as info:
            meta_train(TinyLearned(), QUAD, bad, progress=False)
        assert "\n" not in str(info.value) and "meta-train config" in str(info.value)
    with pytest.raises(ConfigError, match="Task or a function"):
        meta_train(TinyLearned(), 42, small_config(), progress=False)


class Recording(TinyLearned):
    def __init__(self):
        super().__init__()
        self.seen = []

    def task_transform(self, task, generator):
        self.seen.append(task.dim)
        return task


def test_task_generator_and_task_transform():
    """A family generator gives a fresh task per episode; task_transform sees each one."""
    dims = []

    def draw(generator):
        dim = int(torch.randint(3, 9, (1,), generator=generator))
        dims.append(dim)
        return quadratic.task(dim=dim)

    torch.manual_seed(0)
    lopt = Recording()
    result = meta_train(lopt, draw, small_config(epochs=1, episodes_per_epoch=6, validation_seeds=2),
                        progress=False)
    assert len(lopt.seen) == 6 and lopt.seen == dims[2:]  # the first two draws are the validation tasks
    assert len(set(lopt.seen)) > 1
    assert set(result.validation) == {0, 1} and all(math.isfinite(v) for v in result.validation.values())


def test_time_limit_stops_and_validates():
    torch.manual_seed(0)
    lopt = TinyLearned()
    result = meta_train(lopt, QUAD, small_config(epochs=50, time_limit_s=0.3), progress=False)
    assert result.stopped == "time limit"
    assert len(result.history) < 250
    assert result.history[-1]["val_loss"] is not None


def test_callback_stops_training_and_the_stopping_point_is_validated():
    torch.manual_seed(0)
    result = meta_train(TinyLearned(), QUAD, small_config(epochs=4, validate_every=3),
                        progress=False, callback=lambda row: row["episode"] == 2)
    assert result.stopped == "callback" and len(result.history) == 3
    assert set(result.validation) == {0, 1} and result.history[-1]["val_loss"] == result.validation[1]


def _straightforward_adam_loop(net: TinyLSTM, task, seeds, unrolls, steps, lr):
    """The naive reference's training loop (shared/bench/naive_reference.py), on ``task``."""
    adam = torch.optim.Adam(net.parameters(), lr)
    theta = task.init(seeds).requires_grad_()
    stream = task.batches("train", seeds)
    state = net.initial_state(theta.numel())
    for _ in range(unrolls):
        meta = 0.0
        for _ in range(steps):
            loss = task.loss(theta, next(stream))
            (g,) = torch.autograd.grad(loss.sum(), theta, retain_graph=True)
            update, state = net(g.detach().reshape(-1), state)
            theta = theta + update.reshape(theta.shape)
            meta = meta + loss.mean()
        adam.zero_grad()
        meta.backward()
        adam.step()
        theta = theta.detach().requires_grad_()
        state = tuple((h.detach(), c.detach()) for h, c in state)


@pytest.mark.parametrize("family, config", [("quadratic", {"dim": 10}), ("mnist-mlp", {})])
def test_lstm_plugin_in_meta_train_matches_the_naive_reference(family, config):
    """Issue 6: the fast path (plugin LSTM, surrogate meta-loss) gives the numbers of the
    straightforward implementation: same meta-parameters after two Adam steps."""
    from l2obench import DataError, get_registry

    reg = get_registry()
    try:
        task = FixedSeeds(reg.task(family, **config), [7])
        task.init([0])
    except DataError as exc:
        pytest.skip(f"MNIST not available: {exc}")
    torch.manual_seed(0)
    lopt = reg.learned("lstm", hidden=20, p=10.0, output_scale=0.1)
    naive = TinyLSTM(hidden=20, p=10.0, scale=0.1)
    params = dict(lopt.named_parameters())
    pairs = {"cell1": "lstm.cells.0", "cell2": "lstm.cells.1", "out": "head.linear"}
    with torch.no_grad():
        for name, p in naive.named_parameters():
            prefix, leaf = name.rsplit(".", 1)
            p.copy_(params[f"networks.default.{pairs[prefix]}.{leaf}"])
    initial = {k: v.clone() for k, v in lopt.state_dict().items()}
    config = MetaTrainConfig(horizon=6, unroll=3, epochs=1, episodes_per_epoch=1, lr=1e-3, clip=None,
                             validation_seeds=0)
    meta_train(lopt, task, config, progress=False)
    _straightforward_adam_loop(naive, task, [7], unrolls=2, steps=3, lr=1e-3)
    params = dict(lopt.named_parameters())
    for name, p in naive.named_parameters():
        prefix, leaf = name.rsplit(".", 1)
        ours = params[f"networks.default.{pairs[prefix]}.{leaf}"]
        assert torch.allclose(ours, p, rtol=1e-4, atol=1e-6), name
        moved = ours - initial[f"networks.default.{pairs[prefix]}.{leaf}"]
        assert moved.abs().max() > 1e-4, name  # two Adam steps moved it far beyond the tolerance
