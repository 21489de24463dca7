"""``l2obench bench``: speed benchmarks of meta-training and batched evaluation (issue 6)."""
from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="speed benchmarks: meta-training and batched evaluation",
                       description="Speed benchmarks on the paper's MNIST workload (see results/benchmarks.md).")
    which = p.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")

    m = which.add_parser("metatrain", help="optimizee steps per second meta-training the paper's MNIST LSTM",
                         description="Meta-train the paper's MNIST LSTM (784-20-10 sigmoid MLP, batch 128, "
                                     "2x20 LSTM, p=10, 100-step episodes, unrolls of 20, Adam 1e-3) and print "
                                     "optimizee steps per second, timed after a warm-up episode.")
    m.add_argument("--episodes", type=int, default=5, help="timed episodes (default 5)")
    m.add_argument("--horizon", type=int, default=100, help="steps per episode (default 100, the workload's)")
    m.add_argument("--unroll", type=int, default=20, help="steps per unroll (default 20, the workload's)")
    m.add_argument("--estimator", default="tbptt", metavar="NAME",
                   help="meta-gradient estimator (default tbptt; l2obench list --kind estimator)")
    m.add_argument("--estimator-param", action="append", metavar="KEY=VALUE",
                   help="a setting of the estimator (repeat), e.g. population=8")
    m.add_argument("--reference", metavar="PATH",
                   help="also run this naive_reference.py, interleaved with ours, and print the ratio")
    m.add_argument("--rounds", type=int, default=1,
                   help="with --reference or --isas: back-to-back rounds, order alternating (default 1)")
    m.add_argument("--isas", action="store_true",
                   help="time the LSTM kernel built for each instruction set this CPU can run (-march=native, "
                        "x86-64-v4, x86-64-v3, x86-64) against torch ops (and --reference), each in a fresh process")
    _common(m)
    m.set_defaults(func=cmd_metatrain)

    e = which.add_parser("evaluate", help="seed-steps per second: 32 seeds batched against 32 runs in turn",
                         description="Evaluate optimizers on mnist-mlp for many seeds in one batched run and "
                                     "in one run per seed, and print seed-steps per second and the ratio.")
    e.add_argument("--optimizers", default="adam,lstm", help="comma-separated optimizers (default adam,lstm)")
    _runs(e, seeds=(32, "seeds (default 32)"))
    _common(e)
    e.set_defaults(func=cmd_evaluate)

    h = which.add_parser("heldout", help="what recording held-out metrics costs an evaluation run",
                         description="Time evaluation runs with held-out metrics at the default steps (about ten "
                                     "a run and the last) against the same runs without, interleaved, on the "
                                     "smoke suite's quadratics, the paper's MNIST net and the small conv net.")
    h.add_argument("--optimizer", default="adam", help="a baseline run with lr=0.01 (default adam)")
    _runs(h, seeds=(16, "seeds (default 16, the smoke suite's)"),
          rounds=(3, "interleaved rounds, medians reported (default 3)"))
    _common(h)
    h.set_defaults(func=cmd_heldout)
    t = which.add_parser("module-task", help="the MNIST MLP written by hand (mnist-mlp) against module_task's",
                         description="Run Adam on mnist-mlp and on the same 784-20-10 sigmoid MLP written as an "
                                     "nn.Module and made a Task by module_task, in alternated rounds, and print "
                                     "seed-steps per second of both and their ratio.")
    _runs(t, seeds=(32, "seeds (default 32)"), rounds=(3, "alternated pairs of runs (default 3)"))
    _common(t)
    t.set_defaults(func=cmd_module_task)


def _runs(p, seeds: tuple[int, str], rounds: tuple[int, str] | None = None) -> None:
    """``--seeds``, ``--steps`` and (where given) ``--rounds``: (default, help) each."""
    p.add_argument("--seeds", type=int, default=seeds[0], help=seeds[1])
    p.add_argument("--steps", type=int, default=100, help="steps per run (default 100)")
    if rounds is not None:
        p.add_argument("--rounds", type=int, default=rounds[0], help=rounds[1])


def _common(p) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, all cores)")
    p.add_argument("--json", action="store_true", help="print one JSON line")


def _setup(args):
    import torch

    from ..errors import ConfigError
    from .metatrain import resolve_device

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads} must be at least 1")
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


def cmd_metatrain(args) -> int:
    from .. import bench

    device = _setup(args)
    if (args.reference or args.isas) and (args.horizon, args.unroll) != (bench.HORIZON, bench.UNROLL):
        from ..errors import ConfigError

        raise ConfigError(f"bench metatrain: {'--isas' if args.isas else '--reference'} runs the paper's workload; "
                          "leave --horizon and --unroll at their defaults")
    if args.isas:
        return _print_isas(args, bench.compare_isas(args.episodes, args.rounds, args.reference, threads=_threads()))
    if args.reference:
        out = bench.compare_metatrain(args.episodes, args.rounds, args.reference,
                                      threads=_threads(), device=device)
    else:
        from ..cli import parse_params

        out = bench.metatrain_throughput(args.episodes, horizon=args.horizon, unroll=args.unroll, device=device,
                                         estimator=args.estimator,
                                         estimator_params=parse_params(args.estimator_param, "--estimator-param"))
    out.update(device=str(device), machine=bench.machine())
    if args.json:
        print(json.dumps(out))
        return 0
    settings = ", ".join(f"{k}={v}" for k, v in out.get("estimator_params", {}).items())
    print(f"meta-training ({out.get('estimator', 'tbptt')}{f' {settings}' if settings else ''}): "
          f"{out['steps_per_s']:.1f} optimizee steps/s ({args.episodes} episodes, "
          f"{device}, {out['machine']['threads']} threads, {out['machine']['cpu']})")
    print(f"  the LSTM ran on {'the fused kernel' if out['lstm_backend'] == 'kernel' else 'torch ops'}: "
          f"{out['lstm_backend_reason']}")
    if "ratio" in out:
        for k, r in enumerate(out["rounds"], 1):
            print(f"  round {k}: ours {r['ours']:.1f}, reference {r['reference']:.1f}, ratio {r['ratio']:.2f}")
        print(f"reference: {out['reference_steps_per_s']:.1f} steps/s (median); ratio {out['ratio']:.2f}x "
              f"(median of the rounds' ratios)")
    return 0


def _print_isas(args, out) -> int:
    from .. import bench

    out["machine"] = bench.machine()
    if args.json:
        print(json.dumps(out))
        return 0
    m = out["machine"]
    print(f"meta-training by kernel build ({out['episodes']} episodes, {out['rounds']} rounds, {m['threads']} "
          f"threads, {m['cpu']}{', ' + m['cpu_id'] if m.get('cpu_id') else ''}):")
    for b in out["builds"]:
        name = f"  -march={b['march']} ({b['isa']}{'; ' + b['blocking'] if b.get('blocking') else ''})"
        if b["missing"]:
            print(f"{name}: not run, this CPU cannot ({', '.join(b['missing'])} missing)")
            continue
        line = f"{name}: {b['steps_per_s']:.1f} steps/s, {b['vs_torch']:.2f}x torch ops"
        if "vs_reference" in b:
            line += f", {b['vs_reference']:.2f}x the reference"
        print(line)
    print(f"  torch ops: {out['torch_steps_per_s']:.1f} steps/s")
    if "reference_steps_per_s" in out:
        print(f"  reference: {out['reference_steps_per_s']:.1f} steps/s")
    print("  (medians over the rounds; ratios are medians of the rounds' ratios)")
    return 0


def cmd_evaluate(args) -> int:
    from .. import bench

    device = _setup(args)
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    out = bench.evaluate_throughput(names, seeds=args.seeds, steps=args.steps, device=device)
    out.update(device=str(device), machine=bench.machine())
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"evaluation on {out['task']}, {out['seeds']} seeds x {out['steps']} steps ({device}, "
          f"{out['machine']['threads']} threads):")
    for name, r in out["optimizers"].items():
        print(f"  {name}: batched {r['batched_seed_steps_per_s']:.0f} seed-steps/s, one seed at a time "
              f"{r['sequential_seed_steps_per_s']:.0f}, ratio {r['ratio']:.2f}x (max |loss diff| "
              f"{r['max_abs_diff']:.2g})")
    return 0


def cmd_module_task(args) -> int:
    import os

    from .. import bench

    device = _setup(args)
    out = bench.module_task_throughput(seeds=args.seeds, steps=args.steps, rounds=args.rounds, device=device)
    out.update(device=str(device), machine=bench.machine(), load_1min=os.getloadavg()[0])
    if args.json:
        print(json.dumps(out))
        return 0
    m = out["machine"]
    print(f"Adam on the MNIST MLP, {out['seeds']} seeds x {out['steps']} steps ({device}, {m['threads']} threads, "
          f"{m['cpu']}, load {out['load_1min']:.2f}):")
    for name, runs in out["seed_steps_per_s"].items():
        print(f"  {name}: {', '.join(f'{v:.0f}' for v in runs)} seed-steps/s")
    print(f"  mnist-mlp / module_task: {', '.join(f'{r:.2f}' for r in out['ratios'])}; median "
          f"{out['hand_written_vs_module_task']:.2f}x")
    return 0


def cmd_heldout(args) -> int:
    from .. import bench

    device = _setup(args)
    out = bench.heldout_cost(args.optimizer, seeds=args.seeds, steps=args.steps, rounds=args.rounds, device=device)
    out.update(device=str(device), machine=bench.machine())
    if args.json:
        print(json.dumps(out))
        return 0
    m = out["machine"]
    print(f"held-out metrics' cost, {args.optimizer}, {out['seeds']} seeds x {out['steps']} steps, median of "
          f"{out['rounds']} interleaved rounds ({m['cpu']}, {m['threads']} threads, {device}):")
    for task, r in out["tasks"].items():
        what = f"{r['evaluations']} evaluations of {', '.join(r['metrics'])}" if r["metrics"] else "no held-out data"
        print(f"  {task}: {r['without_s']:.3f} s without, {r['with_s']:.3f} s with ({what}): "
              f"{100 * r['overhead']:+.1f}%")
    return 0


def _threads() -> int:
    import torch

    return torch.get_num_threads()
