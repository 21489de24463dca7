"""The fused LSTM kernel's two entry points alone, on the paper's MNIST shapes (2 layers of 20
units, log/sign inputs): 20 steps and the backward of a 20-step unroll, in milliseconds per
optimizee step, for one or more builds of the kernel, the builds alternated round by round.

    python results/kernel_calls.py [--coordinates 15910] [--threads 2] [--rounds 12] [--records] [LIBRARY.so ...]

Without a library, the build for this source and CPU (``lstm_kernel.build()``).  A build of
another source (``c++ -O3 -std=c++17 -shared -fPIC -fopenmp -march=native src.cpp -o lib.so``)
compares a change of the kernel with it; the builds must share this source's ABI.  Also
prints whether each build's results are the first one's to the bit, and a digest of them.
With ``--records`` the steps write their gate activations and the backward reads them
instead of recomputing the forward, as the meta-trainer's unroll does (the same digest).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from pathlib import Path

import torch

from l2obench import memory
from l2obench.plugins import lstm_kernel

LAYERS, HIDDEN, STEPS, P = 2, 20, 20, 10.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("libraries", nargs="*", type=Path)
    ap.add_argument("--coordinates", type=int, default=15910)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--records", action="store_true",
                    help="the steps write their records and the backward reads them, as in meta-training")
    args = ap.parse_args()
    memory.keep_freed_memory()  # as the l2obench command runs: each step's new states reuse freed blocks
    torch.set_num_threads(args.threads)
    paths = args.libraries or [lstm_kernel.build()]
    libs = []
    for path in paths:
        try:
            libs.append(lstm_kernel.open_library(path))
        except OSError as exc:  # missing, not a library, or of another ABI
            ap.error(f"{path}: {exc}")
    g = torch.Generator().manual_seed(0)
    m = args.coordinates
    weights = lstm_kernel.weights_of(torch.randn(lstm_kernel.flat_size(LAYERS, HIDDEN, 2), generator=g) * 0.3,
                                     LAYERS, HIDDEN, 2)
    grads = torch.randn(STEPS, 1, m, generator=g) * 1e-2
    d_out = torch.randn(STEPS, m, generator=g)
    h0 = [torch.randn(HIDDEN, m, generator=g) * 0.1 for _ in range(LAYERS)]
    c0 = [torch.randn(HIDDEN, m, generator=g) * 0.1 for _ in range(LAYERS)]
    # each build's own records (one a step, of its tile width's size), refilled with NaN before its
    # steps write them, so that a backward can read only what its own steps wrote
    records = [[torch.empty(lstm_kernel.record_size(LAYERS, HIDDEN, m, lib=lib)) for _ in range(STEPS)]
               if args.records else None for lib in libs]
    times = [{"step": [], "unroll backward": []} for _ in paths]
    results = [None] * len(paths)
    for _ in range(args.rounds):
        for k, lib in enumerate(libs):
            for record in records[k] or ():
                record.fill_(float("nan"))
            start = time.perf_counter()
            h, c = h0, c0
            for t in range(STEPS):
                update, h, c = lstm_kernel.step(weights, 0.1, grads[t], h, c, HIDDEN, lib=lib, log_sign_p=P,
                                                record=None if records[k] is None else records[k][t])
            middle = time.perf_counter()
            grad = lstm_kernel.unroll_backward(weights, 0.1, grads, h0, c0, d_out, HIDDEN, lib=lib, log_sign_p=P,
                                               records=records[k])
            end = time.perf_counter()
            times[k]["step"].append(1e3 * (middle - start) / STEPS)
            times[k]["unroll backward"].append(1e3 * (end - middle) / STEPS)
            results[k] = (update, grad)
    for path, spent, result in zip(paths, times, results):
        same = all(torch.equal(a, b) for a, b in zip(result, results[0]))
        print(json.dumps({"library": path.name, "ms_per_step_median": {k: round(statistics.median(v), 3)
                                                                       for k, v in spent.items()},
                          "ms_per_step_min": {k: round(min(v), 3) for k, v in spent.items()},
                          "same_bits_as_first": same, "digest": _digest(result), "coordinates": m,
                          "threads": args.threads, "rounds": args.rounds, "records": args.records}))


def _digest(tensors) -> str:
    """A hash of the results' bits: runs with and without --records give the same."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


if __name__ == "__main__":
    main()
