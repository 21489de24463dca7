"""What every conformance check is made of: hypothesis settings, the one-thread
guard, applicability marks, failure messages that show the shrunk example,
comparisons up to rounding, and stepping an optimizer through gradients.

A check is a small named function ``check_xxx(obj)`` that raises an
``AssertionError`` starting with its name; most are hypothesis properties run
on a few derandomized examples, so a check is fast and gives the same verdict
on every machine.
"""
from __future__ import annotations

import contextvars
import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from torch import Tensor

from ..optimizer import Optimizer
from . import strategies as lst

DEFAULT_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float64)


#: The name of the check now running, for the messages of errors raised inside it.
_RUNNING: contextvars.ContextVar[str] = contextvars.ContextVar("l2obench_running_check", default="check")


class CallError(Exception):
    """An optimizer's ``init`` or ``update`` raised: the message says which and what."""


def raised_text(exc: BaseException) -> str:
    """``IndexError: message`` on one line, at most 300 characters."""
    if isinstance(exc, CallError):
        return str(exc)
    detail = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {detail[:300]}" if detail else type(exc).__name__


def guarded(opt: Optimizer) -> Optimizer:
    """``opt`` whose ``init`` and ``update`` raise :class:`CallError` naming the call
    (``update() raised IndexError: ...``) instead of the bare exception."""
    if getattr(opt.update, "_l2obench_guarded", False):
        return opt

    def wrap(fn: Callable, what: str) -> Callable:
        @functools.wraps(fn)
        def call(*args):
            try:
                return fn(*args)
            except (AssertionError, CallError):
                raise
            except Exception as exc:
                raise CallError(f"{what}() raised {raised_text(exc)}") from exc

        call._l2obench_guarded = True
        return call

    return dataclasses.replace(opt, init=wrap(opt.init, "init"), update=wrap(opt.update, "update"))


def kit_property(max_examples: int = 20):
    """``@given`` settings of the kit: few examples, no deadline, derandomized (the
    same examples on every run, so CI verdicts are stable), no example database,
    no explain phase (it reruns a failure hundreds of times to annotate it), and one
    failure reported (not an ``ExceptionGroup``).  An error raised inside the property
    becomes the check's one-line ``AssertionError`` with the shrunk example."""
    kit_settings = settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                            suppress_health_check=list(HealthCheck), print_blob=False, report_multiple_bugs=False,
                            phases=(Phase.explicit, Phase.generate, Phase.shrink))

    def apply(test: Callable) -> Callable:
        test = kit_settings(test)
        inner = test.hypothesis.inner_test

        @functools.wraps(inner)
        def reporting(*args, **kwargs):
            try:
                return inner(*args, **kwargs)
            except AssertionError:
                raise
            except Exception as exc:
                raise AssertionError(f"{_RUNNING.get()}: {raised_text(exc)} "
                                     f"(shrunk example: {_describe(*args, **kwargs)})") from None

        test.hypothesis.inner_test = reporting
        return test

    return apply


def kit_check(check: Callable) -> Callable:
    """Run ``check`` on one CPU thread (its tensors are tiny, and on a loaded machine
    torch's thread pool costs a hundred times the arithmetic), with an optimizer's
    calls guarded, so an error inside it reads ``check_x: update() raised ...``."""

    @functools.wraps(check)
    def run(obj, *args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        token = _RUNNING.set(check.__name__)
        try:
            return check(guarded(obj) if isinstance(obj, Optimizer) else obj, *args, **kwargs)
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(f"{check.__name__}: {raised_text(exc)}") from None
        finally:
            _RUNNING.reset(token)
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
        try:
            opt, options = build(obj)
        except Exception as exc:
            raise AssertionError(f"{check.__name__}: building {what} raised {raised_text(exc)}") from None
        with torch.no_grad():
            check(opt, **options)

    built_check.applies = lambda obj: applies(check, build(obj)[0])
    built_check.__doc__ = f"{check.__doc__}\n\n    Run on {what}."
    return built_check


# -- failure messages --------------------------------------------------------------


def tensor_text(t: Tensor) -> str:
    return f"tensor({t.detach().cpu().tolist()}, dtype={str(t.dtype).removeprefix('torch.')})"


def value_text(v: Any) -> str:
    """A drawn value as text: tensors with their values and dtype, lists and tuples of them."""
    if isinstance(v, Tensor):
        return tensor_text(v)
    if isinstance(v, list):
        return f"[{', '.join(value_text(x) for x in v)}]"
    if isinstance(v, tuple):
        return f"({', '.join(value_text(x) for x in v)})"
    return repr(v)


def _describe(*positional: Any, **values: Any) -> str:
    return "; ".join([value_text(v) for v in positional] + [f"{name}={value_text(v)}" for name, v in values.items()])


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


def smoke_test(opt: Optimizer, dtype: torch.dtype = torch.float32) -> str | None:
    """What every check needs: ``init`` and one ``update`` on a small ``(2, 3)``
    problem.  ``None`` if they run, else one line saying which call raised what."""
    params = torch.linspace(-1.0, 1.0, 6, dtype=dtype).reshape(2, 3)
    grads = torch.linspace(0.5, -0.5, 6, dtype=dtype).reshape(2, 3)
    try:
        with torch.no_grad():
            state = guarded(opt).init(params.clone())
            guarded(opt).update(grads, state, params.clone())
    except (CallError, AssertionError) as exc:
        return f"{exc} on params {tensor_text(params)}, grads {tensor_text(grads)}"
    except Exception as exc:  # pragma: no cover - guarded() turns these into CallError
        return raised_text(exc)
    return None


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
