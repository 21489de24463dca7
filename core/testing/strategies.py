"""Hypothesis strategies for property-testing optimizers and task families.

Every tensor is drawn with :func:`hypothesis.extra.numpy.arrays` and turned into
a torch tensor with :func:`torch.from_numpy`, never from a random generator, so a
failing example shrinks and replays.  Shapes follow the optimizer interface:
``(S, D)``, S optimizees (seeds) of D coordinates each.

Arguments named ``shape`` and ``dtype`` take either a value or a strategy; left
out, they are drawn from :func:`shapes` and :func:`dtypes`.

Example::

    import torch
    from hypothesis import given
    from l2obench.testing import strategies as lst

    @given(lst.parameters(shape=(2, 5), dtype=torch.float32), lst.gradients(shape=(2, 5), dtype=torch.float32))
    def test_my_optimizer_is_finite(params, grads):
        updates, _ = my_optimizer().update(grads, my_optimizer().init(params), params)
        assert torch.isfinite(updates).all()
"""
from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from typing import Any, Callable, Literal, Mapping

import numpy as np
import torch
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

__all__ = [
    "DTYPES", "MAGNITUDES", "SCALED", "dtypes", "shapes", "parameters", "gradients", "gradient_sequences",
    "log_uniform", "hyperparameters", "task_configs",
]

#: The floating dtypes the kit draws (torch dtype -> numpy dtype).
DTYPES: dict[torch.dtype, type] = {torch.float32: np.float32, torch.float64: np.float64}

#: The gradient magnitude classes :func:`gradients` mixes by default, smallest first.
MAGNITUDES = ("zero", "subnormal", "tiny", "moderate", "huge")

#: A further class, not mixed in by default: gradients of ordinary scale (1e-6 to 1e3),
#: where float32 and float64 arithmetic agree to float32 rounding (no square overflows
#: or underflows in float32), for comparing dtypes or a reference implementation.
SCALED = "scaled"

Shape = tuple[int, int]


def dtypes() -> st.SearchStrategy[torch.dtype]:
    """``torch.float32`` or ``torch.float64``."""
    return st.sampled_from(list(DTYPES))


def shapes(min_seeds: int = 1, max_seeds: int = 3, min_dim: int = 1, max_dim: int = 6) -> st.SearchStrategy[Shape]:
    """Batched parameter shapes ``(S, D)``: S optimizees of D coordinates."""
    return st.tuples(st.integers(min_seeds, max_seeds), st.integers(min_dim, max_dim))


def _as_strategy(value: Any, default: st.SearchStrategy) -> st.SearchStrategy:
    if value is None:
        return default
    if isinstance(value, st.SearchStrategy):
        return value
    return st.just(value)


def _width(dtype: torch.dtype) -> int:
    return 32 if dtype == torch.float32 else 64


def _exactly(dtype: torch.dtype, x: float) -> float:
    """``x`` rounded to ``dtype``, so numpy stores exactly what was drawn."""
    return float(DTYPES[dtype](x))


@functools.lru_cache(maxsize=None)
def _tensor(dtype: torch.dtype, shape: Shape, elements: st.SearchStrategy[float]) -> st.SearchStrategy[torch.Tensor]:
    return arrays(DTYPES[dtype], shape, elements=elements).map(torch.from_numpy)


def log_uniform(low: float, high: float, dtype: torch.dtype = torch.float64) -> st.SearchStrategy[float]:
    """Positive floats spread evenly in log space over ``[low, high]``; shrinks towards their geometric mean."""
    lo, hi = math.log10(low), math.log10(high)
    mid = (lo + hi) / 2
    return st.floats(-1.0, 1.0).map(lambda u: _exactly(dtype, min(max(10 ** (mid + u * (hi - mid)), low), high)))


def _signed(magnitudes: st.SearchStrategy[float]) -> st.SearchStrategy[float]:
    return st.tuples(st.booleans(), magnitudes).map(lambda t: -t[1] if t[0] else t[1])


@functools.lru_cache(maxsize=None)
def _magnitude(kind: str, dtype: torch.dtype) -> st.SearchStrategy[float]:
    info = np.finfo(DTYPES[dtype])
    w = _width(dtype)
    if kind == "zero":
        return st.just(0.0)
    if kind == "subnormal":
        return st.floats(float(info.smallest_subnormal), float(info.smallest_normal), exclude_max=True,
                         width=w, allow_subnormal=True)
    if kind == "tiny":
        return log_uniform(float(info.smallest_normal), 0.99e-30, dtype)
    if kind == "moderate":
        return log_uniform(1e-30, 1e30, dtype)
    if kind == "huge":
        # Far above 1e30, up to 1e34 (float32) or 1e300 (float64): a few steps of
        # momentum-like accumulation stay below the dtype's max, but a square does not.
        # The top few decades get half the draws, so overflow near the top is seen.
        top = 1e34 if dtype == torch.float32 else 1e300
        near_top = 1e32 if dtype == torch.float32 else 1e240
        return st.one_of(log_uniform(1.01e30, near_top, dtype), log_uniform(near_top, top, dtype))
    if kind == SCALED:
        return log_uniform(1e-6, 1e3, dtype)
    raise ValueError(f"unknown gradient magnitude {kind!r}; choose from {', '.join((*MAGNITUDES, SCALED))}")


@functools.lru_cache(maxsize=None)
def _param_elements(dtype: torch.dtype, max_abs: float) -> st.SearchStrategy[float]:
    return st.floats(-max_abs, max_abs, width=_width(dtype), allow_subnormal=False)


@functools.lru_cache(maxsize=None)
def _grad_elements(dtype: torch.dtype, magnitudes: tuple[str, ...]) -> st.SearchStrategy[float]:
    return st.one_of(*[_signed(_magnitude(m, dtype)) for m in magnitudes])


# Strategies are built once at import and take their arguments when drawn, since
# building a strategy inside a draw costs more than the draw.
@st.composite
def _drawn_tensor(draw, shape, dtype, elements: Callable[[torch.dtype], st.SearchStrategy[float]]) -> torch.Tensor:
    dt = draw(_as_strategy(dtype, dtypes()))
    sh = draw(_as_strategy(shape, shapes()))
    return draw(_tensor(dt, tuple(sh), elements(dt)))


def parameters(shape: Shape | st.SearchStrategy | None = None, dtype: torch.dtype | st.SearchStrategy | None = None,
               max_abs: float = 10.0) -> st.SearchStrategy[torch.Tensor]:
    """Finite parameter tensors ``(S, D)`` with entries in ``[-max_abs, max_abs]``."""
    return _drawn_tensor(shape, dtype, functools.partial(_param_elements, max_abs=float(max_abs)))


def gradients(shape: Shape | st.SearchStrategy | None = None, dtype: torch.dtype | st.SearchStrategy | None = None,
              magnitudes: tuple[str, ...] = MAGNITUDES) -> st.SearchStrategy[torch.Tensor]:
    """Finite gradient tensors ``(S, D)`` of mixed signs whose entries mix the
    ``magnitudes`` classes: exact zeros, subnormals, tiny (below 1e-30),
    moderate (1e-30 to 1e30) and huge (above 1e30: up to 1e34 in float32, 1e300
    in float64) values; ``"scaled"`` (1e-6 to 1e3) on request."""
    for m in magnitudes:
        if m not in (*MAGNITUDES, SCALED):
            raise ValueError(f"unknown gradient magnitude {m!r}; choose from {', '.join((*MAGNITUDES, SCALED))}")
    return _drawn_tensor(shape, dtype, functools.partial(_grad_elements, magnitudes=tuple(magnitudes)))


@st.composite
def _sequence(draw, shape, dtype, steps, magnitudes) -> list[torch.Tensor]:
    n = draw(steps)
    return draw(st.lists(gradients(shape, dtype, magnitudes), min_size=n, max_size=n))


def gradient_sequences(shape: Shape, dtype: torch.dtype, steps: int | st.SearchStrategy = st.integers(1, 3),
                       magnitudes: tuple[str, ...] = MAGNITUDES) -> st.SearchStrategy[list[torch.Tensor]]:
    """Lists of gradients of one shape and dtype, one per optimizer step."""
    return _sequence(shape, dtype, _as_strategy(steps, st.integers(1, 3)), tuple(magnitudes))


# -- hyperparameters and configs --------------------------------------------------


def _literal_choices(annotation: Any) -> tuple | None:
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return None


def _float_around(default: float, spread: float, low: float = -math.inf, high: float = math.inf,
                  low_open: bool = False, high_open: bool = False) -> st.SearchStrategy[float]:
    """Floats near ``default``: log-uniform over ``spread`` decades for a positive
    default, decades of ``1 - x`` for a rate in ``[0.5, 1)``, and ``0`` or a small
    positive value for a zero default; always inside ``[low, high]``."""
    if 0.5 <= default < 1:
        gap = 1 - default
        lo_gap = max(gap / 10**spread, 1e-12)
        hi_gap = min(gap * 10**spread, 0.5)
        strat = log_uniform(lo_gap, hi_gap).map(lambda g: 1 - g)
    elif default > 0:
        strat = log_uniform(default / 10**spread, default * 10**spread)
    elif default == 0:
        strat = st.one_of(st.just(0.0), log_uniform(1e-4, 1e-1))
    else:
        return st.just(default)

    def inside(x: float) -> bool:
        return (x > low if low_open else x >= low) and (x < high if high_open else x <= high)

    return strat.filter(inside) if (low > -math.inf or high < math.inf) else strat


def hyperparameters(factory: Callable, spread: float = 1.0, **overrides: Any) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments for an optimizer or learned-optimizer ``factory``, drawn
    around the defaults of its signature.

    - a positive float: log-uniform within ``spread`` decades of the default;
      a default in ``[0.5, 1)`` (a decay rate such as ``beta2=0.999``) moves
      ``1 - x`` in log space instead, so it stays below 1;
    - a zero float: ``0.0`` or a small positive value in ``[1e-4, 0.1]``;
    - a bool: either; a ``Literal[...]`` annotation: one of its choices;
    - a positive int: ``1 .. 2 * default``;
    - anything else, or a negative default: the default itself.

    ``overrides`` pin a keyword to a value or a strategy (``lr=0.1``,
    ``hidden=st.integers(1, 4)``).  Parameters without a default are left out
    unless overridden.
    """
    hints = _type_hints(factory)
    fields: dict[str, st.SearchStrategy] = {}
    for p in inspect.signature(factory).parameters.values():
        if p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            continue
        if p.name in overrides:
            fields[p.name] = _as_strategy(overrides[p.name], st.nothing())
            continue
        if p.default is inspect.Parameter.empty:
            continue
        fields[p.name] = _around_default(p.default, hints.get(p.name), spread)
    unknown = set(overrides) - set(fields)
    if unknown:
        raise ValueError(f"hyperparameters({getattr(factory, '__name__', factory)!r}): unknown overrides "
                         f"{', '.join(sorted(unknown))}")
    return st.fixed_dictionaries(fields)


def _type_hints(obj: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj)
    except Exception:
        return {}


def _around_default(default: Any, annotation: Any, spread: float) -> st.SearchStrategy:
    choices = _literal_choices(annotation)
    if choices:
        return st.sampled_from(choices)
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(1, 2 * default) if default > 0 else st.just(default)
    if isinstance(default, float):
        return _float_around(default, spread)
    return st.just(default)


def task_configs(family, max_int: int = 4, spread: float = 1.0, **overrides: Any) -> st.SearchStrategy[dict[str, Any]]:
    """Config keyword arguments for a :class:`~l2obench.TaskFamily`, drawn from
    its pydantic config's fields, kept small so the tasks are cheap:

    - ``Literal[...]``: one of the choices; ``bool``: either;
    - ``int``: from its lower bound (``gt``/``ge``, else ``min(default, 1)``) up to
      ``max_int`` (or its upper bound if lower);
    - ``float``: near the default, as :func:`hyperparameters` draws it, inside the
      field's bounds;
    - anything else: the default.

    ``overrides`` pin a field to a value or a strategy.  Pass the result to
    ``family.validate(**config)`` or ``family.task(**config)``.
    """
    model = family.config
    fields: dict[str, st.SearchStrategy] = {}
    for name, info in model.model_fields.items():
        if name in overrides:
            fields[name] = _as_strategy(overrides[name], st.nothing())
            continue
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        strat = _field_strategy(info.annotation, default, _bounds(info.metadata), max_int, spread)
        if strat is None:
            if info.is_required():
                raise ValueError(f"task_configs({model.__name__}): cannot draw required field {name!r} "
                                 f"of type {info.annotation!r}; pass {name}=<value or strategy>")
            continue
        fields[name] = strat
    unknown = set(overrides) - set(model.model_fields)
    if unknown:
        raise ValueError(f"task_configs({model.__name__}): unknown fields {', '.join(sorted(unknown))}")
    return st.fixed_dictionaries(fields)


def _bounds(metadata: list) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in metadata:
        for key in ("gt", "ge", "lt", "le"):
            value = getattr(m, key, None)
            if value is not None:
                out[key] = value
    return out


def _field_strategy(annotation: Any, default: Any, bounds: Mapping[str, float], max_int: int,
                    spread: float) -> st.SearchStrategy | None:
    choices = _literal_choices(annotation)
    if choices:
        return st.sampled_from(choices)
    if annotation is bool:
        return st.booleans()
    if annotation is int:
        fallback = min(1 if default is None else default, 1)
        lo = bounds["ge"] if "ge" in bounds else bounds["gt"] + 1 if "gt" in bounds else fallback
        hi = bounds["le"] if "le" in bounds else bounds["lt"] - 1 if "lt" in bounds else math.inf
        hi = min(hi, max(lo, max_int))
        return st.integers(int(lo), int(hi))
    if annotation is float:
        low = bounds.get("ge", bounds.get("gt", -math.inf))
        high = bounds.get("le", bounds.get("lt", math.inf))
        if default is None:
            if math.isfinite(low) and math.isfinite(high):
                return st.floats(low, high, exclude_min="gt" in bounds, exclude_max="lt" in bounds)
            return None
        return _float_around(float(default), spread, low, high, "gt" in bounds, "lt" in bounds)
    if default is None and not _accepts_none(annotation):
        return None
    return st.just(default)


def _accepts_none(annotation: Any) -> bool:
    return annotation is None or type(None) in typing.get_args(annotation) or (
        isinstance(annotation, types.UnionType) and type(None) in annotation.__args__)
