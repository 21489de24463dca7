"""The learned LSTM optimizers: shapes, meta-gradients, coordinatewise structure,
global averaging, Appendix A preprocessing, RNNprop's random scaling, per-group
networks, and the fast LSTM against a straightforward torch.nn.LSTMCell one
(issue 6: same updates, same meta-gradients, same meta-training steps)."""
from __future__ import annotations

import ast
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from l2obench import Capabilities, ConfigError, get_registry
from l2obench.metatrain import MetaTrainConfig, meta_train
from l2obench.plugins.lstm.scaling import RandomlyScaled
from l2obench.plugins.lstm import cell as lstm_cell_module
from l2obench.plugins.lstm import network, preprocess
from optimizer_runs import run

VARIANTS = ["lstm", "lstm-gac", "rnnprop", "lstm-groups"]


def make(name, **hp):
    torch.manual_seed(0)
    return get_registry().learned(name, **hp)


def grads_of(shape, dtype=np.float32, low=-3.0, high=3.0):
    """Gradients spread over many orders of magnitude: sign * 10**U(low, high)."""
    exponents = arrays(np.float64, shape, elements=st.floats(low, high))
    signs = arrays(np.bool_, shape)
    return st.tuples(exponents, signs).map(
        lambda es: torch.from_numpy(np.where(es[1], -1.0, 1.0) * 10.0 ** es[0])
        .to(getattr(torch, np.dtype(dtype).name)))


# -- every variant ------------------------------------------------------------------


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("groups", [None, {"conv": slice(0, 3), "fc": slice(3, 7)}, {"fc": slice(2, 5)}])
def test_update_shapes_state_and_flags(name, groups):
    lopt = make(name)
    opt = lopt.opt_fn(groups)
    params = torch.randn(3, 7)
    updates, state = run(opt, params, [torch.randn(3, 7) for _ in range(3)])
    assert all(u.shape == (3, 7) and u.dtype == torch.float32 and torch.isfinite(u).all() for u in updates)
    assert state.keys() == opt.init(params).keys()
    assert opt.zero_grad == "any"
    split = name == "lstm-groups" and groups is not None
    assert opt.coordinatewise == (name in ("lstm", "rnnprop") or (name == "lstm-groups" and not split))
    assert lopt.hyperparameters.keys() == get_registry().get("learned", name).parameters().keys()


@pytest.mark.parametrize("name", VARIANTS)
def test_meta_gradients_reach_every_parameter(name):
    lopt = make(name)
    groups = {"conv": slice(0, 2), "fc": slice(2, 4)} if name == "lstm-groups" else None
    opt = lopt.opt_fn(groups)
    params = torch.zeros(2, 6)
    target = torch.randn(2, 6)
    state = opt.init(params)
    for _ in range(4):
        grads = (params - target).detach()  # the optimizee's gradient is a constant input (Sec. 2.1)
        updates, state = opt.update(grads, state, params)
        params = params + updates
    loss = ((params - target) ** 2).sum()
    meta = dict(lopt.named_parameters())
    grads = torch.autograd.grad(loss, list(meta.values()), allow_unused=True)
    dead = [n for n, g in zip(meta, grads) if g is None or not bool(g.abs().sum() > 0)]
    assert not dead, f"no meta-gradient reaches {dead}"


#: what each variant can do, as data: replay where no network has averaging cells
CAPABILITIES = {
    "lstm": Capabilities(replay=True, groups=(), second_derivatives=False),
    "lstm-gac": Capabilities(replay=False, groups=(), second_derivatives=False),
    "rnnprop": Capabilities(replay=True, groups=(), second_derivatives=False),
    "lstm-groups": Capabilities(replay=True, groups=("conv", "fc"), second_derivatives=False),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_each_variant_states_its_capabilities_and_knows_its_name(name):
    lopt = make(name)
    assert lopt.capabilities == CAPABILITIES[name]
    assert lopt.name == name
    assert lopt.hyperparameters == get_registry().get("learned", name).parameters()


def imported_modules(source: str) -> set[str]:
    """Every absolute import of ``source``, ``from a import b`` as ``a.b`` (b may be a module)."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_the_plugin_imports_only_the_public_api():
    """Besides torch and the standard library: l2obench.api, the kernel module and itself."""
    for path in sorted(Path(network.__file__).parent.glob("*.py")):
        for name in imported_modules(path.read_text()):
            top = name.split(".")[0]
            public = name.startswith("l2obench.api.") or name == "l2obench.plugins.lstm_kernel"
            assert public or top == "torch" or (top in sys.stdlib_module_names and top != "l2obench"), \
                f"{path.name} imports {name}"


# -- structure: coordinatewise, global averaging, groups ---------------------------------


@pytest.mark.parametrize("name", ["lstm", "rnnprop"])
@settings(max_examples=10)
@given(data=st.data())
def test_coordinatewise_variants_commute_with_permutations(name, data):
    grads = data.draw(st.lists(grads_of((2, 6)), min_size=1, max_size=3))
    perm = torch.tensor(data.draw(st.permutations(range(6))))
    opt = make(name).opt_fn()
    with torch.no_grad():
        plain, _ = run(opt, torch.zeros(2, 6), grads)
        permuted, _ = run(opt, torch.zeros(2, 6), [g[:, perm] for g in grads])
    for a, b in zip(plain, permuted):
        torch.testing.assert_close(a[:, perm], b, rtol=1e-5, atol=1e-7)


@settings(max_examples=10)
@given(grads=grads_of((2, 5)), bump=st.floats(0.5, 100.0))
def test_global_averaging_cells_mix_coordinates_and_plain_lstm_does_not(grads, bump):
    changed = grads.clone()
    changed[:, 0] *= 1 + bump
    with torch.no_grad():
        for name, mixes in (("lstm-gac", True), ("lstm", False)):
            opt = make(name).opt_fn()
            (a,), _ = run(opt, torch.zeros(2, 5), [grads])
            (b,), _ = run(opt, torch.zeros(2, 5), [changed])
            others_moved = not torch.equal(a[:, 1:], b[:, 1:])
            assert others_moved == mixes, name
            # ... and never across optimizees (rows are separate seeds)
            only_row0 = changed.clone()
            only_row0[1] = grads[1]
            (c,), _ = run(opt, torch.zeros(2, 5), [only_row0])
            torch.testing.assert_close(c[1], a[1], rtol=1e-6, atol=1e-8)


def test_gac_averages_over_the_coordinates_of_each_seed():
    core = network.StackedLSTM(input_size=2, hidden=6, layers=2, averaged=2)
    x = torch.randn(2, 3, 5)
    top, state = core(x, core.init(torch.zeros(3, 5)))
    for k in range(2):
        h = state[f"h{k}"]
        assert torch.allclose(h[:2], h[:2, :, :1].expand(2, 3, 5))  # averaged units: one value per seed
        assert not torch.allclose(h[2:], h[2:, :, :1].expand(4, 3, 5))  # the others stay per coordinate
        assert not torch.allclose(h[:2, 0], h[:2, 1])


def test_lstm_groups_one_network_per_group_default_for_the_rest():
    lopt = make("lstm-groups", groups="conv,fc")
    assert lopt.group_names == ("conv", "fc")
    groups = {"fc": slice(4, 7), "conv": slice(0, 2), "embedding": slice(2, 4)}
    assert lopt.segments(groups, 9) == [("conv", slice(0, 2)), ("default", slice(2, 4)), ("fc", slice(4, 7)),
                                        ("default", slice(7, 9))]
    opt = lopt.opt_fn(groups)
    params = torch.zeros(2, 9)
    (u,), _ = run(opt, params, [torch.randn(2, 9)])
    nets = lopt.networks
    for name, sl in lopt.segments(groups, 9):
        grads = torch.autograd.grad(u[:, sl].sum(), list(lopt.parameters()), allow_unused=True, retain_graph=True)
        reached = {n.split(".")[1] for (n, _), g in zip(lopt.named_parameters(), grads)
                   if g is not None and g.abs().sum() > 0}
        assert reached == {name}, (name, reached)
    assert set(nets) == {"conv", "fc", "default"}
    # Without groups (or with unknown ones) every coordinate goes to the default network.
    assert lopt.segments(None, 5) == [("default", slice(0, 5))]
    with pytest.raises(ConfigError, match="overlaps"):
        lopt.segments({"conv": slice(0, 4), "fc": slice(3, 6)}, 6)


# -- preprocessing (Appendix A) and RNNprop -------------------------------------------


def test_log_sign_preprocessing_matches_appendix_a_on_edge_values():
    p = 10.0
    values = [0.0, -0.0, 1e-30, -1e-30, math.exp(-p) * 0.5, -math.exp(-p) * 0.999, 1e-3, -1e-3, 1.0, -7.5,
              1e30, -1e30, 3e38]
    g = torch.tensor([values], dtype=torch.float64)
    features, _ = preprocess.log_sign(p).apply(g, {})
    assert features.shape == (2, 1, len(values))

    def appendix_a(x):
        if abs(x) >= math.exp(-p):
            return math.log(abs(x)) / p, math.copysign(1.0, x)
        return -1.0, math.exp(p) * x

    want = torch.tensor([appendix_a(v) for v in values], dtype=torch.float64).T
    torch.testing.assert_close(features[:, 0], want, rtol=1e-12, atol=0)
    # at exactly e^-p the log branch is taken: (-1, sign)
    at, _ = preprocess.log_sign(p).apply(torch.tensor([[math.exp(-p)]], dtype=torch.float64), {})
    torch.testing.assert_close(at[:, 0, 0], torch.tensor([-1.0, 1.0], dtype=torch.float64))


def test_adam_normalised_inputs_follow_rnnprop():
    pre = preprocess.adam_normalised(beta1=0.9, beta2=0.8, eps=1e-8)
    grads = [torch.tensor([[1.0, -2.0, 0.0]]), torch.tensor([[3.0, -2.0, 0.0]])]
    state = pre.init(grads[0])
    m = v = 0.0
    for t, g in enumerate(grads, 1):
        features, state = pre.apply(g, state)
        m = 0.9 * m + 0.1 * g
        v = 0.8 * v + 0.2 * g * g
        root = (v / (1 - 0.8**t)).sqrt() + 1e-8
        torch.testing.assert_close(features[0], g / root)
        torch.testing.assert_close(features[1], m / (1 - 0.9**t) / root)
    # scale invariance: c * g gives the same features (up to eps)
    scaled, _ = pre.apply(grads[0] * 1000, pre.init(grads[0]))
    torch.testing.assert_close(scaled, pre.apply(grads[0], pre.init(grads[0]))[0])


def test_rnnprop_output_is_bounded_by_its_scale():
    opt = make("rnnprop", output_scale=0.05).opt_fn()
    with torch.no_grad():
        updates, _ = run(opt, torch.zeros(2, 4), [torch.randn(2, 4) * 1e6 for _ in range(3)])
    assert all(u.abs().max() <= 0.05 for u in updates)


def test_rnnprop_random_scaling_of_training_functions():
    task = get_registry().task("quadratic", dim=6)
    lopt = make("rnnprop", random_scale=2.0)
    scaled = lopt.task_transform(task, torch.Generator().manual_seed(3))
    c = scaled.scale
    assert c.shape == (6,) and bool((c >= math.exp(-2.0)).all() and (c <= math.exp(2.0)).all())
    assert scaled.dim == task.dim and scaled.groups == task.groups
    batch = next(task.batches("train", [0, 1]))
    theta0 = scaled.init([0, 1])
    torch.testing.assert_close(theta0 * c, task.init([0, 1]))
    torch.testing.assert_close(scaled.loss(theta0, batch), task.loss(task.init([0, 1]), batch))
    other = lopt.task_transform(task, torch.Generator().manual_seed(4))
    assert not torch.equal(other.scale, c)  # a fresh scaling per episode
    assert make("rnnprop", random_scale=0.0).task_transform(task, torch.Generator()) is task
    assert make("lstm").task_transform(task, torch.Generator()) is task
    assert scaled.metrics == () and not hasattr(scaled, "evaluate")  # a quadratic has no held-out data
    # the quadratic's written-out gradient, through the scaling by the chain rule: autograd's
    params = theta0 + 0.3
    with torch.enable_grad():
        p = params.clone().requires_grad_(True)
        (want,) = torch.autograd.grad(scaled.loss(p, batch).sum(), p)
    loss, grad = scaled.loss_and_grad(params, batch)
    torch.testing.assert_close(loss, scaled.loss(params, batch), rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-6)
    assert not hasattr(RandomlyScaled(no_gradient_task(task), c), "loss_and_grad")


def no_gradient_task(task):
    """``task`` without its written-out gradient."""
    class Plain:
        dim, groups = task.dim, task.groups
        init, batches, loss = task.init, task.batches, task.loss
    return Plain()


def test_rnnprop_random_scaling_keeps_a_tasks_held_out_metrics():
    """The scaled function's held-out metrics are the task's at ``c * theta``, as its loss is, so a
    held-out objective can meta-train rnnprop with random scaling."""
    from l2obench.task import task_metrics

    task = get_registry().task("image-mlp", dataset="mnist", hidden=4, batch_size=8, eval_examples=16)
    scaled = make("rnnprop", random_scale=1.0).task_transform(task, torch.Generator().manual_seed(0))
    assert task_metrics(scaled) == task_metrics(task) == ("loss", "accuracy")
    theta = scaled.init([0, 1])
    for name, value in scaled.evaluate(theta, "validation").items():
        torch.testing.assert_close(value, task.evaluate(theta * scaled.scale, "validation")[name])


@pytest.mark.parametrize("name, params, match", [
    ("lstm-groups", dict(groups=""), "groups"),
    ("lstm-groups", dict(groups="conv,conv"), "groups"),
    ("lstm", dict(p=0.0), "p=0.0"),
    ("lstm-gac", dict(averaged=21), "averaged"),
    ("rnnprop", dict(beta1=1.0), "beta1"),
    ("rnnprop", dict(output_scale=0.0), "output_scale=0 makes every update zero"),
    ("lstm", dict(hidden=0), "hidden"),
])
def test_bad_hyperparameters_are_one_line_config_errors(name, params, match):
    with pytest.raises(ConfigError, match=match) as err:
        get_registry().learned(name, **params)
    assert "\n" not in str(err.value)


# -- the fast LSTM against a straightforward one (issue 6) -------------------------------


class NaiveLSTMOptimizer(torch.nn.Module):
    """The paper's optimizer written the straightforward way (as the issue's
    naive_reference.py): torch.nn.LSTMCell on rows = coordinates, Appendix A
    preprocessing, a linear output times 0.1."""

    def __init__(self, hidden=20, p=10.0, scale=0.1):
        super().__init__()
        self.cell1 = torch.nn.LSTMCell(2, hidden)
        self.cell2 = torch.nn.LSTMCell(hidden, hidden)
        self.out = torch.nn.Linear(hidden, 1)
        self.hidden, self.p, self.scale = hidden, p, scale

    def initial_state(self, n, dtype=torch.float32):
        z = lambda: torch.zeros(n, self.hidden, dtype=dtype)  # noqa: E731
        return ((z(), z()), (z(), z()))

    def preprocess(self, g):
        big = g.abs() >= math.exp(-self.p)
        x1 = torch.where(big, g.abs().clamp_min(1e-30).log() / self.p, torch.full_like(g, -1.0))
        x2 = torch.where(big, g.sign(), g * math.exp(self.p))
        return torch.stack([x1, x2], 1)

    def forward(self, g, state):
        s1, s2 = state
        h1, c1 = self.cell1(self.preprocess(g), s1)
        h2, c2 = self.cell2(h1, s2)
        return self.out(h2).squeeze(1) * self.scale, ((h1, c1), (h2, c2))


def naive_twin(lopt):
    """A NaiveLSTMOptimizer holding a copy of ``lopt``'s meta-parameters."""
    naive = NaiveLSTMOptimizer().to(next(lopt.parameters()).dtype)
    ours = dict(lopt.named_parameters())
    with torch.no_grad():
        for (name, p), key in zip(naive.named_parameters(), ours):
            assert p.shape == ours[key].shape, (name, key)
            p.copy_(ours[key])
    return naive


def test_same_initial_meta_parameters_as_the_naive_implementation():
    torch.manual_seed(5)
    naive = NaiveLSTMOptimizer()
    torch.manual_seed(5)
    ours = get_registry().learned("lstm")
    for a, b in zip(naive.parameters(), ours.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("needs", ["x", "h", "xh", "none"])
def test_fused_cell_matches_lstmcell_forward_and_gradients(needs):
    torch.manual_seed(1)
    cell = torch.nn.LSTMCell(3, 5).double()
    M = 11
    x = torch.randn(3, M, dtype=torch.float64, requires_grad="x" in needs)
    h = torch.randn(5, M, dtype=torch.float64, requires_grad="h" in needs)
    c = torch.randn(5, M, dtype=torch.float64, requires_grad=True)
    h1, c1 = lstm_cell_module.lstm_cell(x, h, c, cell)
    h2, c2 = cell(x.t(), (h.t(), c.t()))
    torch.testing.assert_close(h1, h2.t(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(c1, c2.t(), rtol=1e-12, atol=1e-14)
    wh, wc = torch.randn(5, M, dtype=torch.float64), torch.randn(5, M, dtype=torch.float64)
    inputs = [t for t in (x, h, c) if t.requires_grad] + list(cell.parameters())
    ours = torch.autograd.grad((h1 * wh).sum() + (c1 * wc).sum(), inputs)
    theirs = torch.autograd.grad((h2.t() * wh).sum() + (c2.t() * wc).sum(), inputs)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # only h (or only c) used downstream
    g_only_h = torch.autograd.grad((lstm_cell_module.lstm_cell(x, h, c, cell)[0] * wh).sum(), list(cell.parameters()))
    g_ref = torch.autograd.grad((cell(x.t(), (h.t(), c.t()))[0].t() * wh).sum(), list(cell.parameters()))
    for a, b in zip(g_only_h, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("chunk", [4, 11, 64])
def test_no_graph_cell_in_chunks_matches_lstmcell(monkeypatch, chunk):
    """Without a graph the cell runs NO_GRAD_CHUNK columns at a time, writing into the new state."""
    monkeypatch.setattr(lstm_cell_module, "NO_GRAD_CHUNK", chunk)
    torch.manual_seed(3)
    cell = torch.nn.LSTMCell(3, 5).double()
    x, h, c = (torch.randn(n, 2, 13, dtype=torch.float64) for n in (3, 5, 5))
    with torch.no_grad():
        h1, c1 = lstm_cell_module.lstm_cell(x, h, c, cell)
        h2, c2 = cell(x.flatten(1).t(), (h.flatten(1).t(), c.flatten(1).t()))
    assert h1.shape == c1.shape == (5, 2, 13)
    torch.testing.assert_close(h1.flatten(1), h2.t(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(c1.flatten(1), c2.t(), rtol=1e-12, atol=1e-14)


def test_fused_cell_passes_gradcheck():
    torch.manual_seed(2)
    cell = torch.nn.LSTMCell(2, 3).double()
    args = [torch.randn(2, 4, dtype=torch.float64, requires_grad=True),
            torch.randn(3, 4, dtype=torch.float64, requires_grad=True),
            torch.randn(3, 4, dtype=torch.float64, requires_grad=True),
            *cell.parameters()]
    assert torch.autograd.gradcheck(lambda *a: lstm_cell_module._LSTMCell.apply(*a), args)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_unroll_gives_the_naive_updates_and_meta_gradients(dtype, tol):
    """The naive reference's inner loop (real losses, retain_graph, the LSTM fed
    detached gradients) with our optimizer and with the straightforward one."""
    torch.manual_seed(0)
    ours = get_registry().learned("lstm").to(dtype)
    naive = naive_twin(ours)
    task = get_registry().task("quadratic", dim=12, functions=2)
    batch = next(task.batches("train", [7]))
    theta0 = task.init([7]).to(dtype) * 100
    batch = tuple(b.to(dtype) for b in batch)

    def unroll(step):
        theta = theta0.clone().requires_grad_()
        meta_loss, updates = 0.0, []
        for _ in range(5):
            loss = task.loss(theta, batch).sum()
            (g,) = torch.autograd.grad(loss, theta, retain_graph=True)
            u = step(g.detach())
            updates.append(u.detach())
            theta = theta + u
            meta_loss = meta_loss + loss
        return updates, meta_loss

    opt = ours.opt_fn(task.groups)
    state = opt.init(theta0)

    def our_step(g):
        nonlocal state
        u, state = opt.update(g, state, None)
        return u

    naive_state = naive.initial_state(theta0.numel(), dtype)

    def naive_step(g):
        nonlocal naive_state
        u, naive_state = naive(g.reshape(-1), naive_state)
        return u.view_as(g)

    our_updates, our_loss = unroll(our_step)
    naive_updates, naive_loss = unroll(naive_step)
    for a, b in zip(our_updates, naive_updates):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol * 1e-2)
    for a, b in zip(torch.autograd.grad(our_loss, list(ours.parameters())),
                    torch.autograd.grad(naive_loss, list(naive.parameters()))):
        torch.testing.assert_close(a, b, rtol=tol * 10, atol=tol * b.abs().max().item())


class FixedProblem:
    """A tiny sigmoid MLP (4-3-2) on a fixed stream of minibatches, the same for
    every seed: so a naive loop and meta_train see the same optimizees."""

    dim = 4 * 3 + 3 + 3 * 2 + 2
    groups = {"fc": slice(0, dim)}

    def init(self, seeds, device="cpu"):
        theta = torch.randn(self.dim, generator=torch.Generator().manual_seed(11), dtype=torch.float64) * 0.5
        return theta.expand(len(seeds), -1).clone()

    def batches(self, split, seeds, device="cpu"):
        gen = torch.Generator().manual_seed(12)
        while True:
            x = torch.randn(len(seeds), 8, 4, generator=gen, dtype=torch.float64)
            yield x, (x.sum(-1) > 0).long()

    def loss(self, params, batch):
        x, y = batch
        w1, b1 = params[:, :12].view(-1, 4, 3), params[:, 12:15]
        w2, b2 = params[:, 15:21].view(-1, 3, 2), params[:, 21:]
        logits = torch.sigmoid(x @ w1 + b1.unsqueeze(1)) @ w2 + b2.unsqueeze(1)
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)


def test_meta_training_steps_match_the_naive_implementation():
    """A few meta-training steps through l2obench.metatrain (the surrogate meta-loss,
    second derivatives dropped) give the meta-parameters of the naive reference's
    loop with the straightforward LSTM: real losses summed over each unroll,
    backpropagated through the optimizee, Adam after every unroll."""
    torch.manual_seed(0)
    ours = get_registry().learned("lstm").double()
    naive = naive_twin(ours)
    task = FixedProblem()
    episodes, horizon, unroll, lr = 2, 6, 3, 0.01

    meta = torch.optim.Adam(naive.parameters(), lr)
    naive_losses = []
    for _ in range(episodes):
        theta = task.init([0])[0].requires_grad_()
        state = naive.initial_state(task.dim, torch.float64)
        stream = task.batches("train", [0])
        total = 0.0
        for _ in range(horizon // unroll):
            meta_loss = 0.0
            for _ in range(unroll):
                loss = task.loss(theta[None], next(stream))[0]
                (g,) = torch.autograd.grad(loss, theta, retain_graph=True)
                update, state = naive(g.detach(), state)
                theta = theta + update
                meta_loss = meta_loss + loss
            meta.zero_grad()
            meta_loss.backward()
            meta.step()
            total += float(meta_loss.detach())
            theta = theta.detach().requires_grad_()
            state = tuple((h.detach(), c.detach()) for h, c in state)
        naive_losses.append(total)

    config = MetaTrainConfig(horizon=horizon, unroll=unroll, epochs=1, episodes_per_epoch=episodes, meta_batch=1,
                             lr=lr, clip=None, validation_seeds=0)
    result = meta_train(ours, task, config, progress=False)
    assert [row["meta_loss"] for row in result.history] == pytest.approx(naive_losses, rel=1e-10)
    for (name, a), b in zip(ours.named_parameters(), naive.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10, msg=name)
    assert not torch.equal(next(ours.parameters()), next(NaiveLSTMOptimizer().double().parameters()))
