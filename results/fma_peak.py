"""This CPU's peak rate of float32 multiply-adds, the yardstick of the fused LSTM kernel's
speed figures in results/benchmarks.md: a register-only loop of fused multiply-adds on
independent accumulators, compiled as the kernel is (``c++ -O3 -march=<the kernel's
-march>``, vectors of the width the kernel's build uses on this CPU), on each core at once.

    python results/fma_peak.py [--seconds 1.0] [--threads 2] [--march MARCH]

Prints one JSON line: the instruction set, multiply-adds per second on each thread and on
all of them together, and what the paper's MNIST workload's kernel arithmetic (a meta-training
step's LSTM step and backward, 2 layers of 20 units on 15,910 coordinates) takes at that rate,
the floor its kernel time is measured against.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from l2obench import bench
from l2obench.plugins import lstm_kernel

SOURCE = r"""
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>
#if defined(__AVX512F__)
constexpr int BYTES = 64;
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int BYTES = 32;
#else
constexpr int BYTES = 16;
#endif
typedef float vf __attribute__((vector_size(BYTES)));
constexpr int LANES = BYTES / sizeof(float), ACC = 12;  // enough to hide any FMA's latency

// multiply-adds a second on this thread over `seconds`
static double run(double seconds, float* sink) {
    vf a[ACC], x, y;
    for (int k = 0; k < LANES; ++k) x[k] = 0.999f, y[k] = 0.001f;
    for (int i = 0; i < ACC; ++i) a[i] = x * (float)i;
    long rounds = 0;
    auto start = std::chrono::steady_clock::now();
    double elapsed = 0;
    do {
        for (int n = 0; n < 100000; ++n)
#pragma GCC unroll 12
            for (int i = 0; i < ACC; ++i) a[i] = a[i] * x + y;
        rounds += 100000;
        elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    } while (elapsed < seconds);
    float s = 0;
    for (int i = 0; i < ACC; ++i) s += a[i][0];
    *sink = s;
    return (double)rounds * ACC * LANES / elapsed;
}

int main(int argc, char** argv) {
    const double seconds = atof(argv[1]);
    const int threads = atoi(argv[2]);
    std::vector<double> rate(threads);
    std::vector<float> sink(threads);
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back([&, t] { rate[t] = run(seconds, &sink[t]); });
    for (auto& th : pool) th.join();
    printf("%d", LANES);
    for (int t = 0; t < threads; ++t) printf(" %.6e", rate[t]);
    printf("\n");
    return sink[0] == 12345.0f;  // keeps the sums
}
"""


def workload_multiply_adds(coordinates: int = 15910, layers: int = 2, hidden: int = 20, features: int = 2) -> int:
    """The kernel's multiply-adds in one meta-training step of the paper's workload, as
    lstm_kernel.cpp computes it with the steps' records: the step's gate products and head,
    and the backward's products (each layer's W^T d_gates, layer 0's without its input rows)
    and weight-gradient sums, with its head's weight gradient (results/benchmarks.md's 4,980 and
    9,780 a coordinate; the head's 20 products into the top state's gradient are left out)."""
    gates = 4 * hidden
    k = [(features if l == 0 else hidden) + hidden for l in range(layers)]
    step = sum(gates * kl for kl in k) + hidden
    backward = sum(gates * kl for kl in k) + sum(gates * (kl if l else hidden) for l, kl in enumerate(k)) + hidden
    return coordinates * (step + backward)


def measure(seconds: float, threads: int, march: str = "native") -> dict:
    cxx = lstm_kernel._cxx()
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "peak.cpp", Path(tmp) / "peak"
        src.write_text(SOURCE)
        subprocess.run([cxx, "-O3", "-std=c++17", "-pthread", f"-march={march}", str(src), "-o", str(exe)],
                       check=True, capture_output=True, text=True)
        out = subprocess.run([str(exe), str(seconds), str(threads)], check=True, capture_output=True,
                             text=True).stdout.split()
    lanes, rates = int(out[0]), [float(r) for r in out[1:]]
    total = sum(rates)
    work = workload_multiply_adds()
    return {"isa": lstm_kernel.isa_for(march), "march": march, "lanes": lanes, "threads": threads,
            "gmacs_per_thread": [round(r / 1e9, 2) for r in rates], "gmacs": round(total / 1e9, 2),
            "workload_multiply_adds_per_step": work, "workload_floor_ms": round(work / total * 1e3, 2),
            "machine": bench.machine()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--march", default=lstm_kernel.march(),
                    help="the -march to build for (default: the kernel's, L2OBENCH_KERNEL_MARCH or native)")
    args = ap.parse_args()
    if args.seconds <= 0 or args.threads < 1:
        sys.exit("fma_peak.py: --seconds must be positive and --threads at least 1")
    print(json.dumps(measure(args.seconds, args.threads, args.march)))


if __name__ == "__main__":
    main()
