"""The fused LSTM kernel (plugins/lstm_kernel.cpp) against the torch implementation
of the same network: one step, the backward of a whole unroll, meta-training
through ``replay``, for each instruction set the CPU can run; the self-check that
chooses between kernel and torch ops; and what happens without a compiler or with
the kernel off.  Tests force the kernel (``L2OBENCH_NATIVE=1``) unless they say
otherwise, so they do not depend on this machine's self-check."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from torch import Tensor
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import l2obench
from l2obench import ConfigError, L2OWarning, get_registry
from l2obench.metatrain import MetaTrainConfig, meta_train, unroll
from l2obench.plugins.lstm import Preprocessor, backend, build_network
from l2obench.plugins import lstm_kernel

pytestmark = pytest.mark.skipif(lstm_kernel.library() is None, reason="the fused LSTM kernel could not be built here")


@pytest.fixture(autouse=True)
def kernel_forced(monkeypatch):
    monkeypatch.setenv("L2OBENCH_NATIVE", "1")
    monkeypatch.delenv("L2OBENCH_KERNEL_MARCH", raising=False)

#: hidden, layers, features (1: no preprocessing, 2: log/sign, more: as an input layer gives, RNNprop's 20);
#: coordinates below and above one tile of 16
shapes = st.tuples(st.integers(1, 24), st.integers(1, 3), st.sampled_from([1, 2, 5, 20]), st.integers(1, 40))


def values(shape, scale=1.0):
    return arrays(np.float32, shape, elements=st.floats(-1, 1, width=32)).map(lambda a: torch.from_numpy(a * scale))


def network(hidden, layers, features, seed=0):
    """The paper's network (log/sign for 2 features, the raw gradient for 1), or for more
    features an LSTM taking them as an input layer's outputs."""
    torch.manual_seed(seed)
    if features > 2:
        return build_network(Preprocessor(features, lambda g, state: (g, state)), hidden, layers)
    return get_registry().learned("lstm", hidden=hidden, layers=layers, preprocess=features == 2).networks["default"]


@st.composite
def cases(draw, steps=1):
    hidden, layers, features, m = draw(shapes)
    x = draw(values((steps, features, m), 3.0))
    h = draw(values((layers, hidden, m)))
    c = draw(values((layers, hidden, m), 2.0))
    return hidden, layers, features, m, x, h, c


def torch_state(h, c):
    return {**{f"h{k}": h[k] for k in range(len(h))}, **{f"c{k}": c[k] for k in range(len(c))}}


@settings(max_examples=25, deadline=None)
@given(cases())
def test_step_matches_the_torch_network(case):
    hidden, layers, features, m, x, h, c = case
    net = network(hidden, layers, features)
    with torch.no_grad():
        top, want = net.lstm(x[0], torch_state(h, c))
        update = net.head(top)
    got_update, got_h, got_c = lstm_kernel.step(backend.kernel_parameters(net), net.head.scale, x[0], list(h), list(c),
                                                hidden)
    torch.testing.assert_close(got_update, update, rtol=1e-5, atol=1e-6)
    for k in range(layers):
        torch.testing.assert_close(got_h[k], want[f"h{k}"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_c[k], want[f"c{k}"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m", [64, 4096, 4099, 3 * 15910])
def test_step_on_many_coordinates_matches_the_torch_network(m):
    """The paper's shape on whole tiles at 64-byte boundaries (streamed stores), a partial last
    tile, and 3 optimizees of the paper's MNIST net, twice."""
    net = network(20, 2, 2, seed=m)
    g = torch.Generator().manual_seed(m)
    x = torch.rand(2, m, generator=g) * 6 - 3
    h = [torch.rand(20, m, generator=g) * 2 - 1 for _ in range(2)]
    c = [torch.rand(20, m, generator=g) * 4 - 2 for _ in range(2)]
    with torch.no_grad():
        top, want = net.lstm(x, torch_state(h, c))
        update = net.head(top)
    for _ in range(2):
        got_update, got_h, got_c = lstm_kernel.step(backend.kernel_parameters(net), net.head.scale, x, h, c, 20)
        torch.testing.assert_close(got_update, update, rtol=1e-5, atol=1e-6)
        for k in range(2):
            torch.testing.assert_close(got_h[k], want[f"h{k}"], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(got_c[k], want[f"c{k}"], rtol=1e-5, atol=1e-6)
        del got_update, got_h, got_c


@pytest.mark.parametrize("m", [37, 4099, 3 * 15910])
def test_new_states_have_rows_a_cache_lines_multiple_apart_and_are_read_back_as_they_are(m):
    """The step writes each state row to start a cache line (streamed to memory where the
    states outgrow the cache, as 3 optimizees of the paper's net do), and the next step and
    an unroll's backward read such rows in place: the same bits as from contiguous copies,
    and as a step of the first coordinates alone."""
    net = network(20, 2, 2, seed=m)
    params = backend.kernel_parameters(net)
    g = torch.Generator().manual_seed(m)
    x = torch.rand(3, 1, m, generator=g) * 2e-2 - 1e-2
    h = [torch.rand(20, m, generator=g) * 2 - 1 for _ in range(2)]
    c = [torch.rand(20, m, generator=g) * 4 - 2 for _ in range(2)]
    _, h1, c1 = lstm_kernel.step(params, 0.1, x[0], h, c, 20, log_sign_p=10.0)
    ld = -(-m // lstm_kernel.ROW_ALIGN) * lstm_kernel.ROW_ALIGN
    assert all(t.shape == (20, m) and t.stride() == (ld, 1) for t in (*h1, *c1))
    assert all(t.data_ptr() % 64 == 0 for t in (*h1, *c1))
    as_written = lstm_kernel.step(params, 0.1, x[1], h1, c1, 20, log_sign_p=10.0)
    copied = lstm_kernel.step(params, 0.1, x[1], [t.contiguous() for t in h1], [t.contiguous() for t in c1], 20,
                              log_sign_p=10.0)
    assert torch.equal(as_written[0], copied[0])
    assert all(torch.equal(a, b) for a, b in zip([*as_written[1], *as_written[2]], [*copied[1], *copied[2]]))
    first = min(m, 100)
    alone = lstm_kernel.step(params, 0.1, x[1, :, :first].contiguous(), [t[:, :first].contiguous() for t in h1],
                             [t[:, :first].contiguous() for t in c1], 20, log_sign_p=10.0)
    assert torch.equal(alone[0], as_written[0][:first])
    assert all(torch.equal(a, b[:, :first]) for a, b in zip([*alone[1], *alone[2]], [*as_written[1], *as_written[2]]))
    d_out = torch.rand(3, m, generator=g)
    assert torch.equal(lstm_kernel.unroll_backward(params, 0.1, x, h1, c1, d_out, 20, log_sign_p=10.0),
                       lstm_kernel.unroll_backward(params, 0.1, x, [t.contiguous() for t in h1],
                                                   [t.contiguous() for t in c1], d_out, 20, log_sign_p=10.0))


def test_states_of_other_layouts_are_read_as_copies():
    """Rows of different strides, columns not adjacent, a broadcast row: read from contiguous
    copies, the same as the contiguous states."""
    net = network(6, 2, 1)
    params = backend.kernel_parameters(net)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 21, generator=g)
    h = [torch.rand(6, 21, generator=g) for _ in range(2)]
    c = [torch.rand(6, 21, generator=g) for _ in range(2)]
    want = lstm_kernel.step(params, 0.1, x, h, c, 6)
    odd_h = [torch.rand(21, 6).t().copy_(h[0]), torch.empty(6, 40)[:, :21].copy_(h[1])]
    odd_c = [c[0], torch.rand(1, 21).copy_(c[1][:1]).expand(6, 21)]
    got = lstm_kernel.step(params, 0.1, x, odd_h, odd_c, 6)
    broadcast = lstm_kernel.step(params, 0.1, x, h, [c[0], c[1][:1].expand(6, 21).contiguous()], 6)
    assert torch.equal(got[0], broadcast[0]) and torch.equal(want[1][0], got[1][0])
    assert all(torch.equal(a, b) for a, b in zip([*got[1], *got[2]], [*broadcast[1], *broadcast[2]]))


#: raw gradients over the magnitudes the log/sign preprocessing tells apart: below, at and
#: above e^-p, zero, huge, infinite and NaN
raw_gradients = st.lists(st.one_of(
    st.tuples(st.sampled_from([-1.0, 1.0]), st.floats(-45, 30)).map(lambda t: t[0] * 10.0 ** t[1]),
    st.sampled_from([0.0, -0.0, math.exp(-10.0), -math.exp(-10.0), float("inf"), -float("inf"), float("nan")])),
    min_size=1, max_size=40)


@settings(max_examples=30, deadline=None)
@given(raw_gradients, st.sampled_from([10.0, 5.0, 30.0]), st.integers(1, 2))
def test_the_kernels_log_sign_preprocessing_is_the_torch_preprocessors(values, p, steps):
    """The step and the unroll's backward given raw gradients compute the log/sign features
    themselves: the same updates and meta-gradient as given the torch preprocessor's features."""
    net = get_registry().learned("lstm", p=p).networks["default"]
    g = torch.tensor([values] * steps, dtype=torch.float32).view(steps, 1, -1)
    m = g.shape[-1]
    x = torch.stack([net.preprocessor.apply(g[t, 0], {})[0] for t in range(steps)])  # (T, 2, M)
    h = [torch.rand(20, m) - 0.5 for _ in range(2)]
    c = [torch.rand(20, m) - 0.5 for _ in range(2)]
    params = backend.kernel_parameters(net)
    want = lstm_kernel.step(params, net.head.scale, x[0], h, c, 20)
    got = lstm_kernel.step(params, net.head.scale, g[0], h, c, 20, log_sign_p=p)
    for a, b in zip([got[0], *got[1], *got[2]], [want[0], *want[1], *want[2]]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
    # the meta-gradient where every gradient is finite (an infinite one has no derivative)
    g = torch.where(torch.isfinite(g), g, 1.0)
    x = torch.stack([net.preprocessor.apply(g[t, 0], {})[0] for t in range(steps)])
    d_out = torch.randn(steps, m)
    flat_want = lstm_kernel.unroll_backward(params, net.head.scale, x, h, c, d_out, 20)
    flat_got = lstm_kernel.unroll_backward(params, net.head.scale, g, h, c, d_out, 20, log_sign_p=p)
    torch.testing.assert_close(flat_got, flat_want, rtol=1e-4, atol=1e-5 * max(1.0, flat_want.abs().max().item()))


@settings(max_examples=20, deadline=None)
@given(cases(steps=5), st.data())
def test_unroll_backward_matches_autograd_through_the_torch_network(case, data):
    hidden, layers, features, m, x, h, c = case
    steps = x.shape[0]
    d_out = data.draw(values((steps, m)))
    net = network(hidden, layers, features)
    inputs = x.clone().requires_grad_(True)
    state, total = torch_state(h, c), 0
    for t in range(steps):
        top, state = net.lstm(inputs[t], state)
        total = total + (net.head(top) * d_out[t]).sum()
    *want, want_x = torch.autograd.grad(total, [*backend.kernel_weights(net), inputs])
    params = backend.kernel_parameters(net)
    flat = lstm_kernel.unroll_backward(params, net.head.scale, x, list(h), list(c), d_out, hidden)
    for a, b in zip(backend.kernel_gradients(net, flat), want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, b.abs().max().item()))
    assert {id(w) for w in backend.kernel_weights(net)} == {id(p) for p in net.parameters()}
    # with the gradient with respect to the LSTM inputs (an input layer's output): the same flat one
    flat_too, d_x = lstm_kernel.unroll_backward(params, net.head.scale, x, list(h), list(c), d_out, hidden,
                                                input_grad=True)
    assert torch.equal(flat_too, flat)
    torch.testing.assert_close(d_x, want_x, rtol=1e-4, atol=1e-5 * max(1.0, want_x.abs().max().item()))


def test_unroll_backward_is_the_same_on_any_number_of_threads():
    net = network(20, 2, 2)
    gen = torch.Generator().manual_seed(0)
    m, steps = 5000, 8
    x = torch.randn(steps, 2, m, generator=gen)
    h, c = torch.randn(2, 20, m, generator=gen) * 0.1, torch.randn(2, 20, m, generator=gen)
    d_out = torch.randn(steps, m, generator=gen)
    threads = torch.get_num_threads()
    params, results = backend.kernel_parameters(net), []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(lstm_kernel.unroll_backward(params, 0.1, x, list(h), list(c), d_out, 20))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


@pytest.mark.parametrize("m", [100, 5000])  # a chunk a tile (or a line); several tiles a chunk, a partial last tile
def test_a_step_is_the_same_on_any_number_of_threads(m, isa_library):
    """The step hands its tiles out in chunks to whichever thread asks next: its update, new
    states and record do not depend on how many threads share them (nor on which took which)."""
    net = network(20, 2, 2)
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(1, m, generator=gen) * 1e-2
    h, c = list(torch.randn(2, 20, m, generator=gen) * 0.1), list(torch.randn(2, 20, m, generator=gen))
    params, threads, results = backend.kernel_weights(net), torch.get_num_threads(), []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            record = torch.full((lstm_kernel.record_size(2, 20, m, lib=isa_library),), float("nan"))
            update, h_new, c_new = lstm_kernel.step(params, 0.1, g, h, c, 20, lib=isa_library, log_sign_p=10.0,
                                                    record=record)
            results.append([update, *h_new, *c_new, record])
    finally:
        torch.set_num_threads(threads)
    assert not results[0][-1].isnan().any()  # every tile wrote its record
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_a_build_tuned_for_zen1_gives_the_bits_of_one_tuned_for_no_cpu(tmp_path):
    """The kernel's register blocking follows the CPU its build is tuned for (on AVX2, Zen 1's
    weight-gradient sums in blocks of 4 x 3, other CPUs' in 5 x 2): each sum adds the same
    products in the same order, so an AVX2 build tuned for Zen 1 and one tuned for no CPU in
    particular give the same updates, states, records and meta-gradient, to the bit.  (Not
    every tuning does: GCC's for Zen 2 and 3 leaves some products unfused, other rounding.)
    Odd units leave a tile's cell updates a remainder of the sigmoids side by side."""
    import platform
    import subprocess

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("x86-64 builds")
    try:
        missing = lstm_kernel.missing_cpu_flags("x86-64-v3")
    except OSError as exc:
        pytest.skip(f"no compiler for -march=x86-64-v3 ({exc})")
    if missing:
        pytest.skip(f"this CPU cannot run -march=x86-64-v3 (no {', '.join(missing)})")
    libs = [lstm_kernel.open_library(lstm_kernel.build("x86-64-v3"))]  # tuned for no CPU (and cached)
    out = tmp_path / "lstm-znver1.so"
    for extra in lstm_kernel.VARIANTS:  # as build() compiles: with OpenMP where the compiler has it
        done = subprocess.run([lstm_kernel._cxx(), *lstm_kernel.FLAGS, *extra, "-march=x86-64-v3", "-mtune=znver1",
                               str(lstm_kernel.SOURCE), "-o", str(out)], capture_output=True, text=True)
        if done.returncode == 0:
            break
    if done.returncode != 0:
        pytest.skip(f"-mtune=znver1 does not build here: {done.stderr.strip().splitlines()[-1:]}")
    libs.append(lstm_kernel.open_library(out))
    assert [lstm_kernel.blocking(lib) for lib in libs] == ["vectors 8x2, gemv 5, outer 5x2, sigmoids 4",
                                                            "vectors 8x2, gemv 5, outer 4x3, sigmoids 4"]
    for hidden, m in ((20, 1000), (7, 301)):
        net, steps = network(hidden, 2, 2), 5
        gen = torch.Generator().manual_seed(1)
        grads = torch.randn(steps, 1, m, generator=gen) * 1e-2
        d_out = torch.randn(steps, m, generator=gen)
        h0 = list(torch.randn(2, hidden, m, generator=gen) * 0.1)
        c0 = list(torch.randn(2, hidden, m, generator=gen))
        params, results = backend.kernel_weights(net), []
        for lib in libs:
            h, c, got, records = h0, c0, [], []
            for t in range(steps):
                records.append(torch.full((lstm_kernel.record_size(2, hidden, m, lib=lib),), float("nan")))
                update, h, c = lstm_kernel.step(params, 0.1, grads[t], h, c, hidden, lib=lib, log_sign_p=10.0,
                                                record=records[-1])
                got += [update, *h, *c, records[-1]]
            for recorded in (records, None):
                got.append(lstm_kernel.unroll_backward(params, 0.1, grads, h0, c0, d_out, hidden, lib=lib,
                                                       log_sign_p=10.0, records=recorded))
            results.append(got)
        assert torch.equal(results[0][-1], results[0][-2])  # from the records as recomputed
        assert all(torch.equal(a, b) for a, b in zip(*results)), f"hidden={hidden}"


def test_the_build_cache_key_follows_the_cpu_the_compiler_tunes_for(monkeypatch, tmp_path):
    """The register blocking follows the tuning (``__tune_znver1__``), which ``-march=native``
    picks from the CPU: two compilers alike but for the macros they predefine get two builds,
    and the same ones one."""
    monkeypatch.setattr(lstm_kernel, "cache_dir", lambda: tmp_path)

    def compiler(defines):
        return lambda cxx, march: ("g++ 12", "avx2", frozenset({"__AVX2__", "__FMA__"}), defines)

    targets = []
    for defines in ("#define __AVX2__ 1\n#define __tune_znver1__ 1", "#define __AVX2__ 1\n#define __tune_znver3__ 1",
                    "#define __AVX2__ 1\n#define __tune_znver1__ 1"):
        monkeypatch.setattr(lstm_kernel, "_compiler", compiler(defines))
        targets.append(lstm_kernel._target("c++", "native"))
    assert targets[0] != targets[1] and targets[0] == targets[2]
    assert all(t.parent == tmp_path and t.name.startswith("lstm-avx2-") for t in targets)


@pytest.mark.parametrize("zeros", [1, 3, 8])
def test_the_backward_leaves_out_the_trailing_steps_without_a_gradient_to_the_same_bits(zeros):
    """Steps after the last nonzero row of d_out (the unroll's last step always) are left out:
    the same gradients, to the bit, as the kernel computing every step, and zero input
    gradients there; they match autograd's too."""
    gen = torch.Generator().manual_seed(zeros)
    net = network(20, 2, 2)
    m, steps = 300, 8
    x = torch.randn(steps, 2, m, generator=gen)
    h, c = list(torch.randn(2, 20, m, generator=gen) * 0.1), list(torch.randn(2, 20, m, generator=gen))
    d_out = torch.randn(steps, m, generator=gen)
    d_out[steps - zeros:] = 0
    d_out[0, 5] = 0  # zeros elsewhere count as any number
    assert lstm_kernel.live_steps(d_out) == steps - zeros
    params = backend.kernel_parameters(net)
    flat, d_x = lstm_kernel.unroll_backward(params, 0.1, x, h, c, d_out, 20, input_grad=True)
    # every step through the library itself
    full, full_x = torch.zeros_like(flat), torch.full_like(x, float("nan"))
    weights = lstm_kernel.weights_of(params, 2, 20, 2)
    keep, (w_p, h_p, c_p) = lstm_kernel._pointer_arrays(weights, h, c)
    lstm_kernel.library().l2o_lstm_unroll_backward(2, 20, 2, m, steps, w_p, 0.1, x.data_ptr(), None, h_p, c_p, m,
                                                   d_out.data_ptr(), full.data_ptr(), full_x.data_ptr(), None,
                                                   torch.get_num_threads())
    assert torch.equal(flat, full)
    assert torch.equal(d_x, full_x) and not d_x[steps - zeros:].any()
    inputs, state, total = x.clone().requires_grad_(True), torch_state(h, c), 0
    for t in range(steps):
        top, state = net.lstm(inputs[t], state)
        total = total + (net.head(top) * d_out[t]).sum()
    *want, want_x = torch.autograd.grad(total, [*backend.kernel_weights(net), inputs])
    for a, b in zip(backend.kernel_gradients(net, flat), want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, b.abs().max().item()))
    torch.testing.assert_close(d_x, want_x, rtol=1e-4, atol=1e-5 * max(1.0, want_x.abs().max().item()))
    # nothing left: zeros, and the kernel not asked
    none = lstm_kernel.unroll_backward(params, 0.1, x, h, c, torch.zeros(steps, m), 20)
    assert not none.any() and lstm_kernel.live_steps(torch.full((steps, m), float("nan"))) == steps


def test_the_paper_lstm_uses_the_kernel_and_replays_unrolls():
    lopt = get_registry().learned("lstm")
    assert lopt.opt_fn().replay is not None
    assert get_registry().learned("lstm", hidden=7, layers=3, preprocess=False).opt_fn().replay is not None
    # One paper LSTM per group: each group's coordinates replayed by their own network.
    assert get_registry().learned("lstm-groups").opt_fn({"conv": slice(0, 3)}).replay is not None
    # An input layer, a tanh head and stateful inputs (RNNprop) replay too; averaging cells do not.
    assert get_registry().learned("rnnprop").opt_fn().replay is not None
    assert get_registry().learned("lstm-gac").opt_fn().replay is None
    assert lopt.double().opt_fn().replay is None  # float64 runs on torch


@pytest.mark.parametrize("name", ["lstm", "lstm-gac", "rnnprop", "lstm-groups"])
@pytest.mark.parametrize("groups", [None, {"conv": slice(0, 3), "fc": slice(3, 7)}, {"fc": slice(2, 5)}])
def test_where_the_kernel_runs_opt_fn_gives_replay_as_the_capabilities_say(name, groups):
    lopt = get_registry().learned(name)
    assert (lopt.opt_fn(groups).replay is not None) == lopt.capabilities.replay


def quadratic_meta_gradients(opt_of, lopt, seeds=(3, 4), unrolls=2, steps=5):
    task = get_registry().task("quadratic", dim=37)
    opt = opt_of(lopt.opt_fn(task.groups))
    params = task.init(list(seeds))
    state = opt.init(params)
    stream = task.batches("train", list(seeds))
    out = []
    for _ in range(unrolls):
        lopt.zero_grad()
        result = unroll(opt, task, params, state, stream, [0.5] + [1.0] * (steps - 1))
        result.meta_loss.backward()
        out.append(([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in lopt.parameters()],
                    result.logged, result.params))
        params, state = result.params.detach(), {k: v.detach() for k, v in result.state.items()}
    return out


def test_replayed_unroll_gives_the_meta_gradient_of_the_graph():
    torch.manual_seed(0)
    lopt = get_registry().learned("lstm", output_scale=0.5)
    replayed = quadratic_meta_gradients(lambda opt: opt, lopt)
    graph = quadratic_meta_gradients(lambda opt: opt.with_flags(replay=None), lopt)
    for (grads, logged, params), (grads_ref, logged_ref, params_ref) in zip(replayed, graph):
        torch.testing.assert_close(logged, logged_ref, rtol=1e-5, atol=0)
        torch.testing.assert_close(params, params_ref, rtol=1e-5, atol=1e-6)
        for a, b in zip(grads, grads_ref):
            assert b.abs().max() > 0
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


@pytest.mark.parametrize("output_scale", [0.5, 0.1])
def test_rnnprops_replayed_unroll_gives_the_meta_gradient_of_the_graph(output_scale):
    """RNNprop on the kernel: features from the stateful preprocessor (carried across unrolls),
    the input layer's backward through autograd, the tanh head's derivative from the updates
    (divided by a scale that is a power of two and by one that is not)."""
    torch.manual_seed(0)
    lopt = get_registry().learned("rnnprop", output_scale=output_scale)
    replayed = quadratic_meta_gradients(lambda opt: opt, lopt, unrolls=3)
    graph = quadratic_meta_gradients(lambda opt: opt.with_flags(replay=None), lopt, unrolls=3)
    names = [n for n, _ in lopt.named_parameters()]
    assert any("encoder" in n for n in names)
    for (grads, logged, params), (grads_ref, logged_ref, params_ref) in zip(replayed, graph):
        torch.testing.assert_close(logged, logged_ref, rtol=1e-5, atol=0)
        torch.testing.assert_close(params, params_ref, rtol=1e-5, atol=1e-6)
        for name, a, b in zip(names, grads, grads_ref):
            assert b.abs().max() > 0, name
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item(), msg=name)


def test_a_replay_keeps_the_graph_of_an_input_layer_only_where_it_is_needed(monkeypatch):
    """Without an input layer the LSTM inputs are constants: no input gradient is asked for."""
    calls = []
    original = lstm_kernel.unroll_backward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("input_grad", False))
        return original(*args, **kwargs)

    monkeypatch.setattr(lstm_kernel, "unroll_backward", spy)
    for name, kwargs in [("lstm", {}), ("lstm", {"preprocess": False}), ("rnnprop", {})]:
        lopt = get_registry().learned(name, **kwargs)
        opt = lopt.opt_fn()
        grads = torch.randn(3, 2, 6)
        start = state = opt.init(torch.zeros(2, 6))
        updates = []
        with torch.no_grad():
            for g in grads:
                u, state = opt.update(g, state, None)
                updates.append(u)
        opt.replay(grads, start, torch.stack(updates)).sum().backward()
    assert calls == [False, False, True]


@pytest.mark.parametrize("groups", [{"conv": slice(0, 3), "fc": slice(5, 9)}, {"fc": slice(0, 12)}])
def test_per_group_networks_replay_each_group_on_the_kernel(groups):
    """lstm-groups' ``replay``: the updates made, and the meta-gradient of every group's network
    that the steps give when run with a graph (the gradients held constant)."""
    torch.manual_seed(0)
    lopt = get_registry().learned("lstm-groups", output_scale=0.5)
    opt = lopt.opt_fn(groups)
    gen = torch.Generator().manual_seed(1)
    a, c = torch.rand(2, 12, generator=gen) + 0.5, torch.randn(2, 12, generator=gen)
    v = torch.randn(4, 2, 12, generator=gen)
    params = torch.zeros(2, 12)
    start = state = opt.init(params)
    grads, updates = [], []
    with torch.no_grad():
        for _ in range(4):
            grads.append(a * (params - c))
            update, state = opt.update(grads[-1], state, params)
            updates.append(update)
            params = params + update
    replayed = opt.replay(torch.stack(grads), start, torch.stack(updates))
    torch.testing.assert_close(replayed.detach(), torch.stack(updates), rtol=1e-5, atol=1e-7)
    got = torch.autograd.grad((v * replayed).sum(), list(lopt.parameters()), allow_unused=True)
    state, total = start, 0
    for g, w in zip(grads, v):
        update, state = opt.update(g, state, None)
        total = total + (w * update).sum()
    want = torch.autograd.grad(total, list(lopt.parameters()), allow_unused=True)
    reached = set()
    for (name, _), x, y in zip(lopt.named_parameters(), got, want):
        assert (x is None) == (y is None), name
        if y is not None:
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6, msg=name)
            reached.add(name.split(".")[1])
    assert reached == {name for name, _ in lopt.segments(groups, 12)}


def test_meta_training_with_the_kernel_follows_the_torch_implementation(monkeypatch):
    config = MetaTrainConfig(horizon=8, unroll=4, epochs=1, episodes_per_epoch=2, meta_batch=2, lr=1e-2,
                             validation_seeds=0, seed=3)
    task = get_registry().task("quadratic", dim=20)
    trained = []
    for native in ("1", "0"):
        monkeypatch.setenv("L2OBENCH_NATIVE", native)
        torch.manual_seed(0)
        lopt = get_registry().learned("lstm")
        assert (lopt.opt_fn().replay is not None) == (native == "1")
        result = meta_train(lopt, task, config, progress=False)
        trained.append((lopt, [row["meta_loss"] for row in result.history]))
    (fast, fast_losses), (slow, slow_losses) = trained
    assert fast_losses == pytest.approx(slow_losses, rel=1e-5)
    for a, b in zip(fast.parameters(), slow.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["lstm", "rnnprop"])
def test_evaluation_with_and_without_the_kernel(monkeypatch, name):
    """Graph-free steps on the kernel follow the torch network; RNNprop's too (its input
    layer and tanh head on torch ops around the kernel's LSTM)."""
    torch.manual_seed(0)
    lopt = get_registry().learned(name)
    task = get_registry().task("quadratic", dim=50)
    params = task.init([1, 2, 3])
    grads = [torch.randn(params.shape, generator=torch.Generator().manual_seed(k)) for k in range(6)]
    runs, calls = [], []
    real_step = lstm_kernel.step
    monkeypatch.setattr(lstm_kernel, "step", lambda *args, **kw: calls.append(1) or real_step(*args, **kw))
    for native in ("1", "0"):
        monkeypatch.setenv("L2OBENCH_NATIVE", native)
        opt = lopt.opt_fn()
        with torch.no_grad():
            state, p, updates = opt.init(params), params, []
            for g in grads:
                u, state = opt.update(g, state, p)
                p = p + u
                updates.append(u)
        runs.append(torch.stack(updates))
        assert len(calls) == len(grads)  # the kernel's steps with it, none without
    assert runs[1].abs().max() > 0
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-5, atol=1e-7)


def test_without_a_compiler_the_torch_implementation_runs(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.warns(L2OWarning, match="fused LSTM kernel is unavailable"):
        assert lstm_kernel.library() is None
    assert not lstm_kernel.available()  # warned once, then quiet
    lopt = get_registry().learned("lstm")
    opt = lopt.opt_fn()
    assert opt.replay is None
    with torch.no_grad():
        state = opt.init(torch.zeros(1, 3))
        update, _ = opt.update(torch.ones(1, 3), state, None)
    assert update.shape == (1, 3)


def test_a_failing_build_says_why(monkeypatch, tmp_path):
    compiler = tmp_path / "broken-c++"
    compiler.write_text("#!/bin/sh\n"
                        "[ \"$1\" = --version ] && echo broken 1.0 && exit 0\n"
                        "echo 'error: no' >&2\nexit 3\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setattr(lstm_kernel, "cache_dir", lambda: tmp_path / "cache")
    with pytest.warns(L2OWarning, match=r"exited with status 3: error: no"):
        assert lstm_kernel.library() is None
    assert not list((tmp_path / "cache").glob("*"))  # nothing half-written left in the cache


def test_the_kernel_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("L2OBENCH_NATIVE", "0")
    assert lstm_kernel.library() is None
    assert get_registry().learned("lstm").opt_fn().replay is None


def test_kernel_inputs_are_checked():
    """The kernel trusts its pointers, so every size it reads or writes is checked first."""
    net = network(4, 1, 2)
    x = torch.zeros(2, 5, dtype=torch.float64)
    h, c = [torch.zeros(4, 5)], [torch.zeros(4, 5)]
    params = backend.kernel_parameters(net)
    with pytest.raises(ValueError, match="contiguous float32 CPU tensors; got torch.float64 on cpu"):
        lstm_kernel.step(params, 0.1, x, h, c, 4)
    x = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="takes float32 CPU tensors; got torch.float64"):  # states: any row stride
        lstm_kernel.step(params, 0.1, x, [torch.zeros(4, 5, dtype=torch.float64)], c, 4)
    weights = [w.detach() for w in backend.kernel_weights(net)]
    with pytest.raises(ValueError, match="weight 0 has 32 numbers; a network of 1 layers of 5 units on 2 features "
                                         "has 40"):
        lstm_kernel.step(weights, 0.1, x, [torch.zeros(5, 5)], [torch.zeros(5, 5)], 5)
    with pytest.raises(ValueError, match="weight 0 has 32 numbers; .* on 1 features has 16"):
        lstm_kernel.step(weights, 0.1, x[:1], h, c, 4)
    with pytest.raises(ValueError, match="raw gradients, one row; got 2 rows"):
        lstm_kernel.step(weights, 0.1, x, h, c, 4, log_sign_p=10.0)
    with pytest.raises(ValueError, match=r"states must be 1 h and 1 c of shape \(4, 5\)"):
        lstm_kernel.step(weights, 0.1, x, [torch.zeros(4, 6)], c, 4)
    with pytest.raises(ValueError, match=r"d_out is \(3, 5\); the unroll has 2 steps"):
        lstm_kernel.unroll_backward(weights, 0.1, torch.zeros(2, 2, 5), h, c, torch.zeros(3, 5), 4)
    with pytest.raises(ValueError, match="no gradient with respect to raw gradients"):
        lstm_kernel.unroll_backward(weights, 0.1, torch.zeros(2, 1, 5), h, c, torch.zeros(2, 5), 4,
                                    log_sign_p=10.0, input_grad=True)
    assert backend.replays_on_kernel(net)


def replayed_unroll(name: str) -> Tensor:
    """A 3-step unroll of ``name`` on 50 coordinates run without a graph, then replayed."""
    opt = get_registry().learned(name).opt_fn()
    grads = torch.randn(3, 1, 50) * 1e-2
    state = opt.init(grads[0])
    with torch.no_grad():
        updates, s = [], state
        for g in grads:
            u, s = opt.update(g, s, None)
            updates.append(u)
    return opt.replay(grads, state, torch.stack(updates))


def test_a_weight_changed_in_place_before_the_replays_backward_is_refused():
    replayed = replayed_unroll("lstm")
    lopt_weight = replayed.grad_fn.next_functions[1][0].variable
    with torch.no_grad():
        lopt_weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        replayed.sum().backward()


def test_updates_changed_in_place_before_a_tanh_heads_backward_are_refused():
    """RNNprop's replay reads the updates for its head's derivative: they are saved as such."""
    replayed = replayed_unroll("rnnprop")
    with torch.no_grad():
        replayed.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        replayed.sum().backward()


def test_a_nan_of_any_payload_stays_nan():
    """NaN features (a diverged optimizee's) give NaN updates, whatever the NaN's bits."""
    net = network(20, 2, 2)
    x = torch.zeros(2, 16)
    x.view(torch.int32)[0, :] = torch.tensor([0x7FC00001, 0x7FC001FF, 0x7FFFFFFF, -0x003FFFFF] * 4)
    h, c = [torch.zeros(20, 16)] * 2, [torch.zeros(20, 16)] * 2
    update, _, _ = lstm_kernel.step(backend.kernel_parameters(net), net.head.scale, x, h, c, 20)
    assert torch.isnan(update).all()


def test_non_finite_gradients_give_what_torch_gives():
    """A NaN or infinite gradient (a diverging optimizee) is not laundered into a finite
    update: each coordinate's update is what the torch implementation gives, NaN included."""
    g = torch.tensor([[1e-3, float("nan"), float("inf"), -float("inf"), 0.0, 2.0]])
    for preprocess in (True, False):
        lopt = get_registry().learned("lstm", preprocess=preprocess)
        net = lopt.networks["default"]
        with torch.no_grad():
            state = net.init(g)
            got, _ = net.step(g, state)
            x, _ = net.preprocessor.apply(g, {})
            top, _ = net.lstm(x, state)
            want = net.head(top)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, equal_nan=True)
        assert torch.isnan(got[0, 1])


def test_a_compiler_without_openmp_builds_the_threaded_kernel(monkeypatch, tmp_path):
    """Compilers that refuse -fopenmp (Apple's clang) build the std::thread variant."""
    import shutil

    real = shutil.which(os.environ.get("CXX", "c++"))
    compiler = tmp_path / "no-openmp-c++"
    compiler.write_text("#!/bin/sh\n"
                        "for a in \"$@\"; do [ \"$a\" = -fopenmp ] && echo 'error: no openmp' >&2 && exit 1; done\n"
                        f"exec {real} \"$@\"\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setattr(lstm_kernel, "cache_dir", lambda: tmp_path / "cache")
    assert lstm_kernel.library() is not None
    net = network(20, 2, 2)
    gen = torch.Generator().manual_seed(1)
    x, h, c = torch.randn(3, 2, 300, generator=gen), torch.randn(2, 20, 300, generator=gen), torch.zeros(2, 20, 300)
    d_out = torch.randn(3, 300, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        threaded = lstm_kernel.unroll_backward(backend.kernel_parameters(net), 0.1, x, list(h), list(c), d_out, 20)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.delenv("CXX")
    assert torch.equal(threaded, lstm_kernel.unroll_backward(backend.kernel_parameters(net), 0.1, x, list(h), list(c),
                                                             d_out, 20))


def test_the_command_says_so_in_one_line(tmp_path):
    """Without a compiler the command still runs, and says why it is slower in one line."""
    import subprocess
    import sys

    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++")}
    done = subprocess.run([sys.executable, "-m", "l2obench.cli", "meta-train", "--optimizer", "lstm", "--task",
                           "quadratic", "--task-param", "dim=3", "--horizon", "4", "--unroll", "2", "--epochs", "1",
                           "--episodes-per-epoch", "1", "--validation-seeds", "0", "--out", str(tmp_path / "q.pt"),
                           "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if "kernel" in line]
    assert len(warning) == 1 and warning[0].startswith("l2obench: warning: the fused LSTM kernel is unavailable")


def test_fewer_openmp_threads_than_asked_for_still_cover_every_coordinate(tmp_path):
    """OpenMP may run fewer threads than the kernel asks for (here OMP_THREAD_LIMIT=1 against
    torch's 2 threads); every coordinate is still computed, the same as on one thread."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(2)\n"
            "from l2obench import get_registry\n"
            "from l2obench.plugins import lstm_kernel\n"
            "from l2obench.plugins.lstm import backend\n"
            "torch.manual_seed(0); net = get_registry().learned('lstm').networks['default']\n"
            "g = torch.Generator().manual_seed(0)\n"
            "x, h = torch.randn(2, 1000, generator=g), torch.randn(2, 20, 1000, generator=g)\n"
            "c = torch.zeros(2, 20, 1000)\n"
            "out, _, _ = lstm_kernel.step(backend.kernel_parameters(net), 0.1, x, list(h), list(c), 20)\n"
            "torch.save(out, %r)\n")
    outs = []
    for name, limit in (("limited", "1"), ("free", None)):
        env = {k: v for k, v in os.environ.items() if k != "OMP_THREAD_LIMIT"}
        if limit:
            env["OMP_THREAD_LIMIT"] = limit
        path = tmp_path / f"{name}.pt"
        subprocess.run([sys.executable, "-c", code % str(path)], env=env, check=True, timeout=120)
        outs.append(torch.load(path))
    assert torch.equal(outs[0], outs[1])


def test_replay_without_the_kernel_recomputes_the_steps_with_a_graph(monkeypatch):
    """``LSTMNetwork.replay`` when the kernel cannot serve (here turned off after the
    optimizer was made): the same updates and meta-gradients, from the torch network."""
    net = network(6, 2, 2)
    gen = torch.Generator().manual_seed(2)
    grads = torch.randn(4, 2, 9, generator=gen) * 0.1
    state = net.init(grads[0])
    with torch.no_grad():
        updates, s = [], state
        for g in grads:
            u, s = net.step(g, s)
            updates.append(u)
    updates = torch.stack(updates)
    v = torch.randn(updates.shape, generator=gen)
    results = []
    for native in ("1", "0"):
        monkeypatch.setenv("L2OBENCH_NATIVE", native)
        replayed = net.replay(grads, state, updates)
        torch.testing.assert_close(replayed, updates, rtol=1e-5, atol=1e-7)
        results.append(torch.autograd.grad((v * replayed).sum(), backend.kernel_weights(net)))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


# -- instruction sets ------------------------------------------------------------------

#: -march -> the kernel's path for it; each is built and checked where this CPU can run it
MARCHES = {"native": None, "x86-64-v4": "avx512", "x86-64-v3": "avx2", "x86-64": "generic"}


@pytest.fixture(scope="module", params=list(MARCHES))
def isa_library(request):
    import platform

    march = request.param
    if march != "native" and platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"-march={march} is an x86-64 level")
    try:
        missing = lstm_kernel.missing_cpu_flags(march)
    except OSError as exc:
        pytest.skip(f"the compiler does not know -march={march} ({exc})")
    if missing:
        pytest.skip(f"this CPU cannot run -march={march} (no {', '.join(missing)})")
    lib = lstm_kernel.open_library(lstm_kernel.build(march))
    assert lib.l2o_lstm_isa().decode() == (MARCHES[march] or lstm_kernel.isa_for("native"))
    return lib


@pytest.mark.parametrize("hidden, layers, features, m", [(20, 2, 2, 4099), (20, 2, 20, 37), (7, 3, 1, 37),
                                                       (1, 1, 2, 5)])
def test_every_instruction_set_gives_the_torch_networks_step_and_meta_gradient(isa_library, hidden, layers,
                                                                               features, m):
    """The paper's shape over whole and partial tiles, and odd shapes (gemv tails, blocks of
    one), for the kernel built for each -march this CPU can run."""
    net = network(hidden, layers, features, seed=m)
    g = torch.Generator().manual_seed(m)
    steps = 4
    x = torch.rand(steps, features, m, generator=g) * 6 - 3
    h = [torch.rand(hidden, m, generator=g) * 2 - 1 for _ in range(layers)]
    c = [torch.rand(hidden, m, generator=g) * 4 - 2 for _ in range(layers)]
    d_out = torch.randn(steps, m, generator=g)
    with torch.no_grad():
        top, want = net.lstm(x[0], torch_state(h, c))
        update = net.head(top)
    got_update, got_h, got_c = lstm_kernel.step(backend.kernel_parameters(net), net.head.scale, x[0], h, c, hidden,
                                                lib=isa_library)
    torch.testing.assert_close(got_update, update, rtol=1e-5, atol=1e-6)
    for k in range(layers):
        torch.testing.assert_close(got_h[k], want[f"h{k}"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got_c[k], want[f"c{k}"], rtol=1e-5, atol=1e-6)
    state, total = torch_state(h, c), 0
    for t in range(steps):
        top, state = net.lstm(x[t], state)
        total = total + (net.head(top) * d_out[t]).sum()
    want_grads = torch.autograd.grad(total, backend.kernel_weights(net))
    flat = lstm_kernel.unroll_backward(backend.kernel_parameters(net), net.head.scale, x, h, c, d_out, hidden,
                                       lib=isa_library)
    for a, b in zip(backend.kernel_gradients(net, flat), want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * max(1.0, b.abs().max().item()))
    # from the steps' records: the same bits (at 4,099 coordinates of the paper's shape, streamed)
    size = lstm_kernel.record_size(layers, hidden, m, lib=isa_library)
    records, hs, cs = [torch.empty(size) for _ in range(steps)], h, c
    for t in range(steps):
        _, hs, cs = lstm_kernel.step(backend.kernel_parameters(net), net.head.scale, x[t], hs, cs, hidden,
                                     lib=isa_library, record=records[t])
    assert torch.equal(lstm_kernel.unroll_backward(backend.kernel_parameters(net), net.head.scale, x, h, c, d_out,
                                                   hidden, lib=isa_library, records=records), flat)
    inputs = x.clone().requires_grad_(True)  # the gradient with respect to the LSTM inputs
    state, total = torch_state(h, c), 0
    for t in range(steps):
        top, state = net.lstm(inputs[t], state)
        total = total + (net.head(top) * d_out[t]).sum()
    (want_x,) = torch.autograd.grad(total, [inputs])
    _, d_x = lstm_kernel.unroll_backward(backend.kernel_parameters(net), net.head.scale, x, h, c, d_out, hidden,
                                         lib=isa_library, input_grad=True)
    torch.testing.assert_close(d_x, want_x, rtol=1e-4, atol=1e-5 * max(1.0, want_x.abs().max().item()))
    if features == 2:  # the log/sign preprocessing of raw gradients, in the kernel
        raw = torch.randn(steps, 1, m, generator=g) * 10.0 ** torch.randint(-8, 2, (steps, 1, m), generator=g)
        pre = net.preprocessor
        feats = torch.stack([pre.apply(raw[t, 0], {})[0] for t in range(steps)])
        params = backend.kernel_parameters(net)
        fused = lstm_kernel.step(params, net.head.scale, raw[0], h, c, hidden, lib=isa_library,
                                 log_sign_p=pre.log_sign_p)[0]
        given = lstm_kernel.step(params, net.head.scale, feats[0], h, c, hidden, lib=isa_library)[0]
        torch.testing.assert_close(fused, given, rtol=1e-5, atol=1e-6)
        fused = lstm_kernel.unroll_backward(params, net.head.scale, raw, h, c, d_out, hidden, lib=isa_library,
                                            log_sign_p=pre.log_sign_p)
        given = lstm_kernel.unroll_backward(params, net.head.scale, feats, h, c, d_out, hidden, lib=isa_library)
        torch.testing.assert_close(fused, given, rtol=1e-4, atol=1e-5 * max(1.0, given.abs().max().item()))


def test_a_march_this_cpu_cannot_run_is_refused_with_a_warning(monkeypatch):
    monkeypatch.setattr(lstm_kernel, "missing_cpu_flags", lambda march, cxx=None: ["avx9000"])
    monkeypatch.setenv("L2OBENCH_KERNEL_MARCH", "x86-64-v9")
    lstm_kernel.reset()
    try:
        with pytest.warns(L2OWarning, match=r"cannot run -march=x86-64-v9 \(no avx9000\)"):
            used, reason = lstm_kernel.backend()
        assert not used and "could not be built for -march=x86-64-v9" in reason
    finally:
        lstm_kernel.reset()


# -- the self-check: kernel or torch ops -------------------------------------------------


@pytest.fixture
def fresh_check(monkeypatch, tmp_path):
    """The automatic choice with a self-check record of its own (not this machine's)."""
    monkeypatch.setenv("L2OBENCH_NATIVE", "auto")
    monkeypatch.setattr(lstm_kernel, "record_path", lambda library_path: tmp_path / "check.json")
    lstm_kernel.reset()
    yield tmp_path / "check.json"
    lstm_kernel.reset()


def timings(kernel_s, torch_s, calls):
    return lambda name, **kw: calls.append(name) or (kernel_s if name == "kernel" else torch_s)


def test_where_torch_ops_are_faster_they_run_and_l2obench_says_so_once(fresh_check, monkeypatch):
    import warnings

    calls = []
    monkeypatch.setattr(lstm_kernel, "unroll_seconds", timings(0.2, 0.1, calls))
    with pytest.warns(L2OWarning, match="not faster than torch ops on this CPU .*L2OBENCH_NATIVE=1 forces the kernel"):
        used, reason = lstm_kernel.backend()
    assert not used and "the self-check found the kernel not faster" in reason and "200 ms against 100 ms" in reason
    assert calls.count("kernel") == calls.count("torch") >= 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once: later questions are answered quietly
        assert not lstm_kernel.available()
        assert get_registry().learned("lstm").opt_fn().replay is None
    record = json.loads(fresh_check.read_text())
    assert (record["kernel_ms"], record["torch_ms"]) == (200.0, 100.0) and record["isa"] == lstm_kernel.isa()


def test_a_tie_within_the_timings_noise_keeps_torch_ops(fresh_check, monkeypatch):
    monkeypatch.setattr(lstm_kernel, "unroll_seconds", timings(0.095, 0.1, []))
    with pytest.warns(L2OWarning, match="not faster than torch ops"):
        assert lstm_kernel.backend()[0] is False


def test_where_the_kernel_is_faster_it_runs_and_the_record_is_reused(fresh_check, monkeypatch):
    monkeypatch.setattr(lstm_kernel, "unroll_seconds", timings(0.1, 0.3, []))
    used, reason = lstm_kernel.backend()
    assert used and "the self-check found the kernel faster" in reason
    assert get_registry().learned("lstm").opt_fn().replay is not None
    lstm_kernel.reset()
    monkeypatch.setattr(lstm_kernel, "unroll_seconds", lambda name, **kw: pytest.fail("timed again"))
    assert lstm_kernel.backend() == (used, reason)  # from the record beside the library


def test_the_environment_forces_either_or_is_refused(monkeypatch):
    monkeypatch.setenv("L2OBENCH_NATIVE", "force")
    assert lstm_kernel.backend() == (True, f"forced by L2OBENCH_NATIVE=1 ({lstm_kernel.isa()}, -march=native)")
    monkeypatch.setenv("L2OBENCH_NATIVE", "off")
    assert lstm_kernel.backend() == (False, "turned off by L2OBENCH_NATIVE=0")
    monkeypatch.setenv("L2OBENCH_NATIVE", "maybe")
    with pytest.raises(ConfigError, match="L2OBENCH_NATIVE='maybe' is not auto, 1 or 0"):
        lstm_kernel.backend()


@pytest.mark.parametrize("name", ["kernel", "torch"])
def test_the_self_check_runs_each_implementation_through_the_plugin(name, monkeypatch):
    """What the self-check times, on a tiny unroll: the kernel's steps and replay, or torch's graph."""
    calls = []
    real_backward = lstm_kernel.unroll_backward
    monkeypatch.setattr(lstm_kernel, "unroll_backward", lambda *a, **kw: calls.append(1) or real_backward(*a, **kw))
    assert lstm_kernel.unroll_seconds(name, coordinates=40, steps=3) > 0
    assert len(calls) == (name == "kernel")


def test_the_lstm_is_placed_on_the_device_of_its_tensors():
    """On a device other than the CPU (here ``meta``, standing in for CUDA) the LSTM runs on
    torch ops there: no kernel, no replay, updates and states on that device."""
    for name in ("lstm", "rnnprop"):
        lopt = get_registry().learned(name).to("meta")
        opt = lopt.opt_fn()
        assert opt.replay is None
        g = torch.zeros(2, 5, device="meta")
        for grad_enabled in (True, False):
            with torch.set_grad_enabled(grad_enabled):
                update, state = opt.update(g, opt.init(g), None)
            assert update.device.type == "meta" and update.shape == (2, 5)
            assert {v.device.type for v in state.values()} == {"meta"}



# -- the steps' records ----------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(cases(steps=4), st.booleans(), st.data())
def test_the_backward_from_the_steps_records_gives_the_bits_of_the_recomputed_forward(case, raw, data):
    """Steps that write records, then the backward reading them instead of recomputing the
    forward: the same gradients (and input gradients) to the bit, for any shape."""
    hidden, layers, features, m, x, h, c = case
    if raw:
        features, x = 2, x[:, :1] * 1e-2  # raw gradients, the kernel's log/sign features
    net = network(hidden, layers, features)
    params, p = backend.kernel_parameters(net), (10.0 if raw else None)
    size = lstm_kernel.record_size(layers, hidden, m)
    records = [torch.full((size,), float("nan")) for _ in range(x.shape[0])]
    hs, cs = list(h), list(c)
    for t in range(x.shape[0]):
        _, hs, cs = lstm_kernel.step(params, net.head.scale, x[t], hs, cs, hidden, log_sign_p=p, record=records[t])
    d_out = data.draw(values((x.shape[0], m)))
    grad = not raw
    want = lstm_kernel.unroll_backward(params, net.head.scale, x, list(h), list(c), d_out, hidden, log_sign_p=p,
                                       input_grad=grad)
    got = lstm_kernel.unroll_backward(params, net.head.scale, x, list(h), list(c), d_out, hidden, log_sign_p=p,
                                      input_grad=grad, records=records)
    for a, b in zip(got if grad else [got], want if grad else [want]):
        assert torch.equal(a, b)


def test_records_streamed_to_memory_give_the_same_bits_too():
    """Records larger than the kernel streams (2 MiB; 5,000 coordinates of the paper's LSTM make
    3.2 MB a step), in a buffer that starts off a vector's boundary as well."""
    net = network(20, 2, 2)
    gen = torch.Generator().manual_seed(2)
    m, steps = 5000, 3
    x = torch.randn(steps, 1, m, generator=gen) * 1e-2
    h, c = list(torch.randn(2, 20, m, generator=gen) * 0.1), list(torch.randn(2, 20, m, generator=gen))
    params, size = backend.kernel_parameters(net), lstm_kernel.record_size(2, 20, m)
    assert size * 4 > 2 << 20
    d_out = torch.randn(steps, m, generator=gen)
    want = lstm_kernel.unroll_backward(params, 0.1, x, h, c, d_out, 20, log_sign_p=10.0)
    for offset in (0, 1):
        records = [torch.empty(size + 1)[offset:offset + size] for _ in range(steps)]
        hs, cs = h, c
        for t in range(steps):
            _, hs, cs = lstm_kernel.step(params, 0.1, x[t], hs, cs, 20, log_sign_p=10.0, record=records[t])
        got = lstm_kernel.unroll_backward(params, 0.1, x, h, c, d_out, 20, log_sign_p=10.0, records=records)
        assert torch.equal(got, want), offset


def test_records_of_the_wrong_size_or_number_are_refused():
    net = network(4, 2, 2)
    params, h, c = backend.kernel_parameters(net), [torch.zeros(4, 9)] * 2, [torch.zeros(4, 9)] * 2
    size = lstm_kernel.record_size(2, 4, 9)
    with pytest.raises(ValueError, match=f"the record has {size - 1} floats; a step's record of this shape has {size}"):
        lstm_kernel.step(params, 0.1, torch.zeros(1, 9), h, c, 4, log_sign_p=10.0, record=torch.zeros(size - 1))
    with pytest.raises(ValueError, match="1 records for an unroll of 2 steps"):
        lstm_kernel.unroll_backward(params, 0.1, torch.zeros(2, 1, 9), h, c, torch.ones(2, 9), 4, log_sign_p=10.0,
                                    records=[torch.zeros(size)])


def counting_backwards(monkeypatch) -> list[int]:
    """[backwards without records, with records] of the kernel from now on."""
    counts, original = [0, 0], lstm_kernel.unroll_backward

    def counted(*args, **kwargs):
        counts[kwargs.get("records") is not None] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(lstm_kernel, "unroll_backward", counted)
    return counts


@pytest.mark.parametrize("name", ["lstm", "lstm-groups"])
def test_a_replayed_unroll_reads_its_steps_records_for_the_same_meta_gradient_to_the_bit(name, monkeypatch):
    """The meta-trainer's steps (in steps_to_replay) write records and the replay's backward
    reads them: the same meta-gradients, to the bit, as recomputing the forward; recorded
    memory is reused by the next unroll."""
    counts = counting_backwards(monkeypatch)
    torch.manual_seed(0)
    lopt = get_registry().learned(name, output_scale=0.5)
    opt_of = lambda opt: opt
    with_records = quadratic_meta_gradients(opt_of, lopt, unrolls=3)
    assert counts == [0, 3]  # (the quadratic's coordinates are one group: one network)
    assert backend._FREE  # the records went back for the next unroll
    monkeypatch.setattr(backend, "replaying", lambda: False)
    recomputed = quadratic_meta_gradients(opt_of, lopt, unrolls=3)
    assert counts == [3, 3]
    for (grads, logged, params), (grads_ref, logged_ref, params_ref) in zip(with_records, recomputed):
        assert torch.equal(logged, logged_ref) and torch.equal(params, params_ref)
        assert all(torch.equal(a, b) for a, b in zip(grads, grads_ref))
        assert any(b.abs().max() > 0 for b in grads_ref)


def recorded_steps(net, grads):
    """``grads (T, M)`` through ``net``'s kernel steps in steps_to_replay: (first state, updates)."""
    state = {f"{k}{i}": torch.zeros(net.lstm.hidden, grads.shape[1]) for k in "hc" for i in range(len(net.lstm.cells))}
    start, updates = state, []
    with torch.no_grad(), l2obench.steps_to_replay():
        for g in grads:
            u, state = backend.step(net, g, state, raw=True)
            updates.append(u)
    return start, torch.stack(updates)


@pytest.mark.parametrize("change", ["none", "weight", "input", "start", "steps", "too big"])
def test_records_serve_only_the_unroll_they_were_made_in(change, monkeypatch):
    """The replay reads the records only where its weights, first state and inputs are the
    steps', unchanged (else the forward is recomputed from what the replay is given), and
    only within RECORD_BYTES."""
    counts = counting_backwards(monkeypatch)
    if change == "too big":
        monkeypatch.setattr(backend, "RECORD_BYTES", 2 * 4 * lstm_kernel.record_size(2, 20, 30))
    net = network(20, 2, 2, seed=1)
    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(4, 30, generator=gen) * 1e-2
    start, updates = recorded_steps(net, grads)
    if change == "weight":
        with torch.no_grad():
            net.head.linear.bias.add_(0.25)
    elif change == "input":
        grads[2].mul_(2.0)
    elif change == "start":
        start = {k: v.clone() for k, v in start.items()}
    elif change == "steps":
        grads, updates = grads[:3], updates[:3]
    v = torch.randn(updates.shape, generator=gen)
    (backend.replay(net, grads, start, updates) * v).sum().backward()
    got = [p.grad.clone() for p in net.parameters()]
    assert counts == ([0, 1] if change == "none" else [1, 0])
    net.zero_grad()
    monkeypatch.setattr(backend, "replaying", lambda: False)
    if change in ("none", "too big"):
        _, updates = recorded_steps(net, grads)
    (backend.replay(net, grads, start, updates) * v).sum().backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(got, net.parameters()))


def test_steps_to_replay_marks_only_the_steps_inside_it():
    assert not l2obench.replaying()
    with l2obench.steps_to_replay():
        assert l2obench.replaying()
        with l2obench.steps_to_replay():
            assert l2obench.replaying()
        assert l2obench.replaying()
    assert not l2obench.replaying()
