"""Hyperparameters declared once, on the factory: its keyword arguments, their
defaults and their annotations are the whole declaration, checked the same way
for the command line, suite files and checkpoints before the factory runs.

An annotation may carry bounds (``lr: LearningRate = 0.01``, ``beta1: Beta = 0.9``);
one without an annotation takes its type from its default.  Every number must be
finite; ``True`` is not a number, ``0.5`` is not an integer.
"""
from __future__ import annotations

import functools
import inspect
import typing
from typing import Annotated, Any, Callable

import pydantic
from pydantic import Field

#: a step size: finite and positive
LearningRate = Annotated[float, Field(gt=0)]
#: a decay rate of a moving average (momentum, Adam's betas): in [0, 1)
Beta = Annotated[float, Field(ge=0, lt=1)]
#: a finite number greater than zero (epsilons, scales)
Positive = Annotated[float, Field(gt=0)]
#: a finite number at least zero (weight decay, dampening)
NonNegative = Annotated[float, Field(ge=0)]
#: a whole number at least one (sizes, layers)
PositiveInt = Annotated[int, Field(ge=1)]

_CONFIG = pydantic.ConfigDict(strict=True, allow_inf_nan=False)


def declared(factory: Callable, *, skip: tuple[str, ...] = ()) -> dict[str, inspect.Parameter]:
    """The factory's keyword parameters (those a suite or ``--param`` may set)."""
    return {p.name: p for p in inspect.signature(factory).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in skip}


@functools.lru_cache(maxsize=None)
def _adapters(factory: Callable, skip: tuple[str, ...]) -> dict[str, pydantic.TypeAdapter]:
    try:
        hints = typing.get_type_hints(factory, include_extras=True)
    except Exception:  # an annotation that does not resolve: fall back to the defaults' types
        hints = {}
    out = {}
    for name, p in declared(factory, skip=skip).items():
        annotation = hints.get(name)
        if annotation is None:
            default = p.default
            annotation = Any if default is inspect.Parameter.empty or default is None else type(default)
        out[name] = pydantic.TypeAdapter(annotation, config=_CONFIG)
    return out


def check(factory: Callable, values: dict[str, Any], where: str, *, skip: tuple[str, ...] = ()) -> None:
    """Refuse, in one line naming ``where``, a value that breaks its parameter's declaration
    (unknown keys are the caller's to judge)."""
    from .errors import ConfigError

    adapters = _adapters(factory, skip)
    for key, value in values.items():
        adapter = adapters.get(key)
        if adapter is None:
            continue
        try:
            adapter.validate_python(value)
        except pydantic.ValidationError as exc:
            raise ConfigError(f"{where}: {key}={value!r} {_reason(exc)}") from None


def _reason(exc: pydantic.ValidationError) -> str:
    err = exc.errors()[0]
    kind, msg = err["type"], err["msg"]
    if kind in ("finite_number",):
        return "must be a finite number"
    if kind in ("float_type", "int_type", "float_parsing", "int_parsing") and isinstance(err.get("input"), bool):
        return "must be a number, not true or false"
    if kind == "int_from_float" or (kind == "int_type" and isinstance(err.get("input"), float)):
        return "must be an integer"
    if kind == "bool_type":
        return "must be true or false"
    if kind in ("float_type", "int_type"):
        return "must be a number"
    return msg.replace("Input should be", "must be", 1)
