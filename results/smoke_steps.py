"""How long a meta-training step of the smoke suite's learned optimizers takes: `lstm` (no
preprocessing, output x 0.1) and `rnnprop`, each meta-trained as `suites/smoke.toml` does
(16 ten-dimensional quadratics a step, unrolls of 20 in 100-step episodes, Adam at 0.01),
without validation runs; one warm-up episode, then ``--episodes`` timed ones.

    python results/smoke_steps.py [--episodes 5] [--rounds 3] [--threads 2]

Prints one line per round and optimizer, in milliseconds per optimizee step, then the
medians as JSON.  Any installed version of l2obench runs it, so two versions can be timed
one after the other.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from l2obench.metatrain import MetaTrainConfig, meta_train
from l2obench.registry import get_registry

OPTIMIZERS = {"lstm": {"preprocess": False, "output_scale": 0.1}, "rnnprop": {}}
HORIZON = 100


def ms_per_step(name: str, episodes: int) -> float:
    reg = get_registry()
    lopt = reg.learned(name, **OPTIMIZERS[name])
    task = reg.task("quadratic", dim=10)

    def config(n: int) -> MetaTrainConfig:
        return MetaTrainConfig(horizon=HORIZON, unroll=20, epochs=1, episodes_per_epoch=n, meta_batch=16, lr=0.01,
                               validation_seeds=0, seed=0)

    meta_train(lopt, task, config(1), progress=False)  # warm-up: the kernel's build and self-check, caches
    start = time.perf_counter()
    meta_train(lopt, task, config(episodes), progress=False)
    return 1e3 * (time.perf_counter() - start) / (episodes * HORIZON)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    try:  # as the l2obench command runs (versions without l2obench.memory leave malloc as it is)
        from l2obench.memory import keep_freed_memory
    except ImportError:
        pass
    else:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {name: [] for name in OPTIMIZERS}
    for k in range(args.rounds):
        for name in OPTIMIZERS:
            times[name].append(ms_per_step(name, args.episodes))
            print(f"round {k + 1}: {name} {times[name][-1]:.3f} ms per optimizee step")
    print(json.dumps({"median_ms_per_step": {n: round(statistics.median(v), 3) for n, v in times.items()},
                      "episodes": args.episodes, "rounds": args.rounds, "threads": args.threads}))


if __name__ == "__main__":
    main()
