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
    p.add_argument("--task", required=True, metavar="FAMILY")
    p.add_argument("--task-param", action="append", metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seeds", type=int, default=50, help="number of seeds (0 .. N-1, default 50)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--split", choices=["train", "validation", "test"], default="test")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(func=cmd_evaluate)


def cell_id(name: str, params: dict) -> str:
    """A readable id like ``adam[lr=0.1]``."""
    return f"{name}[{','.join(f'{k}={v}' for k, v in params.items())}]" if params else name


def build_optimizer(args, reg):
    """The Optimizer to evaluate and a description of where it came from."""
    from ..cli import parse_params
    from ..errors import ConfigError

    if args.checkpoint:
        if args.param:
            raise ConfigError("--param applies to --optimizer; a checkpoint carries its own hyperparameters")
        from ..checkpoint import load_checkpoint

        lopt, info = load_checkpoint(args.checkpoint, reg)
        return lopt, {"checkpoint": args.checkpoint, "optimizer": cell_id(info.plugin, info.hyperparameters),
                      "sha256": info.content_hash}
    params = parse_params(args.param, "--param")
    if args.optimizer in reg.entries["optimizer"]:
        return reg.optimizer(args.optimizer, **params), {"optimizer": cell_id(args.optimizer, params)}
    if args.optimizer in reg.entries["learned"]:
        import torch

        torch.manual_seed(0)
        return reg.learned(args.optimizer, **params), {"optimizer": cell_id(args.optimizer, params) + " (untrained)"}
    from ..registry import unknown_name_message

    known = list(reg.entries["optimizer"]) + list(reg.entries["learned"])
    raise ConfigError(unknown_name_message("optimizer", args.optimizer, known))


def cmd_evaluate(args) -> int:
    import torch

    from ..cli import parse_params
    from ..errors import ConfigError
    from ..evaluate import run
    from ..learned import LearnedOptimizer
    from ..registry import get_registry
    from ..stats import mean_ci
    from .metatrain import resolve_device

    if args.steps <= 0 or args.seeds <= 0:
        raise ConfigError(f"--steps and --seeds must be positive (got {args.steps} and {args.seeds})")
    reg = get_registry()
    device = resolve_device(args.device)
    optimizer, origin = build_optimizer(args, reg)
    task_params = parse_params(args.task_param, "--task-param")
    task = reg.task(args.task, **task_params)
    if isinstance(optimizer, LearnedOptimizer):
        optimizer = optimizer.to(device).eval()
        optimizer = optimizer.opt_fn(task.groups)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    with torch.no_grad():
        traj = run(optimizer, task, seeds, args.steps, args.split, device)
    final, summed = mean_ci(traj.final.tolist()), mean_ci(traj.summed.tolist())
    diverged = int((traj.diverged_at >= 0).sum())
    report = {
        **origin,
        "task": cell_id(args.task, task_params),
        "split": args.split, "seeds": args.seeds, "first_seed": args.first_seed, "steps": args.steps,
        "device": str(device),
        "final": _summary(final), "summed": _summary(summed), "diverged": diverged,
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['optimizer']} on {report['task']}: {args.split} split, seeds {seeds[0]}..{seeds[-1]}, "
          f"{args.steps} steps")
    print(f"  final loss   {final:.5g}  (mean ± 95% CI over {final.n} seeds)")
    print(f"  summed loss  {summed:.5g}")
    if diverged:
        print(f"  diverged     {diverged} of {args.seeds} seeds")
    return 0


def _summary(ci) -> dict:
    clean = lambda x: x if math.isfinite(x) else None  # noqa: E731  (JSON has no NaN)
    return {"mean": clean(ci.mean), "ci95": clean(ci.half_width), "low": clean(ci.low), "high": clean(ci.high),
            "std": clean(ci.std)}
