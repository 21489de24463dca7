"""``l2obench bench``: the benchmarks run on tiny sizes and print valid JSON (speeds
are not asserted here; results/benchmarks.md holds the measured figures)."""
from __future__ import annotations

import collections

import json
import subprocess
import sys

import pytest
import torch

from l2obench.cli import main
from l2obench.devices import cpu_id


@pytest.fixture(autouse=True)
def restore_torch_threads():
    """``--threads`` sets torch's thread count for the whole process; put it back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_json(capsys, *argv):
    assert main(["bench", *argv, "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_bench_metatrain_json(capsys):
    out = run_json(capsys, "metatrain", "--episodes", "1", "--horizon", "4", "--unroll", "2", "--threads", "1")
    assert out["steps_per_s"] > 0 and out["episodes"] == 1 and out["horizon"] == 4
    assert out["optimizee_dim"] == 784 * 20 + 20 + 20 * 10 + 10  # the paper's 784-20-10 MLP
    assert out["machine"]["threads"] == 1 and out["device"] == "cpu"
    assert out["machine"]["cpu_id"] == cpu_id()  # what tells apart CPUs of one model name
    assert out["lstm_backend"] in ("kernel", "torch") and out["lstm_backend_reason"]


ZEN1_CPUINFO = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 23
model		: 1
model name	: AMD EPYC
flags		: fpu avx avx2 fma

processor	: 1
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 1
model name	: AMD EPYC
"""  # (a second processor of another kind, as no machine has: the first one's numbers count)


def test_the_cpu_is_named_by_family_and_model_where_its_name_is_shared():
    """A VM's ``AMD EPYC`` is Zen 1 (family 23, model 1) or Zen 3 (family 25, model 1), among
    others: the first processor's numbers name it; a CPU without them (ARM's cpuinfo) gives none."""
    assert cpu_id(ZEN1_CPUINFO) == "family 23, model 1"
    assert cpu_id("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd\nCPU part\t: 0xd0c\n") == ""
    assert cpu_id("cpu family\t: 6\n") == "family 6"


def test_bench_metatrain_isas_names_the_cpu_with_its_family(capsys, monkeypatch):
    from l2obench import bench

    fake_isa_runs(monkeypatch)
    monkeypatch.setattr(bench, "cpu_id", lambda: "family 23, model 1")
    monkeypatch.setattr(bench, "cpu_model", lambda: "AMD EPYC")
    assert main(["bench", "metatrain", "--isas", "--rounds", "1"]) == 0
    assert "threads, AMD EPYC, family 23, model 1):" in capsys.readouterr().out


@pytest.mark.parametrize("estimator", ["es", "pes"])
def test_bench_metatrain_counts_every_particle_of_an_es_population(capsys, estimator):
    out = run_json(capsys, "metatrain", "--episodes", "1", "--horizon", "4", "--unroll", "2", "--threads", "1",
                   "--estimator", estimator, "--estimator-param", "population=4", "--estimator-param", "truncation=2")
    assert out["estimator"] == estimator and out["estimator_params"] == {"population": 4, "truncation": 2}
    assert out["steps_per_s"] == pytest.approx(4 * 4 / out["seconds"])  # 4 steps x 4 particles, one episode


def test_bench_metatrain_says_which_lstm_ran_and_why(capsys, monkeypatch):
    monkeypatch.setenv("L2OBENCH_NATIVE", "0")
    assert main(["bench", "metatrain", "--episodes", "1", "--horizon", "2", "--unroll", "2", "--threads", "1"]) == 0
    assert "the LSTM ran on torch ops: turned off by L2OBENCH_NATIVE=0" in capsys.readouterr().out
    from l2obench import bench

    assert bench.lstm_backend("meta") == {"lstm_backend": "torch", "lstm_backend_reason":
                                          "the fused kernel is for the CPU; meta runs torch ops"}
    from l2obench.plugins import lstm_kernel

    monkeypatch.setenv("L2OBENCH_NATIVE", "1")
    if lstm_kernel.library() is None:
        pytest.skip("the fused LSTM kernel could not be built here")
    ran = bench.lstm_backend("cpu")  # and the build's vectors and blocking, which it chose for this CPU
    assert ran["lstm_backend"] == "kernel" and ran["kernel_isa"] == lstm_kernel.isa()
    assert ran["kernel_blocking"].startswith({"avx512": "vectors 16x1", "avx2": "vectors 8x2",
                                              "generic": "vectors 4x2"}[ran["kernel_isa"]])


def fake_isa_runs(monkeypatch):
    """compare_isas with three builds (one this CPU cannot run) and canned throughputs."""
    from l2obench import bench

    builds = [{"name": f"kernel -march={m}", "march": m, "isa": isa, "missing": missing,
               "env": {"L2OBENCH_NATIVE": "1", "L2OBENCH_KERNEL_MARCH": m}}
              for m, isa, missing in [("native", "avx2", []), ("x86-64-v4", "avx512", ["avx512f"]),
                                      ("x86-64-v3", "avx2", [])]]
    speeds = {"native": iter([200.0, 180.0]), "x86-64-v3": iter([190.0, 170.0]), "torch": iter([50.0, 60.0]),
              "reference": iter([40.0, 45.0])}
    calls = []

    def command_json(env, episodes, threads):
        name = "torch" if env["L2OBENCH_NATIVE"] == "0" else env["L2OBENCH_KERNEL_MARCH"]
        calls.append(name)
        out = {"steps_per_s": next(speeds[name]), "lstm_backend": "torch" if name == "torch" else "kernel",
               "lstm_backend_reason": "forced"}
        if name == "native":
            out["kernel_blocking"] = "vectors 8x2, gemv 5, outer 4x3, sigmoids 4"
        return out

    monkeypatch.setattr(bench, "isa_builds", lambda: builds)
    monkeypatch.setattr(bench, "_command_json", command_json)
    monkeypatch.setattr(bench, "reference_throughput", lambda path, episodes, threads: calls.append("reference")
                        or {"steps_per_s": next(speeds["reference"])})
    return calls


def test_compare_isas_runs_each_build_the_cpu_can_run_rotating_the_order(monkeypatch):
    from l2obench import bench

    calls = fake_isa_runs(monkeypatch)
    out = bench.compare_isas(2, 2, "naive_reference.py", threads=2)
    assert calls == ["native", "x86-64-v3", "torch", "reference", "x86-64-v3", "torch", "reference", "native"]
    native, avx512, v3 = out["builds"]
    assert native["steps_per_s"] == 190.0 and native["vs_torch"] == pytest.approx((4.0 + 3.0) / 2)
    assert native["vs_reference"] == pytest.approx((5.0 + 4.0) / 2)
    assert "steps_per_s" not in avx512 and avx512["missing"] == ["avx512f"]
    assert v3["runs"] == [190.0, 170.0]
    assert (out["torch_steps_per_s"], out["reference_steps_per_s"]) == (55.0, 42.5)


def test_bench_metatrain_isas_prints_each_build(capsys, monkeypatch):
    fake_isa_runs(monkeypatch)
    assert main(["bench", "metatrain", "--isas", "--rounds", "2", "--reference", "naive_reference.py"]) == 0
    out = capsys.readouterr().out
    assert ("-march=native (avx2; vectors 8x2, gemv 5, outer 4x3, sigmoids 4): 190.0 steps/s, 3.50x torch ops, "
            "4.50x the reference") in out
    assert "-march=x86-64-v3 (avx2): 180.0 steps/s" in out  # a run that gives no blocking: none printed
    assert "-march=x86-64-v4 (avx512): not run, this CPU cannot (avx512f missing)" in out
    assert "torch ops: 55.0 steps/s" in out and "reference: 42.5 steps/s" in out


def test_bench_metatrain_against_a_reference(capsys, tmp_path):
    fake = tmp_path / "reference.py"
    fake.write_text("import json, sys\nassert '--episodes' in sys.argv and '--threads' in sys.argv\n"
                    "print('loading'); print(json.dumps({'steps_per_s': 1e9, 'episodes': 1}))\n")
    out = run_json(capsys, "metatrain", "--episodes", "1", "--reference", str(fake), "--threads", "1")
    assert len(out["rounds"]) == 1
    assert out["reference_steps_per_s"] == 1e9
    assert out["ratio"] == pytest.approx(out["steps_per_s"] / 1e9)
    assert out["lstm_backend"] in ("kernel", "torch") and out["lstm_backend_reason"]


def test_compare_metatrain_alternates_pairs_and_takes_the_median_ratio(monkeypatch):
    from l2obench import bench

    calls = []
    ours, theirs = iter([30.0, 10.0, 20.0]), iter([5.0, 4.0, 100.0])
    monkeypatch.setattr(bench, "metatrain_throughput",
                        lambda episodes, device: calls.append("ours") or {"steps_per_s": next(ours)})
    monkeypatch.setattr(bench, "reference_throughput",
                        lambda path, episodes, threads: calls.append("reference") or {"steps_per_s": next(theirs)})
    out = bench.compare_metatrain(2, 3, "naive_reference.py", threads=2)
    assert calls == ["reference", "ours", "ours", "reference", "reference", "ours"]
    assert [r["ratio"] for r in out["rounds"]] == [6.0, 2.5, 0.2]
    assert (out["steps_per_s"], out["reference_steps_per_s"], out["ratio"]) == (20.0, 5.0, 2.5)


def test_bench_metatrain_reference_errors_are_one_line(capsys, tmp_path):
    assert main(["bench", "metatrain", "--reference", str(tmp_path / "missing.py")]) == 2
    assert "is not a file" in capsys.readouterr().err
    broken = tmp_path / "broken.py"
    broken.write_text("import sys\nsys.exit('no MNIST here')\n")
    assert main(["bench", "metatrain", "--episodes", "1", "--reference", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert "reference broken.py failed" in err and "no MNIST here" in err and len(err.splitlines()) == 1
    assert main(["bench", "metatrain", "--reference", sys.executable, "--horizon", "10"]) == 2
    assert "leave --horizon" in capsys.readouterr().err
    assert main(["bench", "metatrain", "--isas", "--unroll", "10"]) == 2
    assert "--isas runs the paper's workload" in capsys.readouterr().err


def test_bench_evaluate_json(capsys):
    out = run_json(capsys, "evaluate", "--seeds", "3", "--steps", "2", "--optimizers", "adam,lstm", "--threads", "1")
    assert set(out["optimizers"]) == {"adam", "lstm"}
    for r in out["optimizers"].values():
        assert r["batched_seed_steps_per_s"] > 0 and r["sequential_seed_steps_per_s"] > 0
        assert r["ratio"] == pytest.approx(r["batched_seed_steps_per_s"] / r["sequential_seed_steps_per_s"])
        assert r["max_abs_diff"] < 1e-4  # batched rows are the one-seed runs


def test_bench_heldout_json(capsys):
    out = run_json(capsys, "heldout", "--seeds", "2", "--steps", "3", "--rounds", "1", "--threads", "1")
    tasks = out["tasks"]
    assert len(tasks) == 3
    quadratic = next(r for name, r in tasks.items() if name.startswith("quadratic"))
    assert quadratic["metrics"] == [] and quadratic["evaluations"] == 0
    for name, r in tasks.items():
        assert r["without_s"] > 0 and r["with_s"] > 0
        assert r["overhead"] == pytest.approx(r["with_s"] / r["without_s"] - 1)
        if name.startswith("mnist"):
            assert r["metrics"] == ["loss", "accuracy"] and r["evaluations"] == 3
    assert main(["bench", "heldout", "--rounds", "0"]) == 2
    assert "--rounds 0" in capsys.readouterr().err


def test_bench_rejects_bad_sizes_and_devices(capsys):
    assert main(["bench", "evaluate", "--seeds", "0"]) == 2
    assert main(["bench", "metatrain", "--episodes", "0"]) == 2
    assert main(["bench", "evaluate", "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("l2obench: error:") for line in err)
    assert main(["bench", "evaluate", "--optimizers", "nosuch"]) == 2
    assert "unknown optimizer 'nosuch'" in capsys.readouterr().err


def test_the_workloads_builds_come_from_its_plugin():
    """bench names no plugin module: the learned optimizer lists its own native builds."""
    from l2obench import bench

    builds = bench.isa_builds()
    assert builds and builds[0]["name"] == "kernel -march=native"
    assert all({"name", "env", "missing", "isa", "march"} <= set(b) for b in builds)


def test_bench_module_task_times_both_tasks_alternated(capsys):
    out = run_json(capsys, "module-task", "--seeds", "2", "--steps", "2", "--rounds", "2", "--threads", "1")
    assert set(out["seed_steps_per_s"]) == {"mnist-mlp", "module_task"}
    assert all(len(v) == 2 and min(v) > 0 for v in out["seed_steps_per_s"].values())
    assert out["hand_written_vs_module_task"] > 0 and len(out["ratios"]) == 2 and "load_1min" in out


def test_the_module_task_mlp_is_mnist_mlps_network():
    from l2obench import bench, get_registry

    hand, module = get_registry().task("mnist-mlp"), bench.module_mlp_task()
    assert module.dim == hand.dim and module.batch_size == 128
    batch = next(module.batches("train", [0]))
    assert batch.tensors[0].shape == (1, 128, 784) and batch.tensors[0].dtype == torch.uint8


def test_the_per_part_timing_script_leaves_a_positive_rest(monkeypatch):
    """results/metatrain_parts.py (the per-part figures of results/benchmarks.md) runs the
    workload on the kernel with each part timed over the timed episodes only: every part, and
    the rest the total leaves them, positive (timing the warm-up's calls too made it negative)."""
    import runpy
    from pathlib import Path

    from l2obench.plugins import lstm_kernel

    monkeypatch.setenv("L2OBENCH_NATIVE", "1")
    if lstm_kernel.library() is None:
        pytest.skip("the fused LSTM kernel could not be built here")
    script = runpy.run_path(str(Path(__file__).parents[1] / "results" / "metatrain_parts.py"))
    row = script["one_round"](2, horizon=4, unroll=2)
    parts = ("kernel step", "kernel unroll backward", "loss and gradient")
    assert all(row[k] > 0 for k in parts) and row["kernel_isa"] == lstm_kernel.isa()
    assert 0 < row["rest"] < row["ms_per_step"]

    class Counted:  # another build (--library): it computes every kernel call of the round
        def __init__(self, lib):
            self.lib, self.calls = lib, collections.Counter()

        def __getattr__(self, name):
            self.calls[name] += 1
            return getattr(self.lib, name)

    other = Counted(lstm_kernel.library())
    row = script["one_round"](2, horizon=4, unroll=2, build=other)
    episodes = 2 + 1  # and the warm-up: 4 steps, 2 unrolls each
    assert other.calls["l2o_lstm_step"] == episodes * 4 and other.calls["l2o_lstm_unroll_backward"] == episodes * 2
    assert all(row[k] > 0 for k in parts)


def test_the_per_part_timing_script_times_the_build_it_is_given(monkeypatch, capsys, tmp_path):
    """metatrain_parts.py --library LIB.so: the build is opened and named in the output; a path
    that is not a kernel build is refused in one line."""
    import runpy
    from pathlib import Path

    from l2obench.plugins import lstm_kernel

    monkeypatch.setenv("L2OBENCH_NATIVE", "1")
    if lstm_kernel.library() is None:
        pytest.skip("the fused LSTM kernel could not be built here")
    path = str(Path(__file__).parents[1] / "results" / "metatrain_parts.py")
    build = lstm_kernel.build()
    opened = []
    monkeypatch.setattr(lstm_kernel, "open_library", lambda p: opened.append(p) or lstm_kernel.library())
    monkeypatch.setattr(sys, "argv", ["metatrain_parts.py", "--episodes", "1", "--rounds", "1", "--horizon", "4",
                                      "--unroll", "2", "--library", str(build)])
    runpy.run_path(path, run_name="__main__")
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert opened == [build] and out["library"] == build.name and out["median"]["kernel step"] > 0
    monkeypatch.undo()
    monkeypatch.setattr(sys, "argv", ["metatrain_parts.py", "--library", str(tmp_path / "missing.so")])
    with pytest.raises(SystemExit):
        runpy.run_path(path, run_name="__main__")
    assert "missing.so" in capsys.readouterr().err


def test_the_smoke_step_timing_script_times_both_learned_optimizers():
    """results/smoke_steps.py (the smoke suite's step figures of results/benchmarks.md)."""
    import runpy
    from pathlib import Path

    script = runpy.run_path(str(Path(__file__).parents[1] / "results" / "smoke_steps.py"))
    assert set(script["OPTIMIZERS"]) == {"lstm", "rnnprop"}
    assert all(0 < script["ms_per_step"](name, 1) < 1e3 for name in script["OPTIMIZERS"])


def test_the_kernel_call_timing_script_compares_builds_bit_for_bit(monkeypatch, capsys):
    """results/kernel_calls.py times the kernel's entry points for builds alternated and
    says whether each gives the first one's bits (the same build twice: it does); with
    --records the backward reads the records the steps wrote, and the results' digest is the
    recomputing backward's."""
    import json
    import runpy
    import sys
    from pathlib import Path

    from l2obench.plugins import lstm_kernel

    if lstm_kernel.library() is None:
        pytest.skip("the fused LSTM kernel could not be built here")
    build = str(lstm_kernel.build())
    runs = {}
    for records in (False, True):
        monkeypatch.setattr(sys, "argv", ["kernel_calls.py", "--coordinates", "40", "--rounds", "2", build, build]
                            + ["--records"] * records)
        runpy.run_path(str(Path(__file__).parents[1] / "results" / "kernel_calls.py"), run_name="__main__")
        rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert len(rows) == 2 and all(r["same_bits_as_first"] and r["coordinates"] == 40 for r in rows)
        assert all(r["records"] is records for r in rows)
        assert all(v > 0 for r in rows for v in r["ms_per_step_median"].values())
        runs[records] = rows
    assert {r["digest"] for rows in runs.values() for r in rows} == {runs[False][0]["digest"]}


def test_the_fma_peak_script_measures_this_cpus_multiply_adds():
    """results/fma_peak.py (the yardstick of results/benchmarks.md's kernel figures): the
    peak of vectors as wide as the kernel's build's on this CPU, on each thread, and the
    paper's workload's kernel multiply-adds a step (the 4,980 of a step and the 9,780 of the
    backward per coordinate, on 15,910 coordinates) at that rate."""
    import runpy
    from pathlib import Path

    from l2obench.plugins import lstm_kernel

    script = runpy.run_path(str(Path(__file__).parents[1] / "results" / "fma_peak.py"))
    assert script["workload_multiply_adds"]() == 15910 * (4980 + 9780)
    try:
        out = script["measure"](0.05, 2)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no C++ compiler here: {exc}")
    assert out["isa"] == lstm_kernel.isa_for("native")
    assert out["lanes"] == {"avx512": 16, "avx2": 8, "generic": 4}[out["isa"]]
    assert len(out["gmacs_per_thread"]) == 2 and all(r > 0 for r in out["gmacs_per_thread"])
    assert out["gmacs"] == pytest.approx(sum(out["gmacs_per_thread"]), abs=0.02)
    assert out["workload_floor_ms"] == pytest.approx(out["workload_multiply_adds_per_step"] / out["gmacs"] / 1e6,
                                                     rel=0.01)
