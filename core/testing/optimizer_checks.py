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
from .properties import (DEFAULT_DTYPES, applies_when, close, fail, identical, inputs, kit_check, kit_property,
                         run_steps, state_spec, tensor_text)

__all__ = [
    "check_state_structure", "check_inputs_unchanged", "check_updates_finite", "check_deterministic",
    "check_permutation_equivariant", "check_coordinates_independent", "check_batched_equals_rows", "check_zero_grad",
    "check_descent_on_quadratic", "OPTIMIZER_CHECKS", "DESCENT_STEPS",
]

#: Steps of the quadratic on which ``check_descent_on_quadratic`` expects progress.
DESCENT_STEPS = 50


@kit_check
def check_state_structure(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """``init`` returns a flat ``dict[str, Tensor]`` whose keys, shapes, dtypes and
    devices stay the same over several steps, and every update has the shape,
    dtype and device of ``params``."""
    name = "check_state_structure"

    @kit_property(20)
    @given(inputs(dtypes, steps=(4, 5)))
    def prop(example):
        params, grads = example
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
                     grads=grads)
            u, state = out
            if not isinstance(u, Tensor) or (u.shape, u.dtype, u.device) != (params.shape, params.dtype, params.device):
                got = (tuple(u.shape), u.dtype, u.device) if isinstance(u, Tensor) else type(u).__name__
                fail(name, f"step {t}: updates are {got}, expected the shape/dtype/device of params "
                           f"{(tuple(params.shape), params.dtype, params.device)}", params=params, grads=grads)
            spec = state_spec(state) if isinstance(state, dict) else {}
            if spec != spec0:
                changes = [f"{k!r}: {spec0.get(k, 'absent')} -> {spec.get(k, 'absent')}"
                           for k in sorted(set(spec0) | set(spec)) if spec0.get(k) != spec.get(k)]
                fail(name, f"after step {t} the state's structure changed ({'; '.join(changes)})",
                     params=params, grads=grads[:t])
            params = params + u

    prop()


@kit_check
def check_inputs_unchanged(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """Neither ``init`` nor ``update`` writes into its inputs: params, grads, the
    state dict and its tensors are the same before and after every call."""
    name = "check_inputs_unchanged"

    def snapshot(t: Tensor):
        return t.clone(), t._version

    def changed(t: Tensor, snap) -> str | None:
        if not identical(t, snap[0]):
            return "its values changed"
        if t._version != snap[1]:
            return "it was written in place"
        return None

    @kit_property(20)
    @given(inputs(dtypes, steps=(1, 3)))
    def prop(example):
        params, grads = example
        p0 = snapshot(params)
        state = opt.init(params)
        if (why := changed(params, p0)) is not None:
            fail(name, f"init() changed its input params in place ({why})", params=p0[0])
        for t, g in enumerate(grads, 1):
            p_snap, g_snap = snapshot(params), snapshot(g)
            s_items = dict(state)
            s_snaps = {k: snapshot(v) for k, v in state.items()}
            u, new_state = opt.update(g, state, params)
            for label, tensor, snap in (("grads", g, g_snap), ("params", params, p_snap)):
                if (why := changed(tensor, snap)) is not None:
                    fail(name, f"step {t}: update() changed its input {label} in place ({why})",
                         params=p_snap[0], grads=[*grads[:t - 1], g_snap[0]])
            if set(state) != set(s_items) or any(state[k] is not s_items[k] for k in s_items):
                fail(name, f"step {t}: update() modified the input state dict (keys {sorted(s_items)} -> "
                           f"{sorted(state)}); return a new dict", params=params, grads=grads[:t])
            for k, snap in s_snaps.items():
                if (why := changed(state[k], snap)) is not None:
                    fail(name, f"step {t}: update() changed the input state tensor {k!r} in place ({why})",
                         params=params, grads=grads[:t])
            state = new_state
            params = params + u

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
    check_state_structure, check_inputs_unchanged, check_updates_finite, check_deterministic,
    check_permutation_equivariant, check_coordinates_independent, check_batched_equals_rows, check_zero_grad,
    check_descent_on_quadratic, check_uses_groups,
)

