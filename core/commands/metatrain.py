"""``l2obench meta-train``: meta-train a learned optimizer on a task family and save a checkpoint."""
from __future__ import annotations

import math

from ..errors import ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser("meta-train", help="meta-train a learned optimizer (truncated BPTT, paper Eq. 3)",
                       description="Meta-train a learned optimizer on a task and save it as a checkpoint.")
    p.add_argument("--optimizer", required=True, metavar="NAME", help="learned optimizer (l2obench list)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a hyperparameter of the learned optimizer")
    p.add_argument("--task", required=True, metavar="FAMILY", help="task family to meta-train on")
    p.add_argument("--task-param", action="append", metavar="KEY=VALUE", help="a config value of the task family")
    p.add_argument("--horizon", type=int, default=100, help="optimizee steps per episode (default 100)")
    p.add_argument("--unroll", type=int, default=20, help="steps per truncated unroll (default 20)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--episodes-per-epoch", type=int, default=20)
    p.add_argument("--meta-batch", type=int, default=1, help="optimizees per episode, batched (default 1)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate on the meta-parameters")
    p.add_argument("--clip", type=_clip, default=1.0, metavar="NORM|none", help="meta-gradient norm clip")
    p.add_argument("--weights", choices=["ones", "final", "unroll-final", "linear"], default="ones",
                   help="loss weights w_t of Eq. 3 (default ones, as in the paper)")
    p.add_argument("--second-order", action="store_true", help="keep second derivatives")
    p.add_argument("--validate-every", type=int, default=1, metavar="EPOCHS")
    p.add_argument("--validation-seeds", type=int, default=8, help="0 turns early stopping off")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS", help="stop training after this long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="FILE", help="checkpoint to write (.safetensors)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_meta_train)


def _clip(text: str):
    if text.lower() in ("none", "off"):
        return None
    try:
        return float(text)
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def resolve_device(name: str):
    """A torch device for ``--device``, refused in one line when it is not available."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {name!r}: expected cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name!r}: expected cpu or cuda[:N]")
    return device


def cmd_meta_train(args) -> int:
    import torch

    from ..checkpoint import save_checkpoint
    from ..cli import parse_params
    from ..metatrain import MetaTrainConfig, meta_train
    from ..registry import get_registry

    reg = get_registry()
    entry = reg.get("learned", args.optimizer)
    hyper = parse_params(args.param, "--param")
    entry.check_parameters(hyper)
    family = reg.family(args.task)
    task_config = family.validate(**parse_params(args.task_param, "--task-param"))
    config = MetaTrainConfig.from_params(
        horizon=args.horizon, unroll=args.unroll, epochs=args.epochs, episodes_per_epoch=args.episodes_per_epoch,
        meta_batch=args.meta_batch, lr=args.lr, clip=args.clip, weights=args.weights,
        second_order=args.second_order, validate_every=args.validate_every,
        validation_seeds=args.validation_seeds, seed=args.seed, time_limit_s=args.time_limit)
    device = resolve_device(args.device)
    if str(args.out).endswith("/"):
        raise ConfigError(f"--out {args.out!r}: expected a file name, e.g. lstm.safetensors")

    torch.manual_seed(args.seed)
    lopt = entry.create(**hyper)
    task = family.task(task_config)
    result = meta_train(lopt, task, config, device=device, progress=not args.quiet)
    training = {
        "task": args.task,
        "task_config": task_config.model_dump(mode="json"),
        "config": config.describe(),
        "device": str(device),
        "best_epoch": result.best_epoch,
        "best_val": result.best_val,
        "validation": {str(k): v for k, v in result.validation.items()},
        "skipped": result.skipped,
        "stopped": result.stopped,
        "wall_s": round(result.wall_s, 3),
        "steps_per_s": round(result.steps_per_s, 3),
    }
    digest = save_checkpoint(args.out, lopt.cpu(), args.optimizer, training, registry=reg)
    best = "off" if result.best_val is None else f"{result.best_val:.6g} (epoch {result.best_epoch})"
    print(f"saved {args.out} (sha256 {digest[:12]}): validation summed loss {best}, "
          f"{len(result.history)} episodes, {result.skipped} skipped, {result.wall_s:.1f} s, "
          f"{result.steps_per_s:.1f} optimizee steps/s")
    if result.best_val is not None and not math.isfinite(result.best_val):
        print("warning: every validated optimizer diverged on the validation tasks")
    return 0
