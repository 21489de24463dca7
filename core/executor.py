"""The executor contract: what runs a suite's cells (plugin kind ``"executor"``).

A plugin registers ``factory(workers: int) -> Executor``.  Everything submitted is
plain picklable data, and the function submitted does its own process set-up
(:func:`l2obench.work.prepare_worker`: torch threads, warnings, allocator), so an
executor only has to run it: a worker needs nothing but the installed plugins.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
from typing import Any, Callable, Optional, Protocol, runtime_checkable

from .errors import PluginError


@runtime_checkable
class Executor(Protocol):
    """Runs cells: ``submit(fn, *args)`` returns a :class:`concurrent.futures.Future`;
    ``shutdown(cancel=False)`` ends it (``cancel=True``: drop what has not started);
    ``threads`` is the number of torch threads each cell may use (``None``: torch's default)."""

    threads: int | None

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> cf.Future: ...

    def shutdown(self, cancel: bool = False) -> None: ...


def default_workers() -> int:
    """Cells at once by default: one per core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def check_executor(pool: Any, name: str) -> Executor:
    """``pool`` if it satisfies :class:`Executor`; else a one-line :class:`PluginError`
    naming the executor (``name``: the registered name and where it comes from)."""
    if isinstance(pool, Executor):
        return pool
    missing = [m for m in ("submit", "shutdown", "threads") if not hasattr(pool, m)]
    if "shutdown" not in missing:  # stop the workers it may have started
        pool.shutdown(cancel=True)
    raise PluginError(f"executor {name} gave a {type(pool).__name__} without {', '.join(missing)}; an executor "
                      f"has submit(fn, *args) -> Future, shutdown(cancel=False) and threads (l2obench.api.Executor)")


def start_executor(name: str, workers: Optional[int] = None, registry=None) -> Executor:
    """Start the registered executor ``name`` with ``workers`` workers (default: one per core)."""
    from .registry import get_registry

    entry = (registry if registry is not None else get_registry()).get("executor", name)
    pool = entry.obj(max(1, workers or default_workers()))
    return check_executor(pool, f"{name!r} of distribution {entry.origin}")
