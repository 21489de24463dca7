"""What a validated suite expands to: grids into their points, each point with a
stable readable id (``adam[lr=0.01]``, ``mnist-mlp[hidden=40]``), the task
variants, optimizer specs and test variants the runner turns into cells."""
from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import VALIDATION_SEED_BASE
from .suite_format import SuiteFile

__all__ = ["format_value", "make_id", "expand_grid", "plain", "TaskVariant", "OptimizerSpec", "LearnedSpec",
           "TestVariant", "Suite"]


def format_value(value: Any) -> str:
    """How a parameter value is written in an id: ``0.01``, ``1e-05``, ``true``, ``relu``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (int, str)):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def make_id(name: str, params: dict[str, Any]) -> str:
    """``name[k=v,...]`` with the parameters in the given order; ``name`` alone without any."""
    if not params:
        return name
    return f"{name}[{','.join(f'{k}={format_value(v)}' for k, v in params.items())}]"


@dataclass(frozen=True)
class TaskVariant:
    """One point of a task grid: ``written`` is what the suite says (the id), ``config`` the
    full validated config with defaults (what the cell hash and the results table use)."""

    family: str
    written: dict[str, Any]
    config: dict[str, Any]
    version: str  #: "distribution version" of the plugin that registered the family

    @property
    def id(self) -> str:
        return make_id(self.family, self.written)


@dataclass(frozen=True)
class OptimizerSpec:
    """A hand-designed optimizer with its settings (``written`` for the id, ``params`` complete)."""

    name: str
    written: dict[str, Any]
    params: dict[str, Any]
    version: str

    @property
    def id(self) -> str:
        return make_id(self.name, self.written)


@dataclass(frozen=True)
class LearnedSpec:
    """A learned optimizer of the suite: meta-trained here (``train``) or loaded (``checkpoint``).

    A ``[[meta_train]]`` entry with a list of seeds is one spec per seed, each with its
    ``meta_seed`` and the id ``name[seed=s]`` (its cells' ids, its checkpoint's file name);
    an entry with one seed keeps the plain name."""

    name: str
    plugin: str
    params: dict[str, Any]
    version: str
    task: Optional[TaskVariant] = None
    train: Optional[dict[str, Any]] = None
    checkpoint: Optional[Path] = None
    checkpoint_hash: Optional[str] = None
    meta_seed: Optional[int] = None
    #: the variants of a ``[[meta_train]]`` task grid, one drawn per episode (empty: ``task`` alone)
    distribution: tuple[TaskVariant, ...] = ()

    @property
    def id(self) -> str:
        return self.name if self.meta_seed is None else make_id(self.name, {"seed": self.meta_seed})


@dataclass(frozen=True)
class TestVariant:
    """One test variant family: a task variant, its horizons and the optimizers tested on it."""

    task: TaskVariant
    horizons: tuple[int, ...]
    optimizers: tuple[str, ...]
    entry: int


@dataclass
class Suite:
    """A validated suite file, its grids expanded."""

    path: Path
    text: str
    model: SuiteFile
    learned: dict[str, LearnedSpec]
    baselines: dict[str, list[OptimizerSpec]]
    tests: list[TestVariant]
    references: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.model.suite.name

    def runs(self, name: str) -> list[str]:
        """The ids (keys of ``learned``) of learned optimizer ``name``'s meta-training runs:
        ``[name]``, or ``name[seed=s]`` for each of its meta-training seeds."""
        return [key for key, spec in self.learned.items() if spec.name == name]

    @property
    def learned_names(self) -> list[str]:
        """The suite's names of its learned optimizers, each once."""
        return list(dict.fromkeys(spec.name for spec in self.learned.values()))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def test_seeds(self) -> list[int]:
        return list(self.model.suite.seeds)

    @property
    def validation_seeds(self) -> list[int]:
        return [VALIDATION_SEED_BASE + s for s in self.model.suite.validation_seeds]

    @property
    def tune_rule(self) -> str:
        return self.model.baselines.tune if self.model.baselines else "final"

    @property
    def rank_rule(self) -> str:
        return self.model.suite.rank

    @property
    def heldout_every(self) -> Optional[int]:
        return self.model.suite.heldout_every

    @property
    def search(self) -> str:
        return self.model.baselines.search if self.model.baselines else "grid"

    @property
    def target(self) -> dict[str, Any]:
        """The time-to-target setting: ``metric`` and ``value`` (``None``: derived per variant)."""
        from .criteria import metric_of

        t = self.model.suite.target
        metric = t.metric if t is not None and t.metric else metric_of(self.rank_rule)
        return {"metric": metric, "value": t.value if t is not None else None}


def expand_grid(table: dict[str, Any]) -> list[dict[str, Any]]:
    """Cartesian product over list-valued keys, in the order written (first key slowest)."""
    keys = list(table)
    axes = [table[k] if isinstance(table[k], list) else [table[k]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def plain(value: Any) -> Any:
    """A config value as JSON-ready data (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))
