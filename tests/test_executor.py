"""The executor contract: a third-party executor that only runs what it is given gets the
worker set-up all the same (it is in the cell function), and one that does not satisfy
:class:`l2obench.api.Executor` is refused in one line naming it."""
from __future__ import annotations

import concurrent.futures as cf
import os
import threading

import pytest
import torch

import l2obench.registry
from l2obench import PluginError, Registry, hookimpl
from l2obench.cli import main
from l2obench.runner import Runner, run_suite
from l2obench.suite import parse_suite

from test_runner import BODY, HEAD

CELLS = 2 * 3 * 2 + 2 * 2 * 2  # tuning, baseline tests (no meta-training)


class PlainThreads:
    """A third-party executor at its plainest: a thread pool, no set-up of its own."""

    threads = 1

    def __init__(self, workers: int):
        self._pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="plain-worker")

    def submit(self, fn, *args):
        return self._pool.submit(fn, *args)

    def shutdown(self, cancel: bool = False):
        self._pool.shutdown(wait=True, cancel_futures=cancel)


class NoShutdown:
    """Not an executor: ``submit`` only."""

    def __init__(self, workers: int):
        pass

    def submit(self, fn, *args):
        raise AssertionError("never called")


class ExecutorsPlugin:
    @hookimpl
    def register_executors(self, register):
        register("plain-threads", PlainThreads)
        register("broken", NoShutdown)


@pytest.fixture
def registry(monkeypatch):
    reg = Registry([ExecutorsPlugin()])
    monkeypatch.setattr(l2obench.registry, "_default", reg)
    return reg


@pytest.fixture
def suite_file(tmp_path):
    path = tmp_path / "baselines.toml"
    path.write_text(HEAD + BODY)
    return path


def test_a_third_party_executor_gets_the_worker_set_up(registry, suite_file, tmp_path):
    from l2obench import errors, memory

    calls: list[tuple[str, tuple, str]] = []

    def recorder(name, real):
        def record(*args):
            calls.append((name, args, threading.current_thread().name))
            return real(*args)
        return record

    threads = torch.get_num_threads()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(memory, "keep_freed_memory", recorder("memory", memory.keep_freed_memory))
            mp.setattr(errors, "one_line_warnings", recorder("warnings", errors.one_line_warnings))
            mp.setattr(torch, "set_num_threads", recorder("threads", torch.set_num_threads))
            if threads == 1:  # so that a worker that gets the set-up has to set its one thread
                mp.setattr(torch, "get_num_threads", lambda: 2)
            summary = run_suite(suite_file, tmp_path / "out", executor="plain-threads", workers=2,
                                progress=False, stream=open(os.devnull, "w"))
    finally:
        torch.set_num_threads(threads)
    assert summary.ran == CELLS and not summary.failed
    in_workers = {(name, args) for name, args, thread in calls if thread.startswith("plain-worker")}
    assert in_workers == {("memory", ()), ("warnings", ()), ("threads", (1,))}


def test_an_executor_that_is_not_one_is_refused_in_one_line(registry, suite_file, tmp_path, capsys):
    with pytest.raises(PluginError, match=r"executor 'broken' of distribution <inline>.* without shutdown, "
                                          r"threads") as info:
        run_suite(suite_file, tmp_path / "out", executor="broken", progress=False, stream=open(os.devnull, "w"))
    assert "\n" not in str(info.value)
    assert main(["run", str(suite_file), "--out", str(tmp_path / "cli"), "--executor", "broken"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("l2obench: error: executor 'broken'") and "\n" not in err
    assert not (tmp_path / "cli").exists()  # refused before anything was written
    with pytest.raises(PluginError, match="without shutdown, threads"):
        Runner(parse_suite(HEAD + BODY, suite_file), tmp_path / "pool").run(pool=NoShutdown(1), progress=False,
                                                                            stream=open(os.devnull, "w"))
