"""pytest plugin of the conformance kit, loaded through the ``pytest11`` entry point
wherever l2obench is installed.

It offers a plugin package's test suite two things:

- ``pytest --l2obench-conformance=DIST`` collects one test per object and
  check for every optimizer, learned optimizer and task family that the
  distribution ``DIST`` registers (``all`` for every installed one); the option
  repeats.  ``DIST`` is spelled as ``L2OBENCH_PLUGINS`` spells it: case and
  ``-_.`` do not matter, and a plugin's entry-point name works too.  Ids read ``l2obench[DIST]::NAME-CHECK``, for instance
  ``l2obench[my-plugin]::myopt-check_zero_grad``.  Known failures are listed
  in the ini option ``l2obench_expected_failures``, one ``NAME-CHECK: reason``
  a line, and run as ``xfail(strict=True)``.
- the fixture ``l2obench_check``: ``l2obench_check(obj, expected_failed_checks=None)``
  runs every applicable check on an optimizer (or its factory), learned
  optimizer or task family and fails with one message listing the failures.

For tests written by hand, ``l2obench.testing.parametrize_with_checks`` is the
same thing as a decorator.
"""
from __future__ import annotations

from typing import Any, Callable

import pytest

OPTION = "--l2obench-conformance"
INI_EXPECTED = "l2obench_expected_failures"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("l2obench", "l2obench conformance kit")
    group.addoption(OPTION, action="append", default=[], metavar="DIST",
                    help="collect the l2obench conformance checks of everything the distribution DIST "
                         "registers ('all' for every installed plugin); may repeat")
    parser.addini(INI_EXPECTED, type="linelist", default=[],
                  help="l2obench conformance checks expected to fail: 'NAME-CHECK: reason' per line")


class ConformanceItem(pytest.Item):
    """One conformance check run on one registered object."""

    def __init__(self, *, obj: Any, check: Callable[[Any], None], **kwargs):
        super().__init__(**kwargs)
        self.obj = obj
        self.check = check

    def runtest(self) -> None:
        self.check(self.obj)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, AssertionError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, self.nodeid


def _expected(config: pytest.Config) -> dict[str, str]:
    out = {}
    for line in config.getini(INI_EXPECTED):
        test_id, _, reason = line.partition(":")
        out[test_id.strip()] = reason.strip() or "listed in l2obench_expected_failures"
    return out


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Append the conformance items before ``-k``/``-m`` deselect, so they filter like any test."""
    dists = config.getoption(OPTION)
    if not dists:
        return
    from .conformance import checks_for, registered_objects

    expected = _expected(config)
    registry = _registry()
    for dist in dists:
        found = None if dist == "all" else _distribution(registry, dist)
        objects = registered_objects(distribution=found, registry=registry) if dist == "all" or found else {}
        if not objects:
            raise pytest.UsageError(f"{OPTION}={dist}: it registers no optimizer, learned optimizer or task family "
                                    f"(installed: {', '.join(_installed(registry))}, or 'all')")
        for name, obj in objects.items():
            for check in checks_for(obj):
                test_id = f"{name}-{check.__name__}"
                item = ConformanceItem.from_parent(session, name=test_id, nodeid=f"l2obench[{dist}]::{test_id}",
                                                   obj=obj, check=check)
                if test_id in expected:
                    item.add_marker(pytest.mark.xfail(strict=True, reason=expected[test_id]))
                items.append(item)


def _registry():
    """The plugin registry, or a one-line usage error if a plugin is broken."""
    from ..errors import L2OError
    from ..registry import get_registry

    try:
        return get_registry()
    except L2OError as exc:
        raise pytest.UsageError(f"{OPTION}: loading the l2obench plugins failed: {' '.join(str(exc).split())}") \
            from None


def _installed(registry) -> list[str]:
    """The distributions that register something the kit checks, as ``dist (plugin, ...)``."""
    plugins: dict[str, set[str]] = {}
    for e in registry.all_entries():
        if e.kind in ("optimizer", "learned", "task"):
            plugins.setdefault(e.distribution, set()).add(e.plugin)
    return [f"{d} (plugin {', '.join(sorted(p))})" for d, p in sorted(plugins.items())]


def _distribution(registry, spelled: str) -> str | None:
    """The distribution ``spelled`` names, as ``L2OBENCH_PLUGINS`` reads names: case
    and runs of ``-_.`` folded, a distribution's or one of its plugins' (entry points') name."""
    from ..registry import normalize

    wanted = normalize(spelled)
    for e in registry.all_entries():
        if wanted in (normalize(e.distribution), normalize(e.plugin)):
            return e.distribution
    return None


@pytest.fixture
def l2obench_check() -> Callable[..., None]:
    """``l2obench_check(obj, expected_failed_checks=None)``: run every applicable
    conformance check on ``obj`` (see ``l2obench.testing.check_object``)."""
    from .conformance import check_object

    return check_object
