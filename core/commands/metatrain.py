"""``l2obench meta-train``: meta-train a learned optimizer on a task family and save a checkpoint.

The meta-training options are :class:`~l2obench.config.MetaTrainConfig`'s fields, with
its defaults and descriptions: a setting added there is an option here."""
from __future__ import annotations

import argparse
import math
import os
import typing
from pathlib import Path

from ..devices import resolve_device  # noqa: F401  (l2obench.commands.bench imports it from here)
from ..errors import ConfigError

#: option names that differ from the field's (``--time-limit`` reads better than ``--time-limit-s``)
_FLAGS = {"time_limit_s": "--time-limit"}


def add_parser(sub) -> None:
    p = sub.add_parser("meta-train", help="meta-train a learned optimizer (truncated BPTT, ES or PES)",
                       description="Meta-train a learned optimizer on a task and save it as a checkpoint.")
    p.add_argument("--optimizer", required=True, metavar="NAME", help="learned optimizer (l2obench list)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a hyperparameter of the learned optimizer")
    p.add_argument("--task", required=True, metavar="FAMILY", help="task family to meta-train on")
    p.add_argument("--task-param", action="append", metavar="KEY=VALUE", help="a config value of the task family")
    add_config_options(p)
    p.add_argument("--out", required=True, metavar="FILE", help="checkpoint to write (.safetensors)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_meta_train)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`MetaTrainConfig` field, its default and bounds those of the field."""
    from ..config import TRUNCATION_SCHEDULES, WEIGHTINGS, MetaTrainConfig

    for name, info in MetaTrainConfig.model_fields.items():
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        default = info.get_default(call_default_factory=True)
        text = info.description or ""
        kind = _plain_type(info.annotation)
        if typing.get_origin(info.annotation) is dict:  # estimator_params: one --estimator-param KEY=VALUE each
            parser.add_argument(flag.removesuffix("s"), dest=name, action="append", metavar="KEY=VALUE",
                                help=f"{text}: one setting each (repeat)")
            continue
        if kind is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default, help=text)
            continue
        options: dict[str, typing.Any] = {"dest": name, "default": default,
                                          "help": f"{text} (default {_shown(default)})".lstrip()}
        if name == "weights":
            options["choices"] = WEIGHTINGS
        elif name == "truncation_schedule":
            options["choices"] = TRUNCATION_SCHEDULES
        elif _optional(info.annotation):
            options.update(type=_number_or_none(kind), metavar="NUMBER|none")
        else:
            options["type"] = kind
        parser.add_argument(flag, **options)


def config_from_args(args) -> "MetaTrainConfig":  # noqa: F821
    """The :class:`MetaTrainConfig` the options of :func:`add_config_options` give."""
    from ..cli import parse_params
    from ..config import MetaTrainConfig

    values = {name: getattr(args, name) for name in MetaTrainConfig.model_fields}
    for name, info in MetaTrainConfig.model_fields.items():
        if typing.get_origin(info.annotation) is dict:
            values[name] = parse_params(values[name], "--" + name.replace("_", "-").removesuffix("s"))
    return MetaTrainConfig.from_params(**values)


def _plain_type(annotation) -> type:
    """``int``, ``float``, ``bool`` or ``str`` for a field's annotation (``float | None``:
    float; a string-or-function field: str, since a command line gives strings)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    for kind in (bool, int, float, str):
        if kind in args:
            return kind
    return str


def _optional(annotation) -> bool:
    return type(None) in typing.get_args(annotation)


def _shown(default) -> str:
    return "none" if default is None else str(default)


def _number_or_none(kind: type):
    def parse(text: str):
        if text.lower() in ("none", "off"):
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def cmd_meta_train(args) -> int:
    from ..checkpoint import save_checkpoint
    from ..cli import parse_params
    from ..errors import MetaTrainingError
    from ..metatrain import meta_train
    from ..registry import get_registry
    from ..resolve import learned_optimizer

    reg = get_registry()
    entry = reg.get("learned", args.optimizer)
    hyper = parse_params(args.param, "--param")
    entry.check_parameters(hyper)
    family = reg.family(args.task)
    task_config = family.validate(**parse_params(args.task_param, "--task-param"))
    config = config_from_args(args)
    device = resolve_device(args.device)
    check_writable(args.out)

    lopt = learned_optimizer(args.optimizer, hyper, seed=config.seed, registry=reg)
    task = family.task(task_config)
    result = meta_train(lopt, task, config, device=device, progress=not args.quiet)
    if result.failure is not None:
        raise MetaTrainingError(f"meta-training failed: {result.failure}; nothing was written to {args.out}")
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
    try:
        digest = save_checkpoint(args.out, lopt, training, registry=reg)
    except OSError as exc:  # checked before training, yet it failed: keep the training somewhere
        kept = _save_elsewhere(args.out, lopt, training, reg)
        raise ConfigError(f"--out {args.out}: cannot write it ({exc.strerror or exc}); the checkpoint was "
                          f"saved to {kept} instead") from None
    best = "off" if result.best_val is None else f"{result.best_val:.6g} (epoch {result.best_epoch})"
    print(f"saved {args.out} (sha256 {digest[:12]}): validation summed loss {best}, "
          f"{len(result.history)} episodes, {result.skipped} skipped, {result.wall_s:.1f} s, "
          f"{result.steps_per_s:.1f} optimizee steps/s")
    if result.best_val is not None and not math.isfinite(result.best_val):
        print("warning: every validated optimizer diverged on the validation tasks")
    return 0


def check_writable(out: str) -> None:
    """Refuse, before any training, an ``--out`` that cannot be written: a directory, a
    missing parent, or one where a probe file cannot be created."""
    path = Path(out)
    if str(out).endswith("/") or path.is_dir():
        raise ConfigError(f"--out {out!r}: expected a file name, e.g. lstm.safetensors")
    parent = path.parent
    if not parent.exists():
        raise ConfigError(f"--out {out}: directory {parent} does not exist; create it or choose another path")
    if not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is not a directory; choose another path")
    probe = parent / f".{path.name}.probe-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"l2obench")
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write in {parent} ({exc.strerror or exc}); "
                          f"choose another path") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass


def _save_elsewhere(out: str, lopt, training, registry) -> Path:
    """Save the checkpoint that ``--out`` refused in the current directory, else in the
    temporary directory, under a name that overwrites nothing; returns where."""
    import tempfile

    from ..checkpoint import save_checkpoint

    name = Path(out).name or "checkpoint.safetensors"
    stem, suffix = Path(name).stem, Path(name).suffix or ".safetensors"
    last: OSError | None = None
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        candidate = folder / f"{stem}{suffix}"
        n = 1
        while candidate.exists():
            candidate = folder / f"{stem}-{n}{suffix}"
            n += 1
        try:
            save_checkpoint(candidate, lopt, training, registry=registry)
            return candidate
        except OSError as exc:
            last = exc
    raise ConfigError(f"--out {out}: cannot write it, nor a copy in the current or temporary directory "
                      f"({last.strerror if last else ''}); the training is lost") from None
