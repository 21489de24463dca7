"""Conformance checks for optimizers, learned optimizers and task families.

Each check is a small named function ``check_xxx(obj)`` that raises an
``AssertionError`` saying which property failed and on which (shrunk) example;
most are hypothesis properties run on a few derandomized examples, so a check
is fast and gives the same verdict on every machine.  Which checks apply is
read from the object's capability flags (``Optimizer.coordinatewise``,
``Optimizer.zero_grad``), never from its name.

``check_optimizer``, ``check_learned_optimizer`` and ``check_task_family`` run
every applicable check and raise one error listing the failures;
``parametrize_with_checks`` turns the same checks into pytest test cases, as
scikit-learn's ``parametrize_with_checks`` does.
"""
from __future__ import annotations

import contextlib
import functools
import io
import json
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import Tensor

from ..errors import ConfigError, L2OError
from ..learned import LearnedOptimizer
from ..optimizer import Optimizer
from ..task import SPLITS, TaskFamily
from . import strategies as lst

__all__ = [
    "check_state_structure", "check_inputs_unchanged", "check_updates_finite", "check_deterministic",
    "check_permutation_equivariant", "check_coordinates_independent", "check_batched_equals_rows", "check_zero_grad",
    "check_descent_on_quadratic", "check_meta_gradients", "check_replay", "check_state_round_trip",
    "check_task_finite_at_init", "check_task_batching", "check_task_deterministic", "check_config_errors",
    "OPTIMIZER_CHECKS", "LEARNED_OPTIMIZER_CHECKS", "TASK_FAMILY_CHECKS", "CHECK_NAMES",
    "checks_for", "check_optimizer", "check_learned_optimizer", "check_task_family", "check_object",
    "parametrize_with_checks", "registered_objects",
]

DEFAULT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)
#: Steps of the quadratic on which ``check_descent_on_quadratic`` expects progress.
DESCENT_STEPS = 50


def _property(max_examples: int = 20):
    """``@given`` settings of the kit: few examples, no deadline, derandomized (the
    same examples on every run, so CI verdicts are stable), no example database,
    and no explain phase (it reruns a failure hundreds of times to annotate it)."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=False,
                    phases=(Phase.explicit, Phase.generate, Phase.shrink))


def _kit_check(check: Callable) -> Callable:
    """Run ``check`` on one CPU thread: its tensors are tiny, and on a loaded
    machine torch's thread pool costs a hundred times the arithmetic."""

    @functools.wraps(check)
    def run(obj, *args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return check(obj, *args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return run


def _applies_when(predicate: Callable[[Any], bool]):
    """Mark a check as applying only to objects for which ``predicate`` holds."""

    def mark(check):
        check.applies = predicate
        return check

    return mark


def _describe(**values: Any) -> str:
    parts = []
    for name, v in values.items():
        if isinstance(v, Tensor):
            parts.append(f"{name}={_tensor_text(v)}")
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, Tensor) for x in v):
            parts.append(f"{name}=[{', '.join(_tensor_text(x) for x in v)}]")
        else:
            parts.append(f"{name}={v!r}")
    return "; ".join(parts)


def _tensor_text(t: Tensor) -> str:
    return f"tensor({t.detach().cpu().tolist()}, dtype={str(t.dtype).removeprefix('torch.')})"


def _fail(check: str, what: str, **example: Any) -> None:
    raise AssertionError(f"{check}: {what} (shrunk example: {_describe(**example)})")


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-10


def _close(a: Tensor, b: Tensor) -> bool:
    """Equal up to rounding: relative to the largest magnitude, NaN matching NaN."""
    if a.shape != b.shape:
        return False
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return False
    a, b = torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0)
    if not torch.equal(torch.isinf(a), torch.isinf(b)) or not torch.equal(a[torch.isinf(a)], b[torch.isinf(b)]):
        return False
    tol = max(_tolerance(a.dtype), _tolerance(b.dtype))
    a, b = a[torch.isfinite(a)].double(), b[torch.isfinite(b)].double()
    if a.numel() == 0:
        return True
    scale = max(a.abs().max().item(), b.abs().max().item(), torch.finfo(torch.float64).tiny)
    return bool(((a - b).abs() <= tol * scale).all())


def _identical(a: Tensor, b: Tensor) -> bool:
    """Bitwise the same values (NaN equal to NaN), shape and dtype."""
    return (a.shape == b.shape and a.dtype == b.dtype
            and torch.equal(torch.isnan(a), torch.isnan(b))
            and torch.equal(torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0),
                            torch.nan_to_num(b, nan=0.0, posinf=0.0, neginf=0.0))
            and torch.equal(torch.isposinf(a), torch.isposinf(b)) and torch.equal(torch.isneginf(a), torch.isneginf(b)))


def _run(opt: Optimizer, params: Tensor, grads: Sequence[Tensor]) -> tuple[list[Tensor], list[dict]]:
    """Step ``opt`` through ``grads`` from ``init(params)``, adding each update to params.
    Inputs are passed as copies, so an optimizer that writes into them fails
    ``check_inputs_unchanged`` alone, not every check."""
    state = opt.init(params.clone())
    updates, states = [], [state]
    for g in grads:
        u, state = opt.update(g.clone(), state, params.clone())
        updates.append(u)
        states.append(state)
        params = params + u
    return updates, states


def _inputs(dtypes: Sequence[torch.dtype], min_seeds=1, max_seeds=3, min_dim=1, max_dim=6, steps=(1, 3),
            magnitudes=lst.MAGNITUDES):
    """A strategy of (params, [grads per step]) of one drawn dtype and shape."""

    @st.composite
    def draw(draw_):
        dtype = draw_(st.sampled_from(list(dtypes)))
        shape = draw_(lst.shapes(min_seeds, max_seeds, min_dim, max_dim))
        params = draw_(lst.parameters(shape, dtype))
        grads = draw_(lst.gradient_sequences(shape, dtype, st.integers(*steps), magnitudes))
        return params, grads

    return draw()


def _spec(state: Mapping[str, Tensor]) -> dict[str, tuple]:
    return {k: (tuple(v.shape), v.dtype, v.device) if isinstance(v, Tensor) else (type(v).__name__,)
            for k, v in state.items()}


# -- optimizer checks -------------------------------------------------------------


@_kit_check
def check_state_structure(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """``init`` returns a flat ``dict[str, Tensor]`` whose keys, shapes, dtypes and
    devices stay the same over several steps, and every update has the shape,
    dtype and device of ``params``."""
    name = "check_state_structure"

    @_property(20)
    @given(_inputs(dtypes, steps=(4, 5)))
    def prop(example):
        params, grads = example
        state = opt.init(params)
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor)
                                                  for k, v in state.items()):
            got = _spec(state) if isinstance(state, dict) else type(state).__name__
            _fail(name, f"init() must return a flat dict[str, Tensor], got {got}", params=params)
        spec0 = _spec(state)
        for t, g in enumerate(grads, 1):
            out = opt.update(g, state, params)
            if not (isinstance(out, tuple) and len(out) == 2):
                _fail(name, f"update() must return (updates, state), got {type(out).__name__}", params=params,
                      grads=grads)
            u, state = out
            if not isinstance(u, Tensor) or (u.shape, u.dtype, u.device) != (params.shape, params.dtype, params.device):
                got = (tuple(u.shape), u.dtype, u.device) if isinstance(u, Tensor) else type(u).__name__
                _fail(name, f"step {t}: updates are {got}, expected the shape/dtype/device of params "
                            f"{(tuple(params.shape), params.dtype, params.device)}", params=params, grads=grads)
            spec = _spec(state) if isinstance(state, dict) else {}
            if spec != spec0:
                changes = [f"{k!r}: {spec0.get(k, 'absent')} -> {spec.get(k, 'absent')}"
                           for k in sorted(set(spec0) | set(spec)) if spec0.get(k) != spec.get(k)]
                _fail(name, f"after step {t} the state's structure changed ({'; '.join(changes)})",
                      params=params, grads=grads[:t])
            params = params + u

    prop()


@_kit_check
def check_inputs_unchanged(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """Neither ``init`` nor ``update`` writes into its inputs: params, grads, the
    state dict and its tensors are the same before and after every call."""
    name = "check_inputs_unchanged"

    def snapshot(t: Tensor):
        return t.clone(), t._version

    def changed(t: Tensor, snap) -> str | None:
        if not _identical(t, snap[0]):
            return "its values changed"
        if t._version != snap[1]:
            return "it was written in place"
        return None

    @_property(20)
    @given(_inputs(dtypes, steps=(1, 3)))
    def prop(example):
        params, grads = example
        p0 = snapshot(params)
        state = opt.init(params)
        if (why := changed(params, p0)) is not None:
            _fail(name, f"init() changed its input params in place ({why})", params=p0[0])
        for t, g in enumerate(grads, 1):
            p_snap, g_snap = snapshot(params), snapshot(g)
            s_items = dict(state)
            s_snaps = {k: snapshot(v) for k, v in state.items()}
            u, new_state = opt.update(g, state, params)
            for label, tensor, snap in (("grads", g, g_snap), ("params", params, p_snap)):
                if (why := changed(tensor, snap)) is not None:
                    _fail(name, f"step {t}: update() changed its input {label} in place ({why})",
                          params=p_snap[0], grads=[*grads[:t - 1], g_snap[0]])
            if set(state) != set(s_items) or any(state[k] is not s_items[k] for k in s_items):
                _fail(name, f"step {t}: update() modified the input state dict (keys {sorted(s_items)} -> "
                            f"{sorted(state)}); return a new dict", params=params, grads=grads[:t])
            for k, snap in s_snaps.items():
                if (why := changed(state[k], snap)) is not None:
                    _fail(name, f"step {t}: update() changed the input state tensor {k!r} in place ({why})",
                          params=params, grads=grads[:t])
            state = new_state
            params = params + u

    prop()


@_kit_check
def check_updates_finite(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """Finite gradients of any magnitude (zeros, subnormals, below 1e-30, above
    1e30, mixed signs) give finite updates at every step."""
    name = "check_updates_finite"

    @_property(30)
    @given(_inputs(dtypes, steps=(1, 3)))
    def prop(example):
        params, grads = example
        updates, _ = _run(opt, params, grads)
        for t, u in enumerate(updates, 1):
            bad = ~torch.isfinite(u)
            if bad.any():
                idx = tuple(int(i) for i in bad.nonzero()[0])
                _fail(name, f"step {t}: update {u[idx].item()!r} at index {list(idx)} is not finite "
                            f"(gradient there: {grads[t - 1][idx].item()!r})", params=params, grads=grads[:t])

    prop()


@_kit_check
def check_deterministic(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """The same params and gradients give bitwise the same updates and states
    when run twice from a fresh ``init``."""
    name = "check_deterministic"

    @_property(20)
    @given(_inputs(dtypes, steps=(1, 3)))
    def prop(example):
        params, grads = example
        u1, s1 = _run(opt, params, grads)
        u2, s2 = _run(opt, params, grads)
        for t, (a, b) in enumerate(zip(u1, u2), 1):
            if not _identical(a, b):
                _fail(name, f"step {t}: two runs on the same inputs gave different updates "
                            f"{_tensor_text(a)} and {_tensor_text(b)}", params=params, grads=grads[:t])
        for t, (a, b) in enumerate(zip(s1, s2)):
            for k in a:
                if k not in b or not _identical(a[k], b[k]):
                    _fail(name, f"{'init' if t == 0 else f'step {t}'}: two runs on the same inputs gave "
                                f"different state {k!r}", params=params, grads=grads[:t])

    prop()


@_applies_when(lambda opt: opt.coordinatewise)
@_kit_check
def check_permutation_equivariant(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """An optimizer declared ``coordinatewise=True`` commutes with permuting
    coordinates: permuted params and gradients give the permuted updates."""
    name = "check_permutation_equivariant"

    @st.composite
    def draw(draw_):
        params, grads = draw_(_inputs(dtypes, min_dim=2, steps=(1, 3)))
        perm = draw_(st.permutations(range(params.shape[-1])).filter(lambda p: p != sorted(p)))
        return params, grads, torch.tensor(perm)

    @_property(20)
    @given(draw())
    def prop(example):
        params, grads, perm = example
        plain, _ = _run(opt, params, grads)
        permuted, _ = _run(opt, params[:, perm], [g[:, perm] for g in grads])
        for t, (a, b) in enumerate(zip(plain, permuted), 1):
            if not _close(a[:, perm], b):
                _fail(name, f"declared coordinatewise, but at step {t} permuting the coordinates by {perm.tolist()} "
                            f"gave updates {_tensor_text(b)} instead of the permuted {_tensor_text(a[:, perm])}",
                      params=params, grads=grads[:t])

    prop()


@_applies_when(lambda opt: opt.coordinatewise)
@_kit_check
def check_coordinates_independent(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """An optimizer declared ``coordinatewise=True`` keeps coordinates apart:
    changing the gradients of one coordinate leaves every other coordinate's
    updates unchanged (this catches symmetric mixing, such as adding the mean
    gradient, that permutations cannot)."""
    name = "check_coordinates_independent"

    @st.composite
    def draw(draw_):
        params, grads = draw_(_inputs(dtypes, min_dim=2, steps=(1, 3)))
        s, d = params.shape
        j = draw_(st.integers(0, d - 1))
        other = draw_(lst.gradient_sequences((s, 1), params.dtype, len(grads)))
        return params, grads, j, other

    @_property(20)
    @given(draw())
    def prop(example):
        params, grads, j, other = example
        changed = [torch.cat([g[:, :j], o, g[:, j + 1:]], dim=1) for g, o in zip(grads, other)]
        keep = [i for i in range(params.shape[1]) if i != j]
        a_run, _ = _run(opt, params, grads)
        b_run, _ = _run(opt, params, changed)
        for t, (a, b) in enumerate(zip(a_run, b_run), 1):
            if not _close(a[:, keep], b[:, keep]):
                _fail(name, f"declared coordinatewise, but changing only coordinate {j}'s gradients changed the "
                            f"other coordinates' updates at step {t}: {_tensor_text(a[:, keep])} -> "
                            f"{_tensor_text(b[:, keep])}", params=params, grads=grads[:t], changed_grads=changed[:t])

    prop()


@_kit_check
def check_batched_equals_rows(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """Running S optimizees batched as ``(S, D)`` gives, row for row, what running
    each one alone as ``(1, D)`` gives."""
    name = "check_batched_equals_rows"

    @_property(20)
    @given(_inputs(dtypes, min_seeds=2, max_seeds=4, steps=(1, 3)))
    def prop(example):
        params, grads = example
        batched, _ = _run(opt, params, grads)
        for i in range(params.shape[0]):
            alone, _ = _run(opt, params[i:i + 1], [g[i:i + 1] for g in grads])
            for t, (a, b) in enumerate(zip(batched, alone), 1):
                if not _close(a[i:i + 1], b):
                    _fail(name, f"step {t}: row {i} of the batched updates is {_tensor_text(a[i])} but running "
                                f"that row alone gives {_tensor_text(b[0])}", params=params, grads=grads[:t])

    prop()


@_applies_when(lambda opt: opt.zero_grad == "no-op")
@_kit_check
def check_zero_grad(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """An optimizer declared ``zero_grad="no-op"`` returns exactly zero updates for
    zero gradients from a fresh state."""
    name = "check_zero_grad"

    @_property(20)
    @given(_inputs(dtypes, steps=(1, 3), magnitudes=("zero",)))
    def prop(example):
        params, grads = example
        updates, _ = _run(opt, params, grads)
        for t, u in enumerate(updates, 1):
            if (u != 0).any():
                _fail(name, f"declared zero_grad='no-op', but zero gradients gave the update {_tensor_text(u)} "
                            f"at step {t}; declare zero_grad='any' if that is intended",
                      params=params, steps=len(grads))

    prop()


@_kit_check
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

    @_property(10)
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
            _fail(name, f"with its default hyperparameters the loss went from {first:.6g} to {last:.6g} in "
                        f"{DESCENT_STEPS} steps instead of decreasing", curvatures=a, centre=c)

    prop()


OPTIMIZER_CHECKS: tuple[Callable, ...] = (
    check_state_structure, check_inputs_unchanged, check_updates_finite, check_deterministic,
    check_permutation_equivariant, check_coordinates_independent, check_batched_equals_rows, check_zero_grad,
    check_descent_on_quadratic,
)


# -- learned optimizer checks -----------------------------------------------------


def _meta_dtypes(lopt: LearnedOptimizer) -> tuple[torch.dtype, ...]:
    """The dtype a learned optimizer computes in: that of its meta-parameters."""
    found = {p.dtype for p in lopt.parameters() if p.is_floating_point()}
    return tuple(sorted(found, key=str)) or (torch.float32,)


def _on_opt_fn(check: Callable) -> Callable:
    """The optimizer ``check`` run on ``lopt.opt_fn()``, in the meta-parameters' dtype."""

    @functools.wraps(check)
    def learned_check(lopt: LearnedOptimizer) -> None:
        with torch.no_grad():
            check(lopt.opt_fn(), dtypes=_meta_dtypes(lopt))

    learned_check.applies = lambda lopt: getattr(check, "applies", lambda _: True)(lopt.opt_fn())
    learned_check.__doc__ = f"{check.__doc__}\n\n    Run on ``lopt.opt_fn()``."
    return learned_check


@_kit_check
def check_meta_gradients(lopt: LearnedOptimizer) -> None:
    """Unrolling ``lopt.opt_fn(groups)`` for a few steps on a small quadratic and
    backpropagating the final loss gives a finite, non-zero gradient for every
    meta-parameter (gradients of the optimizee are fed in as constants, the
    paper's default, Sec. 2.1).  The unroll starts at 0, at least 0.5 from the
    minimum in every coordinate.  ``groups`` gives one coordinate to each of
    ``lopt.group_names``, so per-group networks are reached too."""
    name = "check_meta_gradients"
    dtype = _meta_dtypes(lopt)[0]
    meta = [(n, p) for n, p in lopt.named_parameters() if p.requires_grad]
    if not meta:
        raise AssertionError(f"{name}: the learned optimizer has no trainable meta-parameters")

    names = tuple(getattr(lopt, "group_names", ()) or ())
    groups = {n: slice(k, k + 1) for k, n in enumerate(names)} or None

    @st.composite
    def draw(draw_):
        s, d = draw_(lst.shapes(1, 2, len(names) + 2, len(names) + 5))
        a = draw_(lst.parameters((s, d), dtype, max_abs=0.5)).abs() + 0.5
        c = draw_(lst.parameters((s, d), dtype, max_abs=1.5))
        return a, c + 0.5 * torch.where(c < 0, -1.0, 1.0).to(dtype)

    @_property(3)
    @given(draw())
    def prop(example):
        a, c = example
        with torch.enable_grad():
            opt = lopt.opt_fn(groups)
            params = torch.zeros_like(c)
            state = opt.init(params)
            for _ in range(5):
                grads = (a * (params.detach() - c))
                updates, state = opt.update(grads, state, params)
                params = params + updates
            loss = (0.5 * a * (params - c) ** 2).sum()
            if not loss.requires_grad:
                _fail(name, "the unrolled loss does not depend on the meta-parameters", curvatures=a, centre=c)
            grads_meta = torch.autograd.grad(loss, [p for _, p in meta], allow_unused=True)
        missing = [n for (n, _), g in zip(meta, grads_meta) if g is None or not bool((g != 0).any())]
        if missing:
            listed = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            _fail(name, f"no meta-gradient reaches {listed} after a 5-step unroll with groups "
                        f"{groups} (a learned optimizer with per-group meta-parameters lists their names in "
                        f"group_names)", curvatures=a, centre=c)
        bad = [n for (n, _), g in zip(meta, grads_meta) if not bool(torch.isfinite(g).all())]
        if bad:
            _fail(name, f"non-finite meta-gradient for {', '.join(bad)} after a 5-step unroll", curvatures=a, centre=c)

    prop()


@_kit_check
@_applies_when(lambda lopt: lopt.opt_fn().replay is not None)
def check_replay(lopt: LearnedOptimizer) -> None:
    """For a learned optimizer whose ``opt_fn()`` has ``replay``: after 4 steps on a
    small quadratic run without a graph, ``replay(grads, state, updates)`` returns the
    updates made, and the gradient of ``sum_t <v_t, updates_t>`` (random ``v``) with
    respect to every meta-parameter through it equals that through the same steps
    run with a graph, the gradients held constant."""
    name = "check_replay"
    dtype = _meta_dtypes(lopt)[0]
    meta = [(n, p) for n, p in lopt.named_parameters() if p.requires_grad]

    @st.composite
    def draw(draw_):
        s, d = draw_(lst.shapes(1, 2, 1, 20))
        a = draw_(lst.parameters((s, d), dtype, max_abs=0.5)).abs() + 0.5
        c = draw_(lst.parameters((s, d), dtype, max_abs=1.5))
        v = draw_(lst.parameters((4, s, d), dtype, max_abs=1.0))
        return a, c, v

    @_property(5)
    @given(draw())
    def prop(example):
        a, c, v = example
        opt = lopt.opt_fn()
        params = torch.zeros_like(c)
        start = state = opt.init(params)
        grads, updates = [], []
        with torch.no_grad():
            for _ in range(v.shape[0]):
                grads.append(a * (params - c))
                update, state = opt.update(grads[-1], state, params)
                updates.append(update)
                params = params + update
        with torch.enable_grad():
            replayed = opt.replay(torch.stack(grads), start, torch.stack(updates))
            if not _close(replayed.detach(), torch.stack(updates)):
                _fail(name, "replay did not return the updates the steps made", curvatures=a, centre=c)
            got = torch.autograd.grad((v * replayed).sum(), [p for _, p in meta], allow_unused=True)
            state, total = start, 0
            for g, w in zip(grads, v):
                update, state = opt.update(g, state, None)
                total = total + (w * update).sum()
            want = torch.autograd.grad(total, [p for _, p in meta], allow_unused=True)
        for (n, _), x, y in zip(meta, got, want):
            if (x is None) != (y is None) or (x is not None and not _close(x, y)):
                gap = f"max difference {(x - y).abs().max().item():.3g}" if x is not None and y is not None else (
                    "one of them is missing")
                _fail(name, f"the meta-gradient of {n} through replay differs from the one through the steps ({gap})",
                      curvatures=a, centre=c)

    prop()


def _candidate_factories(lopt: LearnedOptimizer) -> list[tuple[str, Callable]]:
    """How the kit rebuilds ``lopt`` from its hyperparameters: every registered
    learned optimizer whose factory accepts them and gives the same class, then the class itself."""
    from ..registry import get_registry

    out = []
    try:
        for entry in get_registry().entries["learned"].values():
            out.append((f"registry entry {entry.name!r}", entry.create))
    except L2OError:
        pass
    out.append((f"{type(lopt).__name__}(**hyperparameters)", type(lopt)))
    return out


@_kit_check
def check_state_round_trip(lopt: LearnedOptimizer, factory: Callable[..., LearnedOptimizer] | None = None) -> None:
    """``hyperparameters`` are plain JSON values, and a fresh instance built from
    them (by ``factory``, else by the registry entry or class that accepts them)
    loads ``state_dict()`` saved with ``torch.save`` and read back with
    ``torch.load(weights_only=True)``, then gives bitwise the same updates."""
    name = "check_state_round_trip"
    hp = getattr(lopt, "hyperparameters", None)
    if not isinstance(hp, dict):
        raise AssertionError(f"{name}: lopt.hyperparameters must be the dict of keyword arguments its factory "
                             f"was called with, got {type(hp).__name__}")
    try:
        json.dumps(hp)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{name}: hyperparameters {hp!r} are not plain JSON values ({exc}), so a "
                             f"checkpoint cannot record them") from None
    buffer = io.BytesIO()
    torch.save(lopt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    dtype = _meta_dtypes(lopt)[0]

    gen = torch.Generator().manual_seed(0)
    params = torch.randn(2, 5, generator=gen, dtype=dtype)
    grads = [torch.randn(2, 5, generator=gen, dtype=dtype) * 10.0**k for k in (-3, 0, 2)]
    with torch.no_grad():
        want, _ = _run(lopt.opt_fn(), params, grads)

    candidates = [("factory", factory)] if factory is not None else _candidate_factories(lopt)
    tried = []
    for label, make in candidates:
        try:
            fresh = make(**hp)
        except (TypeError, ValueError, L2OError) as exc:
            if label.startswith("registry"):
                continue  # another learned optimizer, with other hyperparameters
            tried.append(f"{label}: {type(exc).__name__}: {exc}")
            continue
        if type(fresh) is not type(lopt):
            if not label.startswith("registry"):
                tried.append(f"{label}: built a {type(fresh).__name__}")
            continue
        try:
            fresh.load_state_dict(saved)
        except (RuntimeError, KeyError) as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            tried.append(f"{label}: load_state_dict failed: {detail[:300]}")
            continue
        with torch.no_grad():
            got, _ = _run(fresh.opt_fn(), params, grads)
        if all(_identical(a, b) for a, b in zip(want, got)):
            return
        tried.append(f"{label}: loaded, but gives different updates")
    raise AssertionError(f"{name}: could not rebuild the learned optimizer from hyperparameters {hp!r} and its "
                         f"state_dict; tried {'; '.join(tried)}")


LEARNED_OPTIMIZER_CHECKS: tuple[Callable, ...] = (
    *(_on_opt_fn(c) for c in OPTIMIZER_CHECKS if c is not check_descent_on_quadratic),
    check_meta_gradients, check_replay, check_state_round_trip,
)


# -- task family checks -----------------------------------------------------------


def _seed_lists(min_size: int = 1, max_size: int = 3):
    return st.lists(st.integers(0, 10_000), min_size=min_size, max_size=max_size, unique=True)


def _loss_and_grad(task, params: Tensor, batch) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        p = params.detach().clone().requires_grad_(True)
        loss = task.loss(p, batch)
        (grad,) = torch.autograd.grad(loss.sum(), p)
    return loss.detach(), grad


@_kit_check
def check_task_finite_at_init(family: TaskFamily) -> None:
    """For sampled small configs, ``init(seeds)`` is a finite ``(S, dim)`` floating
    tensor, the groups are slices inside ``dim``, and on the first minibatch of
    every split the loss ``(S,)`` and its gradient are finite."""
    name = "check_task_finite_at_init"

    @_property(5)
    @given(lst.task_configs(family), _seed_lists())
    def prop(config, seeds):
        task = family.task(**config)
        params = task.init(seeds)
        if not (isinstance(params, Tensor) and params.is_floating_point()
                and tuple(params.shape) == (len(seeds), task.dim)):
            got = (tuple(params.shape), params.dtype) if isinstance(params, Tensor) else type(params).__name__
            _fail(name, f"init() gave {got}, expected a floating tensor of shape {(len(seeds), task.dim)}",
                  config=config, seeds=seeds)
        if not torch.isfinite(params).all():
            _fail(name, "init() gave non-finite parameters", config=config, seeds=seeds)
        for group, sl in task.groups.items():
            inside = isinstance(sl, slice) and 0 <= (sl.start or 0) <= (
                task.dim if sl.stop is None else sl.stop) <= task.dim
            if not inside:
                _fail(name, f"group {group!r} is {sl!r}, not a slice inside dim={task.dim}", config=config)
        for split in SPLITS:
            loss, grad = _loss_and_grad(task, params, next(iter(task.batches(split, seeds))))
            if tuple(loss.shape) != (len(seeds),):
                _fail(name, f"loss on split {split!r} has shape {tuple(loss.shape)}, expected {(len(seeds),)}",
                      config=config, seeds=seeds)
            if not torch.isfinite(loss).all() or not torch.isfinite(grad).all():
                _fail(name, f"loss {loss.tolist()} or its gradient is not finite at init on split {split!r}",
                      config=config, seeds=seeds)

    prop()


def _first_losses(task, seeds: Sequence[int], params: Tensor, batches: int = 2) -> dict[str, list[Tensor]]:
    out = {}
    for split in SPLITS:
        stream = iter(task.batches(split, seeds))
        out[split] = [task.loss(params, next(stream)).detach() for _ in range(batches)]
    return out


@_kit_check
def check_task_batching(family: TaskFamily) -> None:
    """The batching contract: row ``i`` of ``init(seeds)`` and of the losses on
    the minibatches of every split depends on ``seeds[i]`` alone, so a batched
    call equals one call per seed."""
    name = "check_task_batching"

    @_property(4)
    @given(lst.task_configs(family), _seed_lists(2, 3))
    def prop(config, seeds):
        task = family.task(**config)
        params = task.init(seeds)
        losses = _first_losses(task, seeds, params)
        for i, seed in enumerate(seeds):
            alone = task.init([seed])
            if not _close(params[i:i + 1], alone):
                _fail(name, f"row {i} of init({seeds}) differs from init([{seed}])", config=config, seeds=seeds)
            alone_losses = _first_losses(task, [seed], alone)
            for split, per_batch in losses.items():
                for b, (batched, single) in enumerate(zip(per_batch, alone_losses[split])):
                    if not _close(batched[i:i + 1], single):
                        _fail(name, f"on split {split!r}, minibatch {b}: row {i} of the batched loss is "
                                    f"{batched[i].item()!r} but seed {seed} alone gives {single[0].item()!r}",
                              config=config, seeds=seeds)

    prop()


@_kit_check
def check_task_deterministic(family: TaskFamily) -> None:
    """Building the task twice from one config and calling it with the same
    seeds gives bitwise the same initial parameters and minibatch losses."""
    name = "check_task_deterministic"

    @_property(4)
    @given(lst.task_configs(family), _seed_lists())
    def prop(config, seeds):
        runs = []
        for _ in range(2):
            task = family.task(**config)
            params = task.init(seeds)
            runs.append((params, _first_losses(task, seeds, params)))
        (p1, l1), (p2, l2) = runs
        if not _identical(p1, p2):
            _fail(name, "init() gave different parameters for the same seeds", config=config, seeds=seeds)
        for split in l1:
            for b, (x, y) in enumerate(zip(l1[split], l2[split])):
                if not _identical(x, y):
                    _fail(name, f"on split {split!r}, minibatch {b}: the same seeds gave losses {x.tolist()} "
                                f"and {y.tolist()}", config=config, seeds=seeds)

    prop()


_WRONG_VALUES = ("not-a-number", 3.5, object())


@_kit_check
def check_config_errors(family: TaskFamily) -> None:
    """A config mistake is a :class:`~l2obench.ConfigError` with a one-line
    message naming the key: an unknown key, and a value of the wrong type for
    each field."""
    name = "check_config_errors"

    def expect_error(params: dict, key: str, what: str) -> None:
        try:
            family.validate(**params)
        except ConfigError as exc:
            msg = str(exc)
            if "\n" in msg.strip():
                raise AssertionError(f"{name}: the error for {what} spans several lines: {msg!r}") from None
            if key not in msg:
                raise AssertionError(f"{name}: the error for {what} does not name the key {key!r}: {msg!r}") from None
            return
        except Exception as exc:
            raise AssertionError(f"{name}: {what} raised {type(exc).__name__} instead of ConfigError: "
                                 f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        raise AssertionError(f"{name}: {what} was accepted; it must raise ConfigError")

    bogus = "no_such_key_l2obench"
    expect_error({bogus: 1}, bogus, f"the unknown key {bogus!r}")
    for field in family.config.model_fields:
        for wrong in _WRONG_VALUES:
            try:
                family.config(**{field: wrong})
            except Exception:
                expect_error({field: wrong}, field, f"{field}={wrong!r} (wrong type)")
                break


TASK_FAMILY_CHECKS: tuple[Callable, ...] = (
    check_task_finite_at_init, check_task_batching, check_task_deterministic, check_config_errors,
)

#: Every check name the kit knows; ``expected_failed_checks`` keys must be among them.
CHECK_NAMES: frozenset[str] = frozenset(c.__name__ for c in (*OPTIMIZER_CHECKS, *LEARNED_OPTIMIZER_CHECKS,
                                                             *TASK_FAMILY_CHECKS))


# -- running checks ---------------------------------------------------------------


def _kind(obj: Any) -> str:
    if isinstance(obj, LearnedOptimizer):
        return "learned optimizer"
    if isinstance(obj, Optimizer):
        return "optimizer"
    if isinstance(obj, TaskFamily):
        return "task family"
    raise TypeError(f"the conformance kit checks an Optimizer, a LearnedOptimizer or a TaskFamily, "
                    f"not a {type(obj).__name__}")


def checks_for(obj: Any) -> list[Callable]:
    """The checks that apply to ``obj``, chosen by its kind and capability flags."""
    table = {"optimizer": OPTIMIZER_CHECKS, "learned optimizer": LEARNED_OPTIMIZER_CHECKS,
             "task family": TASK_FAMILY_CHECKS}[_kind(obj)]
    return [c for c in table if getattr(c, "applies", lambda _: True)(obj)]


def _expected_for(obj: Any, expected_failed_checks) -> dict[str, str]:
    expected = expected_failed_checks(obj) if callable(expected_failed_checks) else expected_failed_checks
    expected = dict(expected or {})
    unknown = sorted(set(expected) - CHECK_NAMES)
    if unknown:
        raise ValueError(f"expected_failed_checks names unknown checks {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(CHECK_NAMES))}")
    return expected


def _failure_text(exc: BaseException) -> str:
    if isinstance(exc, AssertionError):
        return str(exc)
    notes = " ".join(getattr(exc, "__notes__", []))
    return f"{type(exc).__name__}: {exc}" + (f" ({notes})" if notes else "")


def check_object(obj: Any, expected_failed_checks: Mapping[str, str] | Callable | None = None,
                 checks: Iterable[Callable] | None = None) -> None:
    """Run every applicable check on ``obj`` and raise one ``AssertionError``
    listing each failure.  Checks named in ``expected_failed_checks``
    (``{check_name: reason}``, or a callable ``obj -> dict``) must fail: one
    that passes is reported too, as pytest's ``xfail(strict=True)`` would."""
    kind = _kind(obj)
    expected = _expected_for(obj, expected_failed_checks)
    problems = []
    for check in (checks if checks is not None else checks_for(obj)):
        check_name = check.__name__
        try:
            check(obj)
        except Exception as exc:
            if check_name not in expected:
                problems.append(f"- {check_name}: {_failure_text(exc)}")
        else:
            if check_name in expected:
                problems.append(f"- {check_name}: expected to fail ({expected[check_name]}) but passed")
    if problems:
        raise AssertionError(f"the {kind} failed {len(problems)} conformance check(s):\n" + "\n".join(problems))


def check_optimizer(opt: Optimizer, expected_failed_checks: Mapping[str, str] | Callable | None = None) -> None:
    """Run every optimizer check that ``opt``'s flags make applicable; raise one
    ``AssertionError`` listing the failures (see :func:`check_object`)."""
    if not isinstance(opt, Optimizer):
        raise TypeError(f"check_optimizer needs an l2obench Optimizer, not a {type(opt).__name__}")
    check_object(opt, expected_failed_checks)


def check_learned_optimizer(lopt: LearnedOptimizer, expected_failed_checks: Mapping[str, str] | Callable | None = None,
                            factory: Callable[..., LearnedOptimizer] | None = None) -> None:
    """Run the optimizer checks on ``lopt.opt_fn()`` (all but descent: untrained
    meta-parameters promise none), the meta-gradient check and the state
    round-trip, rebuilding with ``factory(**lopt.hyperparameters)`` if given."""
    if not isinstance(lopt, LearnedOptimizer):
        raise TypeError(f"check_learned_optimizer needs a LearnedOptimizer, not a {type(lopt).__name__}")
    checks = [functools.wraps(check_state_round_trip)(functools.partial(check_state_round_trip, factory=factory))
              if c is check_state_round_trip and factory is not None else c for c in checks_for(lopt)]
    check_object(lopt, expected_failed_checks, checks)


def check_task_family(family: TaskFamily, expected_failed_checks: Mapping[str, str] | Callable | None = None) -> None:
    """Run every task-family check on ``family`` (small sampled configs); raise
    one ``AssertionError`` listing the failures (see :func:`check_object`)."""
    if not isinstance(family, TaskFamily):
        raise TypeError(f"check_task_family needs a TaskFamily, not a {type(family).__name__}")
    check_object(family, expected_failed_checks)


def _default_id(obj: Any) -> str:
    if isinstance(obj, TaskFamily):
        return obj.name or obj.config.__name__
    if isinstance(obj, LearnedOptimizer):
        return type(obj).__name__
    return type(obj).__name__.lower()


def _with_ids(objects: Mapping[str, Any] | Sequence[Any]) -> list[tuple[str, Any]]:
    if isinstance(objects, Mapping):
        return [(str(k), v) for k, v in objects.items()]
    objects = list(objects)
    ids = [_default_id(o) for o in objects]
    return [(i if ids.count(i) == 1 else f"{i}{n}", o) for n, (i, o) in enumerate(zip(ids, objects))]


def parametrize_with_checks(objects: Mapping[str, Any] | Sequence[Any],
                            expected_failed_checks: Mapping[str, str] | Callable | None = None):
    """A ``pytest.mark.parametrize`` over ``(obj, check)`` for every object and
    every check that applies to it, as in scikit-learn::

        @parametrize_with_checks({"myopt": my_optimizer(), "mytask": my_family})
        def test_conformance(obj, check):
            check(obj)

    ``objects`` is a list of optimizers, learned optimizers and task families,
    or a dict ``{id: object}`` for readable test ids (``myopt-check_inputs_unchanged``).
    ``expected_failed_checks`` is ``{check_name: reason}`` for every object, or a
    callable ``obj -> {check_name: reason}``; those cases become
    ``pytest.mark.xfail(strict=True)``, so a check that starts passing is noticed.
    """
    import pytest

    params = []
    for oid, obj in _with_ids(objects):
        expected = _expected_for(obj, expected_failed_checks)
        for check in checks_for(obj):
            marks = ([pytest.mark.xfail(strict=True, reason=expected[check.__name__])]
                     if check.__name__ in expected else [])
            params.append(pytest.param(obj, check, id=f"{oid}-{check.__name__}", marks=marks))
    return pytest.mark.parametrize("obj, check", params)


def registered_objects(distribution: str | None = None, kinds: Iterable[str] = ("optimizer", "learned", "task"),
                       registry=None) -> dict[str, Any]:
    """``{name: object}`` for every optimizer (built with its default
    hyperparameters), learned optimizer (fresh, meta-parameters initialised
    under ``torch.manual_seed(0)``) and task family in the registry, or only
    those registered by ``distribution``.  A name used by two kinds gets a
    ``kind:`` prefix."""
    from ..registry import get_registry

    registry = registry or get_registry()
    entries = [e for e in registry.all_entries()
               if e.kind in set(kinds) and (distribution is None or e.distribution == distribution)]
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.name] = counts.get(e.name, 0) + 1
    out: dict[str, Any] = {}
    for e in entries:
        key = e.name if counts[e.name] == 1 else f"{e.kind}:{e.name}"
        if e.kind == "task":
            out[key] = e.obj
        else:
            with _seeded(0):
                out[key] = e.create()
    return out


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
