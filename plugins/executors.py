"""Executors that run suite cells: ``local`` (a process pool on this machine) and
``ray`` (a Ray cluster, the optional extra ``l2obench[ray]``).

An executor is what ``factory(workers)`` returns (:class:`l2obench.api.Executor`):
``submit(fn, *args)`` gives a :class:`concurrent.futures.Future`,
``shutdown(cancel=False)`` ends it, and ``threads`` is the number of torch threads
each cell may use; the two here also have ``map(fn, items)``, which yields results as they
finish.  ``fn`` and its arguments are plain picklable data, and ``fn`` does the
worker's set-up itself (torch threads, warnings, allocator), so a worker needs
nothing but the installed plugins, and these executors only run it.
"""
from __future__ import annotations

import atexit
import concurrent.futures as cf
import multiprocessing
import os
import sys
from typing import Any, Callable, Iterable, Iterator

from l2obench.api import PluginError, get_registry, hookimpl


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _quick_exit() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _exit_with_parent() -> None:
    """End this worker when the runner dies (SIGKILL leaves no time to stop the pool)."""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="l2obench-parent-watch", daemon=True).start()


def _init_worker() -> None:
    """Load the plugins every cell needs, once per worker, while the runner validates the
    suite.  A worker ends without tearing down torch (seconds on a busy machine): the
    pool has flushed its queues by the time the interpreter exits."""
    atexit.register(_quick_exit)
    _exit_with_parent()
    get_registry()


def _ready() -> int:
    return os.getpid()


def _as_finished(executor, fn: Callable, items: Iterable[Any]) -> Iterator[Any]:
    futures = [executor.submit(fn, item) for item in items]
    for fut in cf.as_completed(futures):
        yield fut.result()


def _start_method(threads: int) -> str:
    """``fork`` where it is safe, so that the workers start with torch and the plugins
    already imported (a second or more sooner); ``spawn`` otherwise, fresh
    interpreters that import them anew.  Safe: on Linux, CUDA not initialised here,
    and either one torch thread per worker (a forked copy of an OpenMP thread pool
    is only a hazard to a worker that runs parallel regions, as for torch's
    DataLoader workers) or this process runs no other thread yet."""
    if sys.platform != "linux":
        return "spawn"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "spawn"
    return "fork" if threads == 1 or _threads_running() == 1 else "spawn"


def _threads_running() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # pragma: no cover - Linux has it
        return 0


class LocalExecutor:
    """``workers`` processes, each with ``max(1, cores // workers)`` torch threads.
    They start at once, forked from this process where that is safe (see
    :func:`_start_method`), else spawned, loading torch and the plugins while the
    caller does other work.  ``start_method`` says which."""

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self.threads = max(1, _cores() // self.workers)
        self.start_method = _start_method(self.threads)
        self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(self.start_method),
                                            initializer=_init_worker)
        for _ in range(self.workers):  # the pool starts one process per submission
            self._pool.submit(_ready)

    def submit(self, fn: Callable, *args) -> cf.Future:
        return self._pool.submit(fn, *args)

    def map(self, fn: Callable, items: Iterable[Any]) -> Iterator[Any]:
        return _as_finished(self, fn, items)

    def shutdown(self, cancel: bool = False) -> None:
        """Stop the workers without waiting for them to wind down; ``cancel``: drop queued
        cells and stop running ones."""
        processes = list((getattr(self._pool, "_processes", None) or {}).values())
        self._pool.shutdown(wait=False, cancel_futures=cancel)
        if cancel:
            for proc in processes:
                if proc.is_alive():
                    proc.terminate()
            for proc in processes:
                proc.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown(cancel=exc[0] is not None)


def _call(fn: Callable, *args):
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
        self._task = ray.remote(num_cpus=self.threads, max_retries=0)(_call)
        self._refs: list[Any] = []

    def submit(self, fn: Callable, *args) -> cf.Future:
        ref = self._task.remote(fn, *args)
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
