"""Conformance checks for hand-designed optimizers that use the task's parameter
groups (layer-wise optimizers such as LARS or LAMB, ``Optimizer.uses_groups``).

Such an optimizer is built per task, from a factory with a keyword-only
``groups: Mapping[str, slice]``, so the kit checks the factory: it builds the
optimizer with groups of its own and sees whether the flag tells the truth.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

import torch
from hypothesis import given
from hypothesis import strategies as st

from ..optimizer import Optimizer
from ..registry import GROUPS_KEYWORD
from .properties import DEFAULT_DTYPES, applies_when, close, fail, inputs, kit_check, kit_property, run_steps

__all__ = ["check_uses_groups", "takes_groups", "default_optimizer"]


def takes_groups(factory: Callable) -> bool:
    """Whether ``factory`` has a ``groups`` parameter (the registry passes it the task's groups)."""
    return GROUPS_KEYWORD in inspect.signature(factory).parameters


def default_optimizer(factory: Callable, groups: Mapping[str, slice] | None = None) -> Optimizer:
    """What ``factory`` builds with its default hyperparameters (and ``groups``, no groups
    by default, if it takes them)."""
    opt = factory(**({GROUPS_KEYWORD: dict(groups or {})} if takes_groups(factory) else {}))
    if not isinstance(opt, Optimizer):
        raise TypeError(f"the conformance kit took {_name(factory)} for an optimizer factory, but it returned "
                        f"a {type(opt).__name__}; pass an Optimizer, a factory of one, a LearnedOptimizer "
                        f"or a TaskFamily")
    return opt


def _name(factory: Callable) -> str:
    return getattr(factory, "__name__", type(factory).__name__)


def _written(groups: Mapping[str, slice]) -> str:
    return "{" + ", ".join(f"{k}: {s.start}:{s.stop}" for k, s in groups.items()) + "}"


def _uses_groups(obj: Any) -> bool:
    if isinstance(obj, Optimizer):
        return obj.uses_groups
    return takes_groups(obj) or default_optimizer(obj).uses_groups


#: The fixed problem on which updates must depend on where the groups' boundary lies:
#: six coordinates whose halves differ in scale, in params and in gradients alike.
_PARAMS = ((0.5, -1.0, 0.75, 4.0, -8.0, 6.0),)
_GRADS = ((1.0, -2.0, 3.0, 0.01, 0.02, -0.03),)
_SPLIT = {"first": slice(0, 3), "second": slice(3, 6)}
_OTHER_GROUPS = ({"all": slice(0, 6)}, {"first": slice(0, 2), "second": slice(2, 6)})


@applies_when(_uses_groups)
@kit_check
def check_uses_groups(obj: Any) -> None:
    """An optimizer factory takes a keyword-only ``groups`` if and only if the
    Optimizer it returns says ``uses_groups=True``; built with two groups on small
    problems it gives finite updates of the shape of params for a few steps; and
    its updates depend on where the boundary between the groups lies (otherwise
    the flag is wrong).  An Optimizer instance that says ``uses_groups=True``
    fails: the kit needs its factory to give it groups."""
    name = "check_uses_groups"
    if isinstance(obj, Optimizer):
        raise AssertionError(f"{name}: this Optimizer says uses_groups=True, so the kit needs its factory to build "
                             f"it with groups of its own; check the factory instead (check_optimizer(factory), or "
                             f"{{'name': factory}} in parametrize_with_checks)")
    factory = obj
    parameter = inspect.signature(factory).parameters.get(GROUPS_KEYWORD)
    flag = default_optimizer(factory).uses_groups
    if parameter is None:
        raise AssertionError(f"{name}: {_name(factory)}() returns an Optimizer with uses_groups=True but takes no "
                             f"groups; add a keyword-only `*, groups: Mapping[str, slice]` or drop the flag")
    if parameter.kind is not parameter.KEYWORD_ONLY:
        raise AssertionError(f"{name}: {_name(factory)}'s groups must be keyword-only (`*, groups: Mapping[str, "
                             f"slice]`), so that no suite or --param mistakes it for a hyperparameter")
    if not flag:
        raise AssertionError(f"{name}: {_name(factory)} takes groups, but the Optimizer it returns says "
                             f"uses_groups=False; return it with uses_groups=True (chain() keeps the flag of "
                             f"any transform that has it)")

    @st.composite
    def draw(draw_):
        params, grads = draw_(inputs(DEFAULT_DTYPES, min_dim=2))
        return params, grads, draw_(st.integers(1, params.shape[-1] - 1))

    @kit_property(10)
    @given(draw())
    def prop(example):
        params, grads, k = example
        groups = {"first": slice(0, k), "second": slice(k, params.shape[-1])}
        with torch.no_grad():
            updates, _ = run_steps(default_optimizer(factory, groups), params, grads)
        for t, u in enumerate(updates, 1):
            if (u.shape, u.dtype) != (params.shape, params.dtype) or not bool(torch.isfinite(u).all()):
                fail(name, f"with groups {_written(groups)}, step {t} gave updates of shape {tuple(u.shape)} and "
                           f"dtype {u.dtype} that are not all finite, or not of the shape/dtype of params",
                     params=params, grads=grads[:t])

    prop()
    params = torch.tensor(_PARAMS, dtype=torch.float64)
    grads = [torch.tensor(_GRADS, dtype=torch.float64) * step for step in (1.0, 0.5, 2.0)]
    with torch.no_grad():
        split, _ = run_steps(default_optimizer(factory, _SPLIT), params, grads)
        for groups in _OTHER_GROUPS:
            other, _ = run_steps(default_optimizer(factory, groups), params, grads)
            if not all(close(a, b) for a, b in zip(split, other)):
                return
    raise AssertionError(f"{name}: {_name(factory)} gives the same updates with groups {_written(_SPLIT)} as with "
                         f"{' or '.join(_written(g) for g in _OTHER_GROUPS)}, so they do not depend on the groups; "
                         f"an optimizer that ignores them should take no groups and say uses_groups=False")
