"""The feature-based learned optimizers after the paper: ``mlp-lopt`` (Metz et al. 2022) and
``hrnn`` (Wichrowska et al. 2017).  Their features against the formulas they follow, the
per-tensor structure (task groups), capabilities, one-line hyperparameter errors,
checkpoints, and meta-training that lowers the meta-loss on a small quadratic.  The
conformance kit runs on both through tests/test_conformance.py, as on every registered
learned optimizer."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from l2obench import Capabilities, ConfigError, get_registry
from l2obench.checkpoint import load_checkpoint, save_checkpoint
from l2obench.metatrain import MetaTrainConfig, meta_train
from l2obench.plugins.lopts import Segments, second_moment_normalise
from l2obench.plugins.lopts import mlp_lopt as mlp_module
from l2obench.plugins.quadratic import family as quadratic
from optimizer_runs import run

pytestmark = pytest.mark.usefixtures("single_thread")

NAMES = ["mlp-lopt", "hrnn"]


def make(name, **hp):
    torch.manual_seed(0)
    return get_registry().learned(name, **hp)


# -- the per-tensor machinery ------------------------------------------------------------


def test_segments_cover_groups_and_the_gaps_between_them():
    seg = Segments.of({"b": slice(5, 7), "a": slice(2, 4)}, 9, "who")
    assert seg.lengths == (2, 2, 1, 2, 2)
    assert Segments.of(None, 6, "who").lengths == (6,)
    assert Segments.of({"all": slice(0, 6)}, 6, "who").lengths == (6,)
    x = torch.arange(18.0).view(2, 9)
    means = seg.mean(x)
    assert means.shape == (2, 5)
    torch.testing.assert_close(means[1], torch.tensor([9.5, 11.5, 13.0, 14.5, 16.5]))
    torch.testing.assert_close(seg.expand(means)[0, 2:4], means[0, 1].expand(2))
    with pytest.raises(ConfigError, match="overlaps") as err:
        Segments.of({"a": slice(0, 4), "b": slice(3, 6)}, 6, "hrnn")
    assert "hrnn" in str(err.value) and "\n" not in str(err.value)


@settings(max_examples=30)
@given(arrays(np.float64, (3, 2, 7), elements=st.floats(-1e3, 1e3, allow_subnormal=False)),
       st.sampled_from([None, {"a": slice(0, 3)}, {"a": slice(1, 2), "b": slice(4, 7)}]))
def test_second_moment_normalise_is_the_formula_per_tensor_and_seed(x, groups):
    x = torch.from_numpy(x)
    seg = Segments.of(groups, 7, "test")
    got = second_moment_normalise(x, seg, eps=1e-5)
    at = 0
    for n in seg.lengths:
        part = x[..., at:at + n]
        want = part * torch.rsqrt(1e-5 + (part * part).mean(-1, keepdim=True))
        torch.testing.assert_close(got[..., at:at + n], want, rtol=1e-12, atol=1e-12)
        at += n


def test_second_moment_normalise_gradient_is_the_formulas():
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    seg = Segments.of({"a": slice(0, 2)}, 5, "test")
    w = torch.randn(2, 3, 5, dtype=torch.float64)
    (got,) = torch.autograd.grad((second_moment_normalise(x, seg) * w).sum(), x)

    def formula(x):
        parts = [p * torch.rsqrt(1e-5 + (p * p).mean(-1, keepdim=True)) for p in x.split([2, 3], -1)]
        return torch.cat(parts, -1)

    (want,) = torch.autograd.grad((formula(x) * w).sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_huge_features_normalise_to_finite_values():
    x = torch.tensor([[[3e38, -1e38, 1.0]]], dtype=torch.float32)
    out = second_moment_normalise(x, Segments.of(None, 3, "test"))
    assert torch.isfinite(out).all() and out[0, 0, 0] > 1


# -- every variant --------------------------------------------------------------------------


#: what each can do, as data: no fused kernel to replay on, no per-group networks, autograd all through
CAPABILITIES = {name: Capabilities(replay=False, groups=(), second_derivatives=True) for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("groups", [None, {"w": slice(0, 3), "b": slice(3, 7)}, {"fc": slice(2, 5)}])
def test_update_shapes_state_and_flags(name, groups):
    lopt = make(name)
    assert lopt.capabilities == CAPABILITIES[name] and lopt.name == name
    assert lopt.hyperparameters == get_registry().get("learned", name).parameters()
    opt = lopt.opt_fn(groups)
    params = torch.randn(3, 7)
    updates, state = run(opt, params, [torch.randn(3, 7) for _ in range(3)])
    assert all(u.shape == (3, 7) and torch.isfinite(u).all() for u in updates)
    assert state.keys() == opt.init(params).keys()
    assert not opt.coordinatewise and opt.zero_grad == "any" and opt.replay is None


def test_hrnn_updates_do_not_change_with_the_scale_of_the_loss():
    """Dynamic input scaling (Sec. 3.2.3): each momentum divided by the root of its own running
    mean square, and log mean squares relative to their mean over the timescales, so a loss
    multiplied by 1000 gives the same updates (up to the epsilons).  (mlp-lopt is not invariant:
    its second-moment features meet the normaliser's epsilon, as in the paper.)"""
    opt = make("hrnn").opt_fn()
    grads = [torch.randn(2, 6, generator=torch.Generator().manual_seed(k)) for k in range(4)]
    params = torch.zeros(2, 6)
    with torch.no_grad():
        state_a, state_b = opt.init(params), opt.init(params)
        for g in grads:
            a, state_a = opt.update(g, state_a, params)
            b, state_b = opt.update(1000 * g, state_b, params)
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("name, reaches_other_groups", [("mlp-lopt", False), ("hrnn", True)])
def test_groups_are_tensors(name, reaches_other_groups):
    """A gradient change inside one group changes that group's updates; mlp-lopt's other groups
    are untouched (its features are normalised per tensor, nothing else is shared), while hrnn's
    tensor and global levels carry it to the other groups from the next step on."""
    groups = {"a": slice(0, 3), "b": slice(3, 6)}
    opt = make(name).opt_fn(groups)
    grads = [torch.randn(2, 6, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    bumped = [g.clone() for g in grads]
    bumped[0][:, 0] *= -50  # hrnn's first inputs see the gradient's sign alone
    with torch.no_grad():
        plain, _ = run(opt, torch.zeros(2, 6), grads)
        changed, _ = run(opt, torch.zeros(2, 6), bumped)
    assert not torch.allclose(plain[0][:, :3], changed[0][:, :3])
    torch.testing.assert_close(plain[0][:, 3:], changed[0][:, 3:])  # the first step: only its own tensor
    others_moved = not torch.allclose(plain[2][:, 3:], changed[2][:, 3:], rtol=1e-6, atol=1e-9)
    assert others_moved == reaches_other_groups
    # ... and never across optimizees (rows are separate seeds)
    only_row0 = [g.clone() for g in grads]
    only_row0[0][0] = bumped[0][0]
    with torch.no_grad():
        mixed, _ = run(opt, torch.zeros(2, 6), only_row0)
    for a, b in zip(mixed, plain):
        torch.testing.assert_close(a[1], b[1])


def test_hrnn_without_a_global_level_has_no_global_state_or_meta_parameters():
    lopt = make("hrnn", global_hidden=0)
    assert lopt.global_rnn is None and not any(n.startswith("global") for n, _ in lopt.named_parameters())
    state = lopt.opt_fn().init(torch.zeros(2, 4))
    assert "global" not in state and state["tensor"].shape == (30, 2, 1)
    assert make("hrnn").opt_fn({"a": slice(0, 1)}).init(torch.zeros(2, 4))["tensor"].shape == (30, 2, 2)


def test_mlp_lopt_step_follows_direction_times_exp_magnitude():
    """update = -direction * exp(magnitude * exp_mult) * step_mult, from the MLP's two outputs."""
    lopt = make("mlp-lopt", step_mult=0.01, exp_mult=0.5)
    captured = {}
    hook = lopt.mlp.register_forward_hook(lambda module, args, out: captured.update(out=out))
    opt = lopt.opt_fn()
    with torch.no_grad():
        (u,), _ = run(opt, torch.randn(2, 5), [torch.randn(2, 5)])
    hook.remove()
    d, a = captured["out"]
    torch.testing.assert_close(u, -d * torch.exp(a * 0.5) * 0.01)


def test_mlp_lopt_features_follow_the_paper():
    """The momentum and second-moment accumulators at the initial decays, and the step features."""
    opt = make("mlp-lopt").opt_fn()
    grads = [torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[3.0, 0.0, -1.0]])]
    params = torch.zeros(1, 3)
    _, state = run(opt, params, grads)
    for k, beta in enumerate(mlp_module.MOMENTUM_DECAYS):
        torch.testing.assert_close(state["m"][k], (1 - beta) * (beta * grads[0] + grads[1]))
    beta = mlp_module.RMS_DECAYS[0]
    torch.testing.assert_close(state["v"][0], (1 - beta) * (beta * grads[0] ** 2 + grads[1] ** 2))
    assert state["count"].tolist() == [2.0]
    feats = mlp_module.step_features(torch.tensor([0.0, 30.0]))
    assert feats.shape == (len(mlp_module.TIMESCALES), 2)
    taus = torch.tensor(mlp_module.TIMESCALES, dtype=torch.float32)
    torch.testing.assert_close(feats[:, 1], torch.tanh(30.0 / taus - 1))


def test_hrnn_momentum_timescales_and_learning_rate():
    """Each timescale's decay is the square root of the one before; the learning rate starts at
    init_lr (times exp(offset)) and stays within max_lr."""
    lopt = make("hrnn", init_lr=0.01, max_lr=0.1)
    opt = lopt.opt_fn()
    params = torch.zeros(2, 5)
    state = opt.init(params)
    torch.testing.assert_close(state["log_lr"], torch.full((2, 5), math.log(0.01)))
    g = torch.randn(2, 5)
    with torch.no_grad():
        _, s1 = opt.update(g, state, params)   # decays start at zero: every momentum is g
        torch.testing.assert_close(s1["m"], g.expand(4, 2, 5))
        _, s2 = opt.update(2 * g, s1, params)
    beta = s1["input_decay"]
    for k in range(4):
        want = beta ** (0.5 ** k) * g + (1 - beta ** (0.5 ** k)) * 2 * g
        torch.testing.assert_close(s2["m"][k], want)
    with torch.no_grad():
        lopt.lr_change.bias.fill_(50.0)  # push the learning rate up: it is clipped to max_lr
        u, s = opt.update(g, opt.init(params), params)
    assert bool((s["log_lr"] <= math.log(0.1) + 1e-6).all())
    direction = u / -torch.exp(torch.tensor(math.log(0.1)) + lopt.lr_offset.detach())
    torch.testing.assert_close(direction.pow(2).mean(-1), torch.ones(2), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name, params, match", [
    ("mlp-lopt", dict(hidden=0), "hidden"),
    ("mlp-lopt", dict(step_mult=-1.0), "step_mult"),
    ("mlp-lopt", dict(layers=1.5), "layers"),
    ("hrnn", dict(global_hidden=-1), "global_hidden"),
    ("hrnn", dict(init_lr=2.0), "init_lr"),
    ("hrnn", dict(scales=0), "scales"),
    ("hrnn", dict(max_lr=float("inf")), "max_lr"),
])
def test_bad_hyperparameters_are_one_line_config_errors(name, params, match):
    with pytest.raises(ConfigError, match=match) as err:
        get_registry().learned(name, **params)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_round_trip(tmp_path, name):
    lopt = make(name, **({"hidden": 8} if name == "mlp-lopt" else {"param_hidden": 6}))
    with torch.no_grad():
        for p in lopt.parameters():
            p.add_(0.01)
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(path, lopt)
    loaded, info = load_checkpoint(path)
    assert info.hyperparameters == lopt.hyperparameters and type(loaded) is type(lopt)
    grads = [torch.randn(2, 6, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    with torch.no_grad():
        want, _ = run(lopt.opt_fn(), torch.zeros(2, 6), grads)
        got, _ = run(loaded.opt_fn(), torch.zeros(2, 6), grads)
    assert all(torch.equal(a, b) for a, b in zip(want, got))


# -- meta-training ------------------------------------------------------------------------


@pytest.mark.parametrize("name, hp, lr", [("mlp-lopt", dict(hidden=8, step_mult=0.01), 0.01),
                                          ("hrnn", dict(param_hidden=6, tensor_hidden=8, global_hidden=4), 0.01)])
def test_meta_training_lowers_the_meta_loss_on_a_small_quadratic(name, hp, lr):
    lopt = make(name, **hp)
    config = MetaTrainConfig(horizon=20, unroll=5, epochs=3, episodes_per_epoch=8, meta_batch=4, lr=lr,
                             validation_seeds=4, seed=0)
    result = meta_train(lopt, quadratic.task(dim=8), config, progress=False)
    losses = [row["meta_loss"] for row in result.history]
    assert len(losses) == 24 and result.skipped == 0
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < 0.8 * first, (first, last)
    assert result.best_val < result.validation[0]
