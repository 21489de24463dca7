"""Where meta-training's time goes: the paper's MNIST workload as `l2obench bench metatrain`
runs it, with the fused kernel's two entry points and the optimizee's loss and gradient
timed around their calls; per optimizee step of the timed episodes (the warm-up episode's
calls are not counted).

    L2OBENCH_DATA_DIR=<data dir> python results/metatrain_parts.py [--episodes 3] [--rounds 3] [--library LIB.so]

Prints one line per round and the medians, in milliseconds per optimizee step: the kernel's
step (all coordinates), its unroll backward (one call per unroll of 20 steps, divided by
20), the optimizee's loss and gradient (the 784-20-10 MLP's, written out), and the rest
(Python, the unroll's bookkeeping, Adam on the meta-parameters), with steps per second.
With ``--library``, a build of another kernel source of this ABI computes the steps and the
backward instead of this source's (see results/kernel_calls.py): one process per build,
alternated, compares two kernels in the whole workload.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
from pathlib import Path

from l2obench import bench, memory
from l2obench import unroll as unroll_module
from l2obench.plugins import lstm_kernel

ENTRY_POINTS = {"l2o_lstm_step": "kernel step", "l2o_lstm_unroll_backward": "kernel unroll backward"}


class _Timed:
    """A loaded kernel whose entry points add their wall time to ``spent`` once ``counting()``."""

    def __init__(self, lib, spent, counting):
        self._lib, self._spent, self._counting = lib, spent, counting

    def __getattr__(self, name):
        function = getattr(self._lib, name)
        if name not in ENTRY_POINTS:
            return function

        def timed(*args):
            start = time.perf_counter()
            try:
                return function(*args)
            finally:
                if self._counting():
                    self._spent[ENTRY_POINTS[name]] += time.perf_counter() - start
        return timed


def one_round(episodes: int, horizon: int = bench.HORIZON, unroll: int = bench.UNROLL, build=None) -> dict:
    lstm_kernel.backend()  # a self-check, if this build has none yet, before anything is timed
    spent: collections.Counter = collections.Counter()
    calls = collections.Counter()
    library, loss_and_grad = lstm_kernel.library, unroll_module.loss_and_grad
    computing = library if build is None else (lambda: build)

    def timed_loss_and_grad(*args, **kwargs):
        start = time.perf_counter()
        try:
            return loss_and_grad(*args, **kwargs)
        finally:
            calls["steps"] += 1
            if counting():
                spent["loss and gradient"] += time.perf_counter() - start

    def counting() -> bool:
        # the warm-up episode's steps come first, its last unroll's backward after its last step
        return calls["steps"] > horizon

    lstm_kernel.library = lambda: None if computing() is None else _Timed(computing(), spent, counting)
    unroll_module.loss_and_grad = timed_loss_and_grad
    start = time.perf_counter()
    try:
        result = bench.metatrain_throughput(episodes, horizon=horizon, unroll=unroll)
    finally:
        lstm_kernel.library, unroll_module.loss_and_grad = library, loss_and_grad
    total = time.perf_counter() - start
    steps = calls["steps"] - horizon
    if result["lstm_backend"] != "kernel":
        raise SystemExit(f"the LSTM ran on torch ops ({result['lstm_backend_reason']}); set L2OBENCH_NATIVE=1")
    # the parts and the total over the same steps, those of the timed episodes
    per_step = {k: 1e3 * v / steps for k, v in spent.items()}
    timed_ms = 1e3 / result["steps_per_s"]
    per_step["rest"] = timed_ms - sum(per_step.values())
    return {"steps_per_s": result["steps_per_s"], "ms_per_step": timed_ms, **per_step,
            "kernel_isa": result.get("kernel_isa"), "total_s": total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--horizon", type=int, default=bench.HORIZON, help="episode length (the paper's 100)")
    ap.add_argument("--unroll", type=int, default=bench.UNROLL, help="truncation (the paper's 20)")
    ap.add_argument("--library", type=Path, help="a build of another kernel source of this ABI to time instead")
    args = ap.parse_args()
    memory.keep_freed_memory()  # as the l2obench command runs: freed blocks stay in the heap
    build = None
    if args.library is not None:
        try:
            build = lstm_kernel.open_library(args.library)
        except OSError as exc:  # missing, not a library, or of another ABI
            ap.error(f"{args.library}: {exc}")
    rows = []
    for k in range(args.rounds):
        row = one_round(args.episodes, args.horizon, args.unroll, build)
        rows.append(row)
        print(f"round {k + 1}: " + ", ".join(f"{key} {value:.2f}" for key, value in row.items()
                                             if isinstance(value, float) and key != "total_s"))
    keys = [k for k in rows[0] if isinstance(rows[0][k], float) and k != "total_s"]
    print(json.dumps({"median": {k: round(statistics.median(r[k] for r in rows), 3) for k in keys},
                      "kernel_isa": rows[0]["kernel_isa"], "episodes": args.episodes, "rounds": args.rounds,
                      "library": None if args.library is None else args.library.name,
                      "machine": bench.machine()}))


if __name__ == "__main__":
    main()
