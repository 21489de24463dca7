"""Running the conformance checks: which apply to an object, running them all
with one error listing the failures, and pytest parametrization, as
scikit-learn's ``check_estimator`` / ``parametrize_with_checks`` do.

The kit checks four kinds of object: an :class:`~l2obench.Optimizer`, a factory
of one (needed for an optimizer that uses the task's parameter groups, which
the kit builds with groups of its own), a :class:`~l2obench.LearnedOptimizer`
and a :class:`~l2obench.TaskFamily`.  Which checks apply is read from the
object's kind and capability flags, never from its name.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch

from ..learned import LearnedOptimizer
from ..optimizer import Optimizer
from ..task import TaskFamily
from .group_checks import check_uses_groups, default_optimizer
from .learned_checks import LEARNED_OPTIMIZER_CHECKS, check_state_round_trip
from .optimizer_checks import OPTIMIZER_CHECKS
from .properties import applies, raised_text, run_on_built, smoke_test
from .task_checks import TASK_FAMILY_CHECKS

__all__ = [
    "OPTIMIZER_FACTORY_CHECKS", "CHECK_NAMES", "checks_for", "check_object", "check_optimizer",
    "check_learned_optimizer", "check_task_family", "parametrize_with_checks", "registered_objects",
]

ExpectedFailures = Mapping[str, str] | Callable[[Any], Mapping[str, str]] | None

#: The checks of an optimizer factory: every optimizer check on what it builds with its
#: default hyperparameters (and no groups), then the groups contract on the factory itself.
OPTIMIZER_FACTORY_CHECKS: tuple[Callable, ...] = (
    *(run_on_built(c, lambda factory: (default_optimizer(factory), {}),
                   "the factory's optimizer, with default hyperparameters and no groups")
      for c in OPTIMIZER_CHECKS if c is not check_uses_groups),
    check_uses_groups,
)

_TABLES: dict[str, tuple[Callable, ...]] = {
    "optimizer": OPTIMIZER_CHECKS, "optimizer factory": OPTIMIZER_FACTORY_CHECKS,
    "learned optimizer": LEARNED_OPTIMIZER_CHECKS, "task family": TASK_FAMILY_CHECKS,
}

#: Every check name the kit knows; ``expected_failed_checks`` keys must be among them.
CHECK_NAMES: frozenset[str] = frozenset(c.__name__ for table in _TABLES.values() for c in table)


def _kind(obj: Any) -> str:
    if isinstance(obj, LearnedOptimizer):
        return "learned optimizer"
    if isinstance(obj, Optimizer):
        return "optimizer"
    if isinstance(obj, TaskFamily):
        return "task family"
    if callable(obj):
        return "optimizer factory"
    raise TypeError(f"the conformance kit checks an Optimizer, a factory of one, a LearnedOptimizer or a "
                    f"TaskFamily, not a {type(obj).__name__}")


def checks_for(obj: Any) -> list[Callable]:
    """The checks that apply to ``obj``, chosen by its kind and capability flags."""
    return [c for c in _TABLES[_kind(obj)] if applies(c, obj)]


def _expected_for(obj: Any, expected_failed_checks: ExpectedFailures) -> dict[str, str]:
    expected = expected_failed_checks(obj) if callable(expected_failed_checks) else expected_failed_checks
    expected = dict(expected or {})
    unknown = sorted(set(expected) - CHECK_NAMES)
    if unknown:
        raise ValueError(f"expected_failed_checks names unknown checks {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(CHECK_NAMES))}")
    return expected


def _failure_text(check_name: str, exc: BaseException) -> str:
    """One line: the check's own message, or ``check_x: IndexError: ...`` for anything else."""
    text = str(exc) if isinstance(exc, AssertionError) else raised_text(exc)
    text = " ".join(text.split()) if "\n" in text else text
    return text if text.startswith(check_name) else f"{check_name}: {text}"


def _common_cause(obj: Any, kind: str) -> str | None:
    """Why no check can run on ``obj``: building its optimizer, ``init`` or a first
    ``update`` raised (one line), else ``None``.  Every check depends on those calls,
    so such a cause is reported once, not once per check."""
    if kind == "task family":
        return None
    try:
        if kind == "learned optimizer":
            from .learned_checks import meta_dtypes

            with torch.no_grad():
                return smoke_test(obj.opt_fn(), meta_dtypes(obj)[0])
        opt = obj if kind == "optimizer" else default_optimizer(obj)
    except Exception as exc:
        return f"building its optimizer raised {raised_text(exc)}"
    return smoke_test(opt)


def check_object(obj: Any, expected_failed_checks: ExpectedFailures = None,
                 checks: Iterable[Callable] | None = None) -> None:
    """Run every applicable check on ``obj`` and raise one ``AssertionError``
    listing each failure.  Checks named in ``expected_failed_checks``
    (``{check_name: reason}``, or a callable ``obj -> dict``) must fail: one
    that passes is reported too, as pytest's ``xfail(strict=True)`` would."""
    kind = _kind(obj)
    expected = _expected_for(obj, expected_failed_checks)
    checks = list(checks if checks is not None else checks_for(obj))
    cause = _common_cause(obj, kind)
    if cause is not None:
        raise AssertionError(f"the {kind} failed before any conformance check could run: {cause}; all "
                             f"{len(checks)} applicable checks need that call, so none was run")
    problems = []
    for check in checks:
        check_name = check.__name__
        try:
            check(obj)
        except Exception as exc:
            if check_name not in expected:
                problems.append(f"- {_failure_text(check_name, exc)}")
        else:
            if check_name in expected:
                problems.append(f"- {check_name}: expected to fail ({expected[check_name]}) but passed")
    if problems:
        raise AssertionError(f"the {kind} failed {len(problems)} conformance check(s):\n" + "\n".join(problems))


def check_optimizer(opt: Optimizer | Callable[..., Optimizer], expected_failed_checks: ExpectedFailures = None) -> None:
    """Run every optimizer check that ``opt``'s flags make applicable; raise one
    ``AssertionError`` listing the failures (see :func:`check_object`).  ``opt`` is
    an Optimizer or its factory; an optimizer that uses the task's parameter
    groups is checked through its factory."""
    if isinstance(opt, (LearnedOptimizer, TaskFamily)) or not (isinstance(opt, Optimizer) or callable(opt)):
        raise TypeError(f"check_optimizer needs an l2obench Optimizer or a factory of one, not a "
                        f"{type(opt).__name__}")
    check_object(opt, expected_failed_checks)


def check_learned_optimizer(lopt: LearnedOptimizer, expected_failed_checks: ExpectedFailures = None,
                            factory: Callable[..., LearnedOptimizer] | None = None) -> None:
    """Run the optimizer checks on ``lopt.opt_fn()`` (all but descent: untrained
    meta-parameters promise none), the capability, meta-gradient and second-derivative
    checks and the state round-trip, rebuilding with ``factory(**lopt.hyperparameters)``
    if given, else through the registry from ``lopt.name``."""
    if not isinstance(lopt, LearnedOptimizer):
        raise TypeError(f"check_learned_optimizer needs a LearnedOptimizer, not a {type(lopt).__name__}")
    checks = [functools.wraps(check_state_round_trip)(functools.partial(check_state_round_trip, factory=factory))
              if c is check_state_round_trip and factory is not None else c for c in checks_for(lopt)]
    check_object(lopt, expected_failed_checks, checks)


def check_task_family(family: TaskFamily, expected_failed_checks: ExpectedFailures = None) -> None:
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
    if isinstance(obj, Optimizer):
        return type(obj).__name__.lower()
    return getattr(obj, "__name__", type(obj).__name__)


def _with_ids(objects: Mapping[str, Any] | Sequence[Any]) -> list[tuple[str, Any]]:
    if isinstance(objects, Mapping):
        return [(str(k), v) for k, v in objects.items()]
    objects = list(objects)
    ids = [_default_id(o) for o in objects]
    return [(i if ids.count(i) == 1 else f"{i}{n}", o) for n, (i, o) in enumerate(zip(ids, objects))]


def parametrize_with_checks(objects: Mapping[str, Any] | Sequence[Any], expected_failed_checks: ExpectedFailures = None):
    """A ``pytest.mark.parametrize`` over ``(obj, check)`` for every object and
    every check that applies to it, as in scikit-learn::

        @parametrize_with_checks({"myopt": my_optimizer(), "lars": lars, "mytask": my_family})
        def test_conformance(obj, check):
            check(obj)

    ``objects`` is a list of optimizers (or their factories), learned optimizers
    and task families, or a dict ``{id: object}`` for readable test ids
    (``myopt-check_inputs_unchanged``).  ``expected_failed_checks`` is
    ``{check_name: reason}`` for every object, or a callable
    ``obj -> {check_name: reason}``; those cases become
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
    hyperparameters; its factory, for one that uses the task's parameter groups),
    learned optimizer (fresh, meta-parameters initialised under
    ``torch.manual_seed(0)``) and task family in the registry, or only those
    registered by ``distribution``.  A name used by two kinds gets a ``kind:`` prefix."""
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
            continue
        with _seeded(0):
            built = e.create()
        grouped = e.kind == "optimizer" and (e.uses_groups or built.uses_groups)
        out[key] = e.obj if grouped else built
    return out


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
