"""Conformance checks for learned optimizers: the optimizer checks run on
``opt_fn()``, meta-gradients, the capabilities it declares (``replay``, groups,
second derivatives) and the round trip of its state through a checkpoint.

Capabilities are read as data (:class:`~l2obench.learned.Capabilities`), and
each is checked to tell the truth.  The small problems a learned optimizer is
run on give one coordinate to each group named in ``capabilities.groups``, so
per-group networks are reached too.
"""
from __future__ import annotations

import copy
import io
import json
from typing import Callable

import torch
from hypothesis import given
from hypothesis import strategies as st

from ..errors import L2OError
from ..learned import Capabilities, LearnedOptimizer
from . import strategies as lst
from .optimizer_checks import OPTIMIZER_CHECKS, check_descent_on_quadratic, check_dtypes_agree, check_state_on_device
from .group_checks import check_uses_groups
from .properties import applies_when, close, fail, identical, kit_check, kit_property, run_on_built, run_steps

__all__ = ["check_capabilities", "check_meta_gradients", "check_replay", "check_second_derivatives",
           "check_state_round_trip", "LEARNED_OPTIMIZER_CHECKS"]


def meta_dtypes(lopt: LearnedOptimizer) -> tuple[torch.dtype, ...]:
    """The dtype a learned optimizer computes in: that of its meta-parameters."""
    found = {p.dtype for p in lopt.parameters() if p.is_floating_point()}
    return tuple(sorted(found, key=str)) or (torch.float32,)


def declared_groups(lopt: LearnedOptimizer) -> dict[str, slice] | None:
    """One coordinate for each of ``capabilities.groups``, in order (``None`` without groups)."""
    return {n: slice(k, k + 1) for k, n in enumerate(lopt.capabilities.groups)} or None


def _meta_parameters(lopt: LearnedOptimizer) -> list[tuple[str, torch.Tensor]]:
    return [(n, p) for n, p in lopt.named_parameters() if p.requires_grad]


def _quadratic(draw_, dtype: torch.dtype, min_dim: int, max_dim: int):
    """Curvatures in [0.5, 1] and a centre at least 0.5 from 0 in every coordinate."""
    s, d = draw_(lst.shapes(1, 2, min_dim, max_dim))
    a = draw_(lst.parameters((s, d), dtype, max_abs=0.5)).abs() + 0.5
    c = draw_(lst.parameters((s, d), dtype, max_abs=1.5))
    return a, c + 0.5 * torch.where(c < 0, -1.0, 1.0).to(dtype)


@kit_check
def check_capabilities(lopt: LearnedOptimizer) -> None:
    """``capabilities`` is a :class:`~l2obench.Capabilities` whose ``groups`` are
    names, and its ``replay`` tells the truth: ``opt_fn(groups)`` carries ``replay``
    if and only if ``capabilities.replay`` says so."""
    name = "check_capabilities"
    caps = lopt.capabilities
    if not isinstance(caps, Capabilities):
        raise AssertionError(f"{name}: capabilities must be an l2obench Capabilities, got {type(caps).__name__}")
    if not (isinstance(caps.groups, tuple) and all(isinstance(g, str) for g in caps.groups)):
        raise AssertionError(f"{name}: capabilities.groups must be a tuple of group names, got {caps.groups!r}")
    groups = declared_groups(lopt)
    has_replay = lopt.opt_fn(groups).replay is not None
    if has_replay and not caps.replay:
        raise AssertionError(f"{name}: opt_fn({groups}) carries replay, but capabilities.replay is False; "
                             f"declare Capabilities(replay=True)")
    if caps.replay and not has_replay:
        raise AssertionError(f"{name}: capabilities.replay is True, but opt_fn({groups}) has no replay; "
                             f"declare Capabilities(replay=False) or give the Optimizer a replay")


@kit_check
def check_meta_gradients(lopt: LearnedOptimizer) -> None:
    """Unrolling ``lopt.opt_fn(groups)`` for a few steps on a small quadratic and
    backpropagating the final loss gives a finite, non-zero gradient for every
    meta-parameter (gradients of the optimizee are fed in as constants, the
    paper's default, Sec. 2.1).  The unroll starts at 0, at least 0.5 from the
    minimum in every coordinate.  ``groups`` gives one coordinate to each of
    ``capabilities.groups``, so per-group networks are reached too."""
    name = "check_meta_gradients"
    dtype = meta_dtypes(lopt)[0]
    meta = _meta_parameters(lopt)
    if not meta:
        raise AssertionError(f"{name}: the learned optimizer has no trainable meta-parameters")
    groups = declared_groups(lopt)
    count = len(groups or ())

    @st.composite
    def draw(draw_):
        return _quadratic(draw_, dtype, count + 2, count + 5)

    @kit_property(3)
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
                fail(name, "the unrolled loss does not depend on the meta-parameters", curvatures=a, centre=c)
            grads_meta = torch.autograd.grad(loss, [p for _, p in meta], allow_unused=True)
        missing = [n for (n, _), g in zip(meta, grads_meta) if g is None or not bool((g != 0).any())]
        if missing:
            listed = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            fail(name, f"no meta-gradient reaches {listed} after a 5-step unroll with groups "
                       f"{groups} (a learned optimizer with per-group meta-parameters names their groups in "
                       f"capabilities.groups)", curvatures=a, centre=c)
        bad = [n for (n, _), g in zip(meta, grads_meta) if not bool(torch.isfinite(g).all())]
        if bad:
            fail(name, f"non-finite meta-gradient for {', '.join(bad)} after a 5-step unroll", curvatures=a, centre=c)

    prop()


@applies_when(lambda lopt: lopt.capabilities.replay)
@kit_check
def check_replay(lopt: LearnedOptimizer) -> None:
    """For a learned optimizer declaring ``capabilities.replay``: after 4 steps on a
    small quadratic run without a graph, ``replay(grads, state, updates)`` returns the
    updates made, and the gradient of ``sum_t <v_t, updates_t>`` (random ``v``) with
    respect to every meta-parameter through it equals that through the same steps
    run with a graph, the gradients held constant."""
    name = "check_replay"
    dtype = meta_dtypes(lopt)[0]
    meta = _meta_parameters(lopt)
    groups = declared_groups(lopt)
    if lopt.opt_fn(groups).replay is None:
        raise AssertionError(f"{name}: capabilities.replay is True, but opt_fn({groups}) has no replay")

    @st.composite
    def draw(draw_):
        a, c = _quadratic(draw_, dtype, max(1, len(groups or ())), 20)
        return a, c, draw_(lst.parameters((4, *c.shape), dtype, max_abs=1.0))

    @kit_property(5)
    @given(draw())
    def prop(example):
        a, c, v = example
        opt = lopt.opt_fn(groups)
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
            if not close(replayed.detach(), torch.stack(updates)):
                fail(name, "replay did not return the updates the steps made", curvatures=a, centre=c)
            got = torch.autograd.grad((v * replayed).sum(), [p for _, p in meta], allow_unused=True)
            state, total = start, 0
            for g, w in zip(grads, v):
                update, state = opt.update(g, state, None)
                total = total + (w * update).sum()
            want = torch.autograd.grad(total, [p for _, p in meta], allow_unused=True)
        for (n, _), x, y in zip(meta, got, want):
            if (x is None) != (y is None) or (x is not None and not close(x, y)):
                gap = f"max difference {(x - y).abs().max().item():.3g}" if x is not None and y is not None else (
                    "one of them is missing")
                fail(name, f"the meta-gradient of {n} through replay differs from the one through the steps ({gap})",
                     curvatures=a, centre=c)

    prop()


@applies_when(lambda lopt: lopt.capabilities.second_derivatives)
@kit_check
def check_second_derivatives(lopt: LearnedOptimizer) -> None:
    """A learned optimizer declaring ``capabilities.second_derivatives`` (the default)
    can be meta-trained with ``second_order = true``: on a small quadratic, a
    meta-gradient through two steps whose gradients are taken with
    ``create_graph=True`` raises nothing."""
    name = "check_second_derivatives"
    dtype = meta_dtypes(lopt)[0]
    groups = declared_groups(lopt)
    d = len(groups or ()) + 3
    a = torch.linspace(0.5, 1.0, d, dtype=dtype)
    c = torch.linspace(-1.5, 1.5, d, dtype=dtype) + 0.5 * torch.tensor([(-1.0) ** k for k in range(d)], dtype=dtype)
    meta = [p for _, p in _meta_parameters(lopt)]
    try:
        with torch.enable_grad():
            opt = lopt.opt_fn(groups)
            params = torch.zeros(2, d, dtype=dtype, requires_grad=True)
            state = opt.init(params)
            for _ in range(2):
                (grads,) = torch.autograd.grad((0.5 * a * (params - c) ** 2).sum(), params, create_graph=True)
                updates, state = opt.update(grads, state, params)
                params = params + updates
            torch.autograd.grad((0.5 * a * (params - c) ** 2).sum(), meta, allow_unused=True)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200]
        raise AssertionError(f"{name}: capabilities.second_derivatives is True, but a second-order meta-gradient "
                             f"through two steps raised {type(exc).__name__}: {detail}; declare "
                             f"Capabilities(second_derivatives=False)") from None


@kit_check
def check_state_round_trip(lopt: LearnedOptimizer, factory: Callable[..., LearnedOptimizer] | None = None) -> None:
    """``hyperparameters`` are plain JSON values, and a fresh instance built from
    them (by ``factory`` if given, else by the registry from ``lopt.name``) loads
    ``state_dict()`` saved with ``torch.save`` and read back with
    ``torch.load(weights_only=True)``, then gives bitwise the same updates."""
    name = "check_state_round_trip"
    hp = lopt.hyperparameters
    if not isinstance(hp, dict):
        raise AssertionError(f"{name}: lopt.hyperparameters must be the dict of keyword arguments its factory "
                             f"was called with, got {type(hp).__name__}")
    try:
        json.dumps(hp)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{name}: hyperparameters {hp!r} are not plain JSON values ({exc}), so a "
                             f"checkpoint cannot record them") from None
    if factory is not None:
        rebuild, how = factory, "factory"
    elif lopt.name is not None:
        from ..registry import get_registry

        rebuild, how = (lambda **kw: get_registry().learned(lopt.name, **kw)), f"registry entry {lopt.name!r}"
    else:
        raise AssertionError(f"{name}: the learned optimizer has no name (it was not built by the registry) and no "
                             f"factory was given, so the kit cannot rebuild it; build it with "
                             f"get_registry().learned(name, ...) or pass check_learned_optimizer(lopt, factory=...)")
    buffer = io.BytesIO()
    torch.save(lopt.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    dtype = meta_dtypes(lopt)[0]
    gen = torch.Generator().manual_seed(0)
    params = torch.randn(2, 5, generator=gen, dtype=dtype)
    grads = [torch.randn(2, 5, generator=gen, dtype=dtype) * 10.0**k for k in (-3, 0, 2)]
    with torch.no_grad():
        want, _ = run_steps(lopt.opt_fn(), params, grads)

    cannot = f"{name}: could not rebuild the learned optimizer from hyperparameters {hp!r} and its state_dict"
    try:
        fresh = rebuild(**hp)
    except (TypeError, ValueError, L2OError) as exc:
        raise AssertionError(f"{cannot}: {how}: {type(exc).__name__}: {exc}") from None
    if type(fresh) is not type(lopt):
        raise AssertionError(f"{cannot}: {how} built a {type(fresh).__name__}, not a {type(lopt).__name__}")
    try:
        fresh.load_state_dict(saved)
    except (RuntimeError, KeyError) as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise AssertionError(f"{cannot}: {how}: load_state_dict failed: {detail[:300]}") from None
    with torch.no_grad():
        got, _ = run_steps(fresh.opt_fn(), params, grads)
    if not all(identical(a, b) for a, b in zip(want, got)):
        raise AssertionError(f"{cannot}: {how}: loaded, but gives different updates")


def _on_device(lopt: LearnedOptimizer) -> Callable[[str], object]:
    """``opt_fn()`` of a copy of ``lopt`` whose meta-parameters are on ``device``."""
    return lambda device: copy.deepcopy(lopt).to(device).opt_fn()


def _on_opt_fn(check: Callable) -> Callable:
    extra = (lambda lopt: {"on_device": _on_device(lopt)}) if check is check_state_on_device else (lambda lopt: {})
    return run_on_built(check, lambda lopt: (lopt.opt_fn(), {"dtypes": meta_dtypes(lopt), **extra(lopt)}),
                        "``lopt.opt_fn()``, in the meta-parameters' dtype")


#: Optimizer checks a learned optimizer skips: descent (untrained meta-parameters promise
#: none), groups (declared as capabilities instead) and float32 against float64 (it
#: computes in its meta-parameters' dtype).
_NOT_ON_OPT_FN = (check_descent_on_quadratic, check_uses_groups, check_dtypes_agree)

LEARNED_OPTIMIZER_CHECKS: tuple[Callable, ...] = (
    *(_on_opt_fn(c) for c in OPTIMIZER_CHECKS if c not in _NOT_ON_OPT_FN),
    check_capabilities, check_meta_gradients, check_replay, check_second_derivatives, check_state_round_trip,
)
