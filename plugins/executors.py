"""Executors that run suite cells: ``local`` (a process pool on this machine) and
``ray`` (a Ray cluster, the optional extra ``l2obench[ray]``).

An executor is what ``factory(workers)`` returns: ``submit(fn, *args)`` gives a
:class:`concurrent.futures.Future`, ``map(fn, items)`` yields results as they
finish, ``shutdown(cancel=False)`` ends it, and ``threads`` is the number of
torch threads each cell may use.  ``fn`` and its arguments are plain picklable
data, so a worker needs nothing but the installed plugins.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from typing import Any, Callable, Iterable, Iterator

from l2obench import hookimpl
from l2obench.errors import PluginError


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _as_finished(executor, fn: Callable, items: Iterable[Any]) -> Iterator[Any]:
    futures = [executor.submit(fn, item) for item in items]
    for fut in cf.as_completed(futures):
        yield fut.result()


class LocalExecutor:
    """``workers`` processes (spawn context, so no state leaks from the parent), each
    with ``max(1, cores // workers)`` torch threads."""

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self.threads = max(1, _cores() // self.workers)
        self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_worker, initargs=(self.threads,))

    def submit(self, fn: Callable, *args) -> cf.Future:
        return self._pool.submit(fn, *args)

    def map(self, fn: Callable, items: Iterable[Any]) -> Iterator[Any]:
        return _as_finished(self, fn, items)

    def shutdown(self, cancel: bool = False) -> None:
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
        if cancel:
            for proc in list(getattr(self._pool, "_processes", {}).values() or []):
                if proc.is_alive():
                    proc.terminate()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown(cancel=exc[0] is not None)


def _call_with_threads(fn: Callable, threads: int, *args):
    import torch

    torch.set_num_threads(threads)
    return fn(*args)


class RayExecutor:
    """Cells as Ray tasks on the cluster at ``RAY_ADDRESS`` (a local Ray instance if
    unset, or the one this process already started).  Each task asks for
    ``threads`` CPUs, ``max(1, cluster CPUs // workers)``, so at most ``workers``
    run at once."""

    def __init__(self, workers: int):
        try:
            import ray
        except ImportError:
            raise PluginError("executor 'ray' needs Ray: pip install 'l2obench[ray]'") from None
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        self._ray = ray
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.workers = max(1, int(workers))
        self.threads = max(1, cpus // self.workers)
        self._task = ray.remote(num_cpus=self.threads, max_retries=0)(_call_with_threads)
        self._refs: list[Any] = []

    def submit(self, fn: Callable, *args) -> cf.Future:
        ref = self._task.remote(fn, self.threads, *args)
        self._refs.append(ref)
        return ref.future()

    def map(self, fn: Callable, items: Iterable[Any]) -> Iterator[Any]:
        return _as_finished(self, fn, items)

    def shutdown(self, cancel: bool = False) -> None:
        if cancel:
            for ref in self._refs:
                try:
                    self._ray.cancel(ref, force=True)
                except Exception:  # already finished, or the cluster is gone
                    pass
        self._refs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown(cancel=exc[0] is not None)


@hookimpl
def register_executors(register):
    register("local", LocalExecutor)
    register("ray", RayExecutor)
