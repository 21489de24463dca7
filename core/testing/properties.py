"""What every conformance check is made of: hypothesis settings, the one-thread
guard, applicability marks, failure messages that show the shrunk example,
comparisons up to rounding, and stepping an optimizer through gradients.

A check is a small named function ``check_xxx(obj)`` that raises an
``AssertionError`` starting with its name; most are hypothesis properties run
on a few derandomized examples, so a check is fast and gives the same verdict
on every machine.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from torch import Tensor

from ..optimizer import Optimizer
from . import strategies as lst

DEFAULT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)


def kit_property(max_examples: int = 20):
    """``@given`` settings of the kit: few examples, no deadline, derandomized (the
    same examples on every run, so CI verdicts are stable), no example database,
    and no explain phase (it reruns a failure hundreds of times to annotate it)."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=False,
                    phases=(Phase.explicit, Phase.generate, Phase.shrink))


def kit_check(check: Callable) -> Callable:
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


def applies_when(predicate: Callable[[Any], bool]):
    """Mark a check as applying only to objects for which ``predicate`` holds."""

    def mark(check):
        check.applies = predicate
        return check

    return mark


def applies(check: Callable, obj: Any) -> bool:
    """Whether ``check`` applies to ``obj`` (a check without a mark applies to everything)."""
    return getattr(check, "applies", lambda _: True)(obj)


def run_on_built(check: Callable, build: Callable[[Any], tuple[Optimizer, dict]], what: str) -> Callable:
    """The optimizer ``check`` run on the :class:`Optimizer` that ``build(obj)`` gives
    (with the keyword arguments it gives), without a graph.  The check keeps its
    name, so ``expected_failed_checks`` reads the same, and applies when it applies
    to the built optimizer."""

    @functools.wraps(check)
    def built_check(obj: Any) -> None:
        opt, options = build(obj)
        with torch.no_grad():
            check(opt, **options)

    built_check.applies = lambda obj: applies(check, build(obj)[0])
    built_check.__doc__ = f"{check.__doc__}\n\n    Run on {what}."
    return built_check


# -- failure messages --------------------------------------------------------------


def tensor_text(t: Tensor) -> str:
    return f"tensor({t.detach().cpu().tolist()}, dtype={str(t.dtype).removeprefix('torch.')})"


def _describe(**values: Any) -> str:
    parts = []
    for name, v in values.items():
        if isinstance(v, Tensor):
            parts.append(f"{name}={tensor_text(v)}")
        elif isinstance(v, (list, tuple)) and v and all(isinstance(x, Tensor) for x in v):
            parts.append(f"{name}=[{', '.join(tensor_text(x) for x in v)}]")
        else:
            parts.append(f"{name}={v!r}")
    return "; ".join(parts)


def fail(check: str, what: str, **example: Any) -> None:
    """Raise the check's ``AssertionError``: what failed, then the (shrunk) example."""
    raise AssertionError(f"{check}: {what} (shrunk example: {_describe(**example)})")


# -- comparisons ---------------------------------------------------------------------


def _tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-10


def close(a: Tensor, b: Tensor) -> bool:
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


def identical(a: Tensor, b: Tensor) -> bool:
    """Bitwise the same values (NaN equal to NaN), shape and dtype."""
    return (a.shape == b.shape and a.dtype == b.dtype
            and torch.equal(torch.isnan(a), torch.isnan(b))
            and torch.equal(torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0),
                            torch.nan_to_num(b, nan=0.0, posinf=0.0, neginf=0.0))
            and torch.equal(torch.isposinf(a), torch.isposinf(b)) and torch.equal(torch.isneginf(a), torch.isneginf(b)))


# -- running an optimizer --------------------------------------------------------------


def run_steps(opt: Optimizer, params: Tensor, grads: Sequence[Tensor]) -> tuple[list[Tensor], list[dict]]:
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


def inputs(dtypes: Sequence[torch.dtype], min_seeds=1, max_seeds=3, min_dim=1, max_dim=6, steps=(1, 3),
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


def state_spec(state: Mapping[str, Tensor]) -> dict[str, tuple]:
    """Each state entry's shape, dtype and device (or its type, if not a tensor)."""
    return {k: (tuple(v.shape), v.dtype, v.device) if isinstance(v, Tensor) else (type(v).__name__,)
            for k, v in state.items()}
