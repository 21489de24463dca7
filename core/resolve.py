"""From an optimizer spec to the :class:`~l2obench.optimizer.Optimizer` that runs on a
task: the one dispatch behind the runner's cells, ``l2obench evaluate``, ``l2obench
bench`` and the conformance kit.

A spec is a registered name with hyperparameters (a hand-designed optimizer, or a
learned one, then untrained), a checkpoint (a file or its bytes), or a learned
optimizer already in hand.  A hand-designed optimizer is built for the task's
parameter groups; a learned one is moved to the device, put in eval mode, and turned
into an optimizer for the task's groups (``opt_fn(task.groups)``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

if TYPE_CHECKING:
    import torch

    from .checkpoint import CheckpointInfo
    from .learned import LearnedOptimizer
    from .optimizer import Optimizer
    from .task import Task

#: The torch seed an untrained learned optimizer's meta-parameters are drawn under,
#: unless the caller gives another (meta-training gives its config's ``seed``).
INIT_SEED = 0

#: A name (str), a checkpoint (a path or its bytes), or a learned optimizer.
Spec = Union[str, "os.PathLike[str]", bytes, "LearnedOptimizer"]


@dataclass(frozen=True)
class Resolved:
    """An optimizer ready to run on one task, and where it came from."""

    optimizer: Optimizer
    #: ``name[k=v,...]`` with the hyperparameters given (a checkpoint's: all it records)
    id: str
    #: the meta-parameters of a learned optimizer (``None`` for a hand-designed one)
    learned: Optional[LearnedOptimizer] = None
    #: what the checkpoint said of itself, for an optimizer loaded from one
    checkpoint: Optional[CheckpointInfo] = None
    #: a learned optimizer built from its name: its meta-parameters are the plugin's initialisation
    untrained: bool = False


def learned_optimizer(name: str, params: Mapping[str, Any] | None = None, *, seed: int = INIT_SEED,
                      registry=None) -> LearnedOptimizer:
    """A fresh learned optimizer ``name`` with ``params``, its meta-parameters drawn under
    ``torch.manual_seed(seed)``: the same seed, the same network."""
    import torch

    from .registry import get_registry

    reg = registry if registry is not None else get_registry()
    entry = reg.get("learned", name)
    torch.manual_seed(seed)
    return entry.create(**dict(params or {}))


def resolve_optimizer(spec: Spec, task: Task, device: torch.device | str = "cpu", *,
                      params: Mapping[str, Any] | None = None, registry=None, seed: int = INIT_SEED) -> Resolved:
    """The optimizer ``spec`` means for ``task`` on ``device``.

    ``spec`` is a registered name (``params``: its hyperparameters; a learned one is
    built with :func:`learned_optimizer` under ``seed``), a checkpoint file
    (:class:`os.PathLike`) or its bytes, or a :class:`~l2obench.learned.LearnedOptimizer`.
    An unknown name is refused in one line with the closest registered one."""
    from .errors import ConfigError
    from .learned import LearnedOptimizer
    from .registry import get_registry, unknown_name_message
    from .suite import make_id

    reg = registry if registry is not None else get_registry()
    params = dict(params or {})
    if not isinstance(spec, str) and params:
        raise ConfigError(f"hyperparameters {params} apply to an optimizer named by its registered name; "
                          f"a checkpoint or a learned optimizer carries its own")
    if isinstance(spec, LearnedOptimizer):
        return Resolved(_for_task(spec, task, device), spec.name or type(spec).__name__, learned=spec)
    if isinstance(spec, (bytes, os.PathLike)):
        from .checkpoint import load_checkpoint

        lopt, info = load_checkpoint(spec if isinstance(spec, bytes) else Path(spec), reg)
        return Resolved(_for_task(lopt, task, device), make_id(info.plugin, info.hyperparameters),
                        learned=lopt, checkpoint=info)
    if spec in reg.entries["optimizer"]:
        return Resolved(reg.optimizer(spec, task.groups, **params), make_id(spec, params))
    if spec in reg.entries["learned"]:
        lopt = learned_optimizer(spec, params, seed=seed, registry=reg)
        return Resolved(_for_task(lopt, task, device), make_id(spec, params), learned=lopt, untrained=True)
    known = list(reg.entries["optimizer"]) + list(reg.entries["learned"])
    raise ConfigError(unknown_name_message("optimizer", spec, known))


def _for_task(lopt: LearnedOptimizer, task: Task, device) -> Optimizer:
    """The optimizer a learned one's meta-parameters define for ``task``, frozen, on ``device``."""
    lopt.to(device)
    lopt.eval()
    return lopt.opt_fn(task.groups)
