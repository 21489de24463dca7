"""The executor contract: what runs a suite's cells (plugin kind ``"executor"``).

A plugin registers ``factory(workers: int) -> Executor``.  Everything submitted is
plain picklable data, and the function submitted does its own process set-up
(torch threads, warnings, allocator), so an executor only has to run it: a worker
needs nothing but the installed plugins.
"""
from __future__ import annotations

import concurrent.futures as cf
from typing import Any, Callable, Protocol, runtime_checkable


@runtime_checkable
class Executor(Protocol):
    """Runs cells: ``submit(fn, *args)`` returns a :class:`concurrent.futures.Future`;
    ``shutdown(cancel=False)`` ends it (``cancel=True``: drop what has not started);
    ``threads`` is the number of torch threads each cell may use (``None``: torch's default)."""

    threads: int | None

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> cf.Future: ...

    def shutdown(self, cancel: bool = False) -> None: ...
