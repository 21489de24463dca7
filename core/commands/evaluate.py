"""``l2obench evaluate``: run one optimizer (hand-designed, learned, or a checkpoint) on a
task for many seeds and print final and summed losses with 95% confidence intervals."""
from __future__ import annotations

import json
import math


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate an optimizer or a checkpoint on a task",
                       description="Final and summed losses over seeds, mean with 95% t-interval.")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--optimizer", metavar="NAME", help="a registered optimizer or (untrained) learned optimizer")
    which.add_argument("--checkpoint", metavar="FILE", help="a meta-trained optimizer saved by meta-train")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a hyperparameter of --optimizer")
    p.add_argument("--task", required=True, metavar="FAMILY", help="a registered task family (see l2obench list)")
    p.add_argument("--task-param", action="append", metavar="KEY=VALUE",
                   help="a config key of the task family (repeatable), e.g. hidden=40")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per run (default 100)")
    p.add_argument("--seeds", type=int, default=50, help="number of seeds (0 .. N-1, default 50)")
    p.add_argument("--first-seed", type=int, default=0, help="the first seed (>= 0, default 0)")
    p.add_argument("--split", choices=["train", "validation", "test"], default="test",
                   help="which data the minibatches come from (default test)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from pathlib import Path

    import torch

    from ..cli import parse_params
    from ..devices import resolve_device
    from ..errors import ConfigError
    from ..evaluate import run
    from ..registry import get_registry
    from ..resolve import resolve_optimizer
    from ..config import VALIDATION_SEED_BASE
    from ..stats import mean_ci
    from ..suite import make_id

    if args.steps <= 0 or args.seeds <= 0:
        raise ConfigError(f"--steps and --seeds must be positive (got {args.steps} and {args.seeds})")
    if args.first_seed < 0:
        raise ConfigError(f"--first-seed {args.first_seed}: seeds are optimizee numbers >= 0; give --first-seed 0 "
                          f"or more")
    if args.first_seed + args.seeds > VALIDATION_SEED_BASE:
        raise ConfigError(f"--first-seed {args.first_seed} --seeds {args.seeds}: test seeds must be below "
                          f"{VALIDATION_SEED_BASE}; from there on they are the validation optimizees")
    if args.checkpoint and args.param:
        raise ConfigError("--param applies to --optimizer; a checkpoint carries its own hyperparameters")
    reg = get_registry()
    device = resolve_device(args.device)
    params = parse_params(args.param, "--param")
    task_params = parse_params(args.task_param, "--task-param")
    task = reg.task(args.task, **task_params)
    spec = Path(args.checkpoint) if args.checkpoint else args.optimizer
    resolved = resolve_optimizer(spec, task, device, params=params, registry=reg)
    origin = {"optimizer": resolved.id + (" (untrained)" if resolved.untrained else "")}
    if resolved.checkpoint is not None:
        origin = {"checkpoint": args.checkpoint, **origin, "sha256": resolved.checkpoint.content_hash}
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    with torch.no_grad():
        traj = run(resolved.optimizer, task, seeds, args.steps, args.split, device, heldout=[args.steps - 1])
    final, summed = mean_ci(traj.final.tolist()), mean_ci(traj.summed.tolist())
    diverged = int((traj.diverged_at >= 0).sum())
    report = {
        **origin,
        "task": make_id(args.task, task_params),
        "split": args.split, "seeds": args.seeds, "first_seed": args.first_seed, "steps": args.steps,
        "device": str(device),
        "final": _summary(final), "summed": _summary(summed), "diverged": diverged,
    }
    heldout = {}
    for name, values in traj.heldout.items():  # at the last step, on the split's evaluation set
        heldout[name] = mean_ci(values[:, -1].tolist())
        report[name] = _summary(heldout[name])
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['optimizer']} on {report['task']}: {args.split} split, seeds {seeds[0]}..{seeds[-1]}, "
          f"{args.steps} steps")
    print(f"  final loss   {final:.5g}  (mean ± 95% CI over {final.n} seeds)")
    print(f"  summed loss  {summed:.5g}")
    for name, ci in heldout.items():
        print(f"  {name.replace('heldout_', 'held-out ')}  {ci:.5g}  (last step, the {args.split} split's evaluation set)")
    if diverged:
        print(f"  diverged     {diverged} of {args.seeds} seeds")
    return 0


def _summary(ci) -> dict:
    clean = lambda x: x if math.isfinite(x) else None  # noqa: E731  (JSON has no NaN)
    return {"mean": clean(ci.mean), "ci95": clean(ci.half_width), "low": clean(ci.low), "high": clean(ci.high),
            "std": clean(ci.std)}
