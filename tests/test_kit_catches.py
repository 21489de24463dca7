"""Broken variants of a correct Adam, each with the conformance check that must catch
it ("nothing lost, nothing wrong, nothing silent"), the kit's one-line failures,
check_matches_reference, from_torch_optimizer, and the evaluator refusing updates
not shaped like params."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from l2obench import Optimizer, PluginError, from_torch_optimizer, get_registry
from l2obench.evaluate import run
from l2obench.plugins.baselines import adam
from l2obench.plugins.quadratic import family as quadratic
from l2obench.testing import (check_dtypes_agree, check_inputs_unchanged, check_interleaved_runs,
                              check_matches_reference, check_optimizer, check_state_on_device, check_state_structure,
                              check_updates_finite)

pytestmark = pytest.mark.usefixtures("single_thread")

LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8


def _adam_step(g, m, v, t):
    m = m * B1 + g * (1 - B1)
    v = v * B2 + g * g * (1 - B2)
    c = t.unsqueeze(-1)
    return -LR * (m / (1 - B1**c)) / ((v / (1 - B2**c)).sqrt() + EPS), m, v


def _fresh(p):
    return {"m": torch.zeros_like(p), "v": torch.zeros_like(p), "t": torch.zeros_like(p[..., 0])}


def closure_adam() -> Optimizer:
    """Keeps its moments in a closure, reset by init: one run at a time is right."""
    box = {}

    def init(p):
        box.update(_fresh(p))
        return {}

    def update(g, s, p):
        box["t"] = box["t"] + 1
        u, box["m"], box["v"] = _adam_step(g, box["m"], box["v"], box["t"])
        return u, s

    return Optimizer(init, update)


def shape_cached_adam() -> Optimizer:
    """Caches its moments by the params' shape."""
    cache = {}

    def init(p):
        cache[tuple(p.shape)] = _fresh(p)
        return {}

    def update(g, s, p):
        c = cache[tuple(p.shape)]
        c["t"] = c["t"] + 1
        u, c["m"], c["v"] = _adam_step(g, c["m"], c["v"], c["t"])
        return u, s

    return Optimizer(init, update)


def _stateful(update_fn, init_fn=_fresh, **flags) -> Optimizer:
    return Optimizer(init_fn, update_fn, **flags)


def _plain(g, s, p):
    t = s["t"] + 1
    u, m, v = _adam_step(g, s["m"], s["v"], t)
    return u, {"m": m, "v": v, "t": t}


def earlier_grads_written() -> Optimizer:
    """Holds on to the previous step's gradients and scales them in place later."""
    held = []

    def update(g, s, p):
        if held:
            held[-1].mul_(0.5)
        held.append(g)
        return _plain(g, s, p)

    return _stateful(update)


def earlier_params_written() -> Optimizer:
    """Holds on to the previous step's params and writes into them later."""
    held = []

    def update(g, s, p):
        if held:
            held[-1].add_(1.0)
        held.append(p)
        return _plain(g, s, p)

    return _stateful(update)


def late_growing_state() -> Optimizer:
    """Starts keeping a gradient history after step 5, past the kit's short runs."""

    def init(p):
        return {**_fresh(p), "history": torch.zeros_like(p)}

    def update(g, s, p):
        u, new = _plain(g, {k: s[k] for k in ("m", "v", "t")}, p)
        late = bool((new["t"] > 5).all())
        return u, {**new, "history": torch.cat([s["history"], g], -1) if late else s["history"]}

    return _stateful(update, init)


def float16_round_trip() -> Optimizer:
    """Rounds its updates through float16 but returns them as float32 (float64 is left alone)."""

    def update(g, s, p):
        u, new = _plain(g, s, p)
        return (u.half().to(u.dtype) if u.dtype == torch.float32 else u), new

    return _stateful(update)


def tenfold_in_float64() -> Optimizer:
    """Takes ten times the step in float64 only."""

    def update(g, s, p):
        u, new = _plain(g, s, p)
        return (u * 10 if u.dtype == torch.float64 else u), new

    return _stateful(update)


def inf_above_1e250() -> Optimizer:
    """Normalises with squares taken at a scale of 1e-96: NaN for float64 gradients above about 1.3e250."""

    def update(g, s, p):
        u, new = _plain(g, s, p)
        return u + 0 * (g * 1e-96) ** 2, new

    return _stateful(update)


def state_without_device() -> Optimizer:
    """Creates its step counter without ``device=``."""
    return _stateful(_plain, lambda p: {"m": torch.zeros_like(p), "v": torch.zeros_like(p),
                                        "t": torch.zeros(p.shape[:-1], dtype=p.dtype)})


def state_without_dtype() -> Optimizer:
    """Creates its step counter without ``dtype=`` (always float32)."""
    return _stateful(_plain, lambda p: {"m": torch.zeros_like(p), "v": torch.zeros_like(p),
                                        "t": torch.zeros(p.shape[:-1], device=p.device)})


def update_without_device() -> Optimizer:
    """Makes the update's epsilon tensor without ``device=``, so updates land on the CPU."""

    def update(g, s, p):
        u, new = _plain(g, s, p)
        return u.cpu() if u.device.type != "cpu" else u, new

    return _stateful(update)


#: broken optimizer -> (the check that must catch it, a phrase of its message)
BROKEN = {
    closure_adam: (check_interleaved_runs, "two runs interleaved"),
    shape_cached_adam: (check_interleaved_runs, "run alone they are"),
    earlier_grads_written: (check_inputs_unchanged, "step 1's input grads (an earlier step's input"),
    earlier_params_written: (check_inputs_unchanged, "input params (an earlier step's input, held on to)"),
    late_growing_state: (check_state_structure, "after step 6 the state's structure changed"),
    float16_round_trip: (check_dtypes_agree, "rounded through float16"),
    tenfold_in_float64: (check_dtypes_agree, "computes something else"),
    inf_above_1e250: (check_updates_finite, "is not finite"),
    state_without_device: (check_state_on_device, "on cpu"),
    state_without_dtype: (check_state_on_device, "torch.float32"),
    update_without_device: (check_state_on_device, "updates"),
}


def _variant_id(factory):
    return factory.__name__


@pytest.mark.parametrize("factory", list(BROKEN), ids=_variant_id)
def test_each_broken_optimizer_is_caught_by_its_check(factory):
    check, phrase = BROKEN[factory]
    if factory is update_without_device and not torch.cuda.is_available():
        pytest.skip("updates on the wrong device need a second real device (CUDA)")
    with pytest.raises(AssertionError) as info:
        check(factory())
    message = str(info.value)
    assert message.startswith(check.__name__) and phrase in message, message
    assert "\n" not in message


def test_the_reference_adam_passes_what_its_variants_fail():
    check_optimizer(_stateful(_plain))
    check_matches_reference(_stateful(_plain), torch.optim.Adam, {"lr": LR})


# -- one-line failures, one cause once ------------------------------------------------


def test_an_error_inside_a_check_is_one_line_naming_the_call_and_the_example():
    def update(g, s, p):
        if bool((g.abs() > 1e30).any()):
            raise IndexError("index 7 is out of bounds")
        return -0.01 * g, s

    with pytest.raises(AssertionError) as info:
        check_updates_finite(Optimizer(lambda p: {}, update))
    message = str(info.value)
    assert message.startswith("check_updates_finite: update() raised IndexError: index 7 is out of bounds"), message
    assert "shrunk example" in message and "\n" not in message


def test_an_init_that_raises_is_reported_once():
    broken = Optimizer(lambda p: {}["missing"], lambda g, s, p: (-g, s))
    with pytest.raises(AssertionError) as info:
        check_optimizer(broken)
    message = str(info.value)
    assert "init() raised KeyError" in message and message.count("raised") == 1, message
    assert "\n" not in message and "none was run" in message


# -- check_matches_reference -----------------------------------------------------------


def test_check_matches_reference_catches_a_wrong_hyperparameter():
    check_matches_reference(adam(lr=0.01), torch.optim.Adam, {"lr": 0.01})
    with pytest.raises(AssertionError, match=r"^check_matches_reference: step 1: .* Adam\(lr=0.02\) makes"):
        check_matches_reference(adam(lr=0.01), torch.optim.Adam, {"lr": 0.02})


# -- from_torch_optimizer ----------------------------------------------------------------


@pytest.mark.parametrize("coordinatewise", [True, False], ids=["batched", "per-seed"])
@pytest.mark.parametrize("cls,kwargs", [(torch.optim.Adam, {"lr": 0.01}),
                                        (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9})], ids=["adam", "sgd"])
def test_a_wrapped_torch_optimizer_matches_it(cls, kwargs, coordinatewise):
    opt = from_torch_optimizer(cls, coordinatewise=coordinatewise, **kwargs)
    check_matches_reference(opt, cls, kwargs)


def test_a_wrapped_torch_optimizer_passes_the_kit():
    check_optimizer(from_torch_optimizer(torch.optim.Adam, coordinatewise=True, zero_grad="no-op", lr=0.01))


def test_a_wrapped_optimizer_that_is_not_coordinatewise_steps_each_seed_alone():
    class NormalisedSGD(torch.optim.Optimizer):
        """``p -= lr * g / ||g||`` over the whole tensor: not coordinatewise."""

        def __init__(self, params, lr=0.1):
            super().__init__(params, {"lr": lr})

        def step(self):
            for group in self.param_groups:
                for p in group["params"]:
                    p.sub_(group["lr"] * p.grad / (p.grad.norm() + 1.0))

    wrapped = from_torch_optimizer(NormalisedSGD, lr=0.1)
    check_optimizer(wrapped)
    params, grads = torch.zeros(2, 3), torch.tensor([[1.0, 2.0, 2.0], [0.0, 0.0, 0.0]])
    updates, _ = wrapped.update(grads, wrapped.init(params), params)
    assert torch.allclose(updates[0], -0.1 * grads[0] / 4.0) and (updates[1] == 0).all()


# -- the evaluator refuses updates not shaped like params ------------------------------------


def test_the_evaluator_refuses_an_update_that_would_broadcast():
    bad = Optimizer(lambda p: {}, lambda g, s, p: (-0.01 * g[0], s))
    with pytest.raises(PluginError, match=r"returned updates of shape \(3,\).*params of shape \(2, 3\)") as info:
        run(bad, quadratic.task(dim=3), [0, 1], 3)
    assert "\n" not in str(info.value)
    traj = run(get_registry().optimizer("adam"), quadratic.task(dim=3), [0, 1], 3)
    assert torch.isfinite(traj.losses).all()


def test_meta_training_refuses_an_update_that_would_broadcast():
    from l2obench.metatrain import unroll

    bad = Optimizer(lambda p: {}, lambda g, s, p: (-0.01 * g[0], s))
    task = quadratic.task(dim=3)
    params = task.init([0, 1])
    with pytest.raises(PluginError, match="returned updates of shape"):
        unroll(bad, task, params, {}, task.batches("train", [0, 1]), [1.0, 1.0])


# -- pytest --l2obench-conformance -----------------------------------------------------------


def _pytest(tmp_path, *args, env=None):
    import os

    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--co", *args,
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_the_conformance_option_folds_spellings_and_lists_what_is_installed(tmp_path):
    out = _pytest(tmp_path, "--l2obench-conformance=L2OBench", "-k", "sgd-check_zero_grad").stdout
    assert "l2obench[L2OBench]::sgd-check_zero_grad" in out, out
    out = _pytest(tmp_path, "--l2obench-conformance=Baselines", "-k", "adam-check_zero_grad").stdout
    assert "adam-check_zero_grad" in out, out
    result = _pytest(tmp_path, "--l2obench-conformance=nope")
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "nope" in line]
    assert len(lines) == 1 and re.search(r"installed: l2obench \(plugin [a-z_, ]*\bbaselines\b", lines[0]), \
        result.stdout + result.stderr


def test_a_broken_plugin_under_the_conformance_option_is_one_line(tmp_path):
    result = _pytest(tmp_path, "--l2obench-conformance=all", env={"L2OBENCH_PLUGINS": "not-installed-anywhere"})
    text = result.stdout + result.stderr
    assert "INTERNALERROR" not in text, text
    (line,) = [x for x in text.splitlines() if "not-installed-anywhere" in x]
    assert line.startswith("ERROR: --l2obench-conformance: loading the l2obench plugins failed"), text

