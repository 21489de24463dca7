"""Conformance checks for hand-designed optimizers (and, through ``opt_fn()``, learned
ones): the optimizer interface's contract and the capability flags it declares.

Which checks apply is read from the flags (``Optimizer.coordinatewise``,
``Optimizer.zero_grad``, ``Optimizer.uses_groups``), never from a name.  Each check takes ``dtypes``, the
floating dtypes it draws tensors in.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from ..optimizer import Optimizer
from . import strategies as lst
from .group_checks import check_uses_groups
from .numeric_checks import DTYPE_RTOL, check_dtypes_agree, check_state_on_device
from .properties import (DEFAULT_DTYPES, applies_when, close, fail, identical, inputs, kit_check, kit_property,
                         run_steps, state_spec, tensor_text)

__all__ = [
    "check_state_structure", "check_inputs_unchanged", "check_updates_finite", "check_deterministic",
    "check_permutation_equivariant", "check_coordinates_independent", "check_batched_equals_rows", "check_zero_grad",
    "check_descent_on_quadratic", "check_interleaved_runs", "check_dtypes_agree", "check_state_on_device",
    "OPTIMIZER_CHECKS", "DESCENT_STEPS", "LONG_RUN_STEPS", "DTYPE_RTOL",
]

#: Steps of the quadratic on which ``check_descent_on_quadratic`` expects progress.
DESCENT_STEPS = 50

#: Steps of the long run in which ``check_state_structure`` expects a fixed state structure.
LONG_RUN_STEPS = 30


@kit_check
def check_state_structure(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """``init`` returns a flat ``dict[str, Tensor]`` whose keys, shapes, dtypes and
    devices stay the same over a long run (the drawn gradients repeated for
    ``LONG_RUN_STEPS`` steps, so state that starts growing late is seen), and every
    update has the shape, dtype and device of ``params``."""
    name = "check_state_structure"

    @kit_property(12)
    @given(inputs(dtypes, max_dim=3, steps=(4, 5)))
    def prop(example):
        params, drawn = example
        grads = [drawn[t % len(drawn)] for t in range(LONG_RUN_STEPS)]
        state = opt.init(params)
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                                  for k, v in state.items()):
            got = state_spec(state) if isinstance(state, dict) else type(state).__name__
            fail(name, f"init() must return a flat dict[str, Tensor], got {got}", params=params)
        spec0 = state_spec(state)
        for t, g in enumerate(grads, 1):
            out = opt.update(g, state, params)
            if not (isinstance(out, tuple) and len(out) == 2):
                fail(name, f"update() must return (updates, state), got {type(out).__name__}", params=params,
                     grads=drawn)
            u, state = out
            if not isinstance(u, Tensor) or (u.shape, u.dtype, u.device) != (params.shape, params.dtype, params.device):
                got = (tuple(u.shape), u.dtype, u.device) if isinstance(u, Tensor) else type(u).__name__
                fail(name, f"step {t}: updates are {got}, expected the shape/dtype/device of params "
                           f"{(tuple(params.shape), params.dtype, params.device)}", params=params, grads=drawn)
            spec = state_spec(state) if isinstance(state, dict) else {}
            if spec != spec0:
                changes = [f"{k!r}: {spec0.get(k, 'absent')} -> {spec.get(k, 'absent')}"
                           for k in sorted(set(spec0) | set(spec)) if spec0.get(k) != spec.get(k)]
                fail(name, f"after step {t} the state's structure changed ({'; '.join(changes)}); the drawn "
                           f"gradients were repeated in turn", params=params, grads=drawn)
            params = params + u

    prop()


@kit_check
def check_inputs_unchanged(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """Neither ``init`` nor ``update`` writes into its inputs: params, grads, the
    state dict and its tensors are the same before and after every call, and stay
    so after later calls (an optimizer that holds on to an earlier step's tensors
    must not write into them either)."""
    name = "check_inputs_unchanged"

    def snapshot(t: Tensor):
        return t, t.clone(), t._version

    def changed(snap) -> str | None:
        t, values, version = snap
        if not identical(t, values):
            return "its values changed"
        if t._version != version:
            return "it was written in place"
        return None

    @kit_property(20)
    @given(inputs(dtypes, steps=(2, 4)))
    def prop(example):
        params, grads = example
        seen: list[tuple[int, str, tuple]] = [(0, "params", snapshot(params))]
        state = opt.init(params)
        if (why := changed(seen[0][2])) is not None:
            fail(name, f"init() changed its input params in place ({why})", params=seen[0][2][1])
        for t, g in enumerate(grads, 1):
            s_items = dict(state)
            seen += [(t, "grads", snapshot(g)), (t, "params", snapshot(params))]
            seen += [(t, f"state tensor {k!r}", snapshot(v)) for k, v in state.items()]
            u, new_state = opt.update(g, state, params)
            if set(state) != set(s_items) or any(state[k] is not s_items[k] for k in s_items):
                fail(name, f"step {t}: update() modified the input state dict (keys {sorted(s_items)} -> "
                           f"{sorted(state)}); return a new dict", params=seen[0][2][1], grads=grads[:t])
            for when, label, snap in seen:
                if (why := changed(snap)) is not None:
                    if when == t:
                        what = f"the input {label}" if label.startswith("state") else f"its input {label}"
                    else:
                        what = (f"{'init()' if when == 0 else f'step {when}'}'s input {label} (an earlier step's "
                                f"input, held on to)")
                    fail(name, f"step {t}: update() changed {what} in place ({why})",
                         params=seen[0][2][1], grads=[x[1] for _, lb, x in seen if lb == "grads"])
            state = new_state
            params = params + u

    prop()


@kit_check
def check_interleaved_runs(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """One optimizer object runs two independent optimizations interleaved step by
    step (``init`` both, then alternate updates) exactly as it runs each alone: all
    state is in the state dict, none in a closure or a cache keyed by shape."""
    name = "check_interleaved_runs"

    @st.composite
    def draw(draw_):
        params, grads = draw_(inputs(dtypes, steps=(2, 3)))
        other = draw_(lst.parameters(tuple(params.shape), params.dtype))
        other_grads = draw_(lst.gradient_sequences(tuple(params.shape), params.dtype, len(grads)))
        return params, grads, other, other_grads

    @kit_property(10)
    @given(draw())
    def prop(example):
        pa, ga, pb, gb = example
        alone_a, _ = run_steps(opt, pa, ga)
        alone_b, _ = run_steps(opt, pb, gb)
        sa, sb = opt.init(pa.clone()), opt.init(pb.clone())
        for t, (a_grad, b_grad) in enumerate(zip(ga, gb), 1):
            ua, sa = opt.update(a_grad.clone(), sa, pa.clone())
            ub, sb = opt.update(b_grad.clone(), sb, pb.clone())
            for run, got, want in (("first", ua, alone_a[t - 1]), ("second", ub, alone_b[t - 1])):
                if not close(got, want):
                    fail(name, f"step {t}: with two runs interleaved on one optimizer, the {run} run's updates are "
                               f"{tensor_text(got)} but run alone they are {tensor_text(want)}; keep all state in "
                               f"the state dict, none in a closure or a cache", params=pa, grads=ga,
                         other_params=pb, other_grads=gb)
            pa, pb = pa + ua, pb + ub

    prop()


@kit_check
def check_updates_finite(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """Finite gradients of any magnitude (zeros, subnormals, below 1e-30, above
    1e30, mixed signs) give finite updates at every step."""
    name = "check_updates_finite"

    @kit_property(30)
    @given(inputs(dtypes, steps=(1, 3)))
    def prop(example):
        params, grads = example
        updates, _ = run_steps(opt, params, grads)
        for t, u in enumerate(updates, 1):
            bad = ~torch.isfinite(u)
            if bad.any():
                idx = tuple(int(i) for i in bad.nonzero()[0])
                fail(name, f"step {t}: update {u[idx].item()!r} at index {list(idx)} is not finite "
                           f"(gradient there: {grads[t - 1][idx].item()!r})", params=params, grads=grads[:t])

    prop()


@kit_check
def check_deterministic(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """The same params and gradients give bitwise the same updates and states
    when run twice from a fresh ``init``."""
    name = "check_deterministic"

    @kit_property(20)
    @given(inputs(dtypes, steps=(1, 3)))
    def prop(example):
        params, grads = example
        u1, s1 = run_steps(opt, params, grads)
        u2, s2 = run_steps(opt, params, grads)
        for t, (a, b) in enumerate(zip(u1, u2), 1):
            if not identical(a, b):
                fail(name, f"step {t}: two runs on the same inputs gave different updates "
                           f"{tensor_text(a)} and {tensor_text(b)}", params=params, grads=grads[:t])
        for t, (a, b) in enumerate(zip(s1, s2)):
            for k in a:
                if k not in b or not identical(a[k], b[k]):
                    fail(name, f"{'init' if t == 0 else f'step {t}'}: two runs on the same inputs gave "
                               f"different state {k!r}", params=params, grads=grads[:t])

    prop()


@applies_when(lambda opt: opt.coordinatewise)
@kit_check
def check_permutation_equivariant(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """An optimizer declared ``coordinatewise=True`` commutes with permuting
    coordinates: permuted params and gradients give the permuted updates."""
    name = "check_permutation_equivariant"

    @st.composite
    def draw(draw_):
        params, grads = draw_(inputs(dtypes, min_dim=2, steps=(1, 3)))
        perm = draw_(st.permutations(range(params.shape[-1])).filter(lambda p: p != sorted(p)))
        return params, grads, torch.tensor(perm)

    @kit_property(20)
    @given(draw())
    def prop(example):
        params, grads, perm = example
        plain, _ = run_steps(opt, params, grads)
        permuted, _ = run_steps(opt, params[:, perm], [g[:, perm] for g in grads])
        for t, (a, b) in enumerate(zip(plain, permuted), 1):
            if not close(a[:, perm], b):
                fail(name, f"declared coordinatewise, but at step {t} permuting the coordinates by {perm.tolist()} "
                           f"gave updates {tensor_text(b)} instead of the permuted {tensor_text(a[:, perm])}",
                     params=params, grads=grads[:t])

    prop()


@applies_when(lambda opt: opt.coordinatewise)
@kit_check
def check_coordinates_independent(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """An optimizer declared ``coordinatewise=True`` keeps coordinates apart:
    changing the gradients of one coordinate leaves every other coordinate's
    updates unchanged (this catches symmetric mixing, such as adding the mean
    gradient, that permutations cannot)."""
    name = "check_coordinates_independent"

    @st.composite
    def draw(draw_):
        params, grads = draw_(inputs(dtypes, min_dim=2, steps=(1, 3)))
        s, d = params.shape
        j = draw_(st.integers(0, d - 1))
        other = draw_(lst.gradient_sequences((s, 1), params.dtype, len(grads)))
        return params, grads, j, other

    @kit_property(20)
    @given(draw())
    def prop(example):
        params, grads, j, other = example
        changed = [torch.cat([g[:, :j], o, g[:, j + 1:]], dim=1) for g, o in zip(grads, other)]
        keep = [i for i in range(params.shape[1]) if i != j]
        a_run, _ = run_steps(opt, params, grads)
        b_run, _ = run_steps(opt, params, changed)
        for t, (a, b) in enumerate(zip(a_run, b_run), 1):
            if not close(a[:, keep], b[:, keep]):
                fail(name, f"declared coordinatewise, but changing only coordinate {j}'s gradients changed the "
                           f"other coordinates' updates at step {t}: {tensor_text(a[:, keep])} -> "
                           f"{tensor_text(b[:, keep])}", params=params, grads=grads[:t], changed_grads=changed[:t])

    prop()


@kit_check
def check_batched_equals_rows(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """Running S optimizees batched as ``(S, D)`` gives, row for row, what running
    each one alone as ``(1, D)`` gives."""
    name = "check_batched_equals_rows"

    @kit_property(20)
    @given(inputs(dtypes, min_seeds=2, max_seeds=4, steps=(1, 3)))
    def prop(example):
        params, grads = example
        batched, _ = run_steps(opt, params, grads)
        for i in range(params.shape[0]):
            alone, _ = run_steps(opt, params[i:i + 1], [g[i:i + 1] for g in grads])
            for t, (a, b) in enumerate(zip(batched, alone), 1):
                if not close(a[i:i + 1], b):
                    fail(name, f"step {t}: row {i} of the batched updates is {tensor_text(a[i])} but running "
                               f"that row alone gives {tensor_text(b[0])}", params=params, grads=grads[:t])

    prop()


@applies_when(lambda opt: opt.zero_grad == "no-op")
@kit_check
def check_zero_grad(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """An optimizer declared ``zero_grad="no-op"`` returns exactly zero updates for
    zero gradients from a fresh state."""
    name = "check_zero_grad"

    @kit_property(20)
    @given(inputs(dtypes, steps=(1, 3), magnitudes=("zero",)))
    def prop(example):
        params, grads = example
        updates, _ = run_steps(opt, params, grads)
        for t, u in enumerate(updates, 1):
            if (u != 0).any():
                fail(name, f"declared zero_grad='no-op', but zero gradients gave the update {tensor_text(u)} "
                           f"at step {t}; declare zero_grad='any' if that is intended",
                     params=params, steps=len(grads))

    prop()


@kit_check
def check_descent_on_quadratic(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """On a well-conditioned quadratic ``0.5 * sum(a * (theta - c)**2)`` with
    curvatures ``a`` in [0.5, 1], the optimizer as given (default
    hyperparameters) lowers the loss from ``theta = 0`` within 50 steps."""
    name = "check_descent_on_quadratic"
    dtype = dtypes[-1]

    @st.composite
    def draw(draw_):
        dim = draw_(st.integers(1, 8))
        a = draw_(st.lists(st.floats(0.5, 1.0), min_size=dim, max_size=dim))
        c = draw_(st.lists(st.tuples(st.booleans(), st.floats(0.5, 2.0)).map(lambda t: -t[1] if t[0] else t[1]),
                           min_size=dim, max_size=dim))
        return torch.tensor([a], dtype=dtype), torch.tensor([c], dtype=dtype)

    @kit_property(10)
    @given(draw())
    def prop(example):
        a, c = example
        params = torch.zeros_like(c)
        state = opt.init(params)
        first = last = float((0.5 * a * (params - c) ** 2).sum())
        for _ in range(DESCENT_STEPS):
            updates, state = opt.update(a * (params - c), state, params)
            params = params + updates
            last = float((0.5 * a * (params - c) ** 2).sum())
        if not last < first:
            fail(name, f"with its default hyperparameters the loss went from {first:.6g} to {last:.6g} in "
                       f"{DESCENT_STEPS} steps instead of decreasing", curvatures=a, centre=c)

    prop()


OPTIMIZER_CHECKS: tuple[Callable, ...] = (
    check_state_structure, check_inputs_unchanged, check_interleaved_runs, check_updates_finite,
    check_deterministic, check_permutation_equivariant, check_coordinates_independent, check_batched_equals_rows,
    check_zero_grad, check_dtypes_agree, check_state_on_device, check_descent_on_quadratic, check_uses_groups,
)

