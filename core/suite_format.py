"""The suite file format: pydantic models of a suite's TOML tables, refusing unknown
keys, and their JSON Schema (``l2obench schema``).  What each table means is in
:mod:`l2obench.suite`; loading, cross-checks and error messages are there too."""
from __future__ import annotations

import collections.abc
import re
import typing
from typing import Any, Literal, Optional

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from .config import VALIDATION_SEED_BASE
from .criteria import CRITERIA, Criterion

__all__ = [
    "Seeds", "Name", "SuiteSection", "TaskTable", "MetaTrainEntry", "CheckpointEntry", "Baselines", "TestEntry",
    "Reference", "SuiteFile", "Target", "json_schema",
]

_CRITERIA_DOC = "; ".join(f"{k}: {v}" for k, v in CRITERIA.items())

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def _seeds(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a count of seeds (an integer > 0) or a list of integer seeds")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError("a count of seeds must be > 0")
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if any(v < 0 for v in value):
            raise ValueError("seeds must be >= 0")
        if len(set(value)) != len(value):
            raise ValueError("seeds must be distinct")
        return value
    raise ValueError("expected a count of seeds (an integer > 0) or a non-empty list of integer seeds")


def _int_or_list(value: Any) -> Any:
    return [value] if isinstance(value, int) and not isinstance(value, bool) else value


Seeds = typing.Annotated[list[int], pydantic.BeforeValidator(_seeds),
                         pydantic.WithJsonSchema({"anyOf": [
                             {"type": "integer", "exclusiveMinimum": 0},
                             {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}]})]
Name = typing.Annotated[str, Field(pattern=_NAME_RE.pattern)]


def _meta_seeds(value: Any) -> Any:
    if isinstance(value, bool) or (isinstance(value, int) and value < 0):
        raise ValueError("expected a seed (an integer >= 0) or a list of them")
    if isinstance(value, list):
        if not value:
            raise ValueError("an empty list of meta-training seeds; give one seed or a non-empty list")
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in value):
            raise ValueError("meta-training seeds must be integers >= 0")
        if len(set(value)) != len(value):
            raise ValueError("meta-training seeds must be distinct")
    return value


#: ``seed`` of a ``[[meta_train]]`` entry: one seed, or a list of them (one meta-training run each).
MetaSeeds = typing.Annotated[typing.Union[int, list[int]], pydantic.BeforeValidator(_meta_seeds),
                             pydantic.WithJsonSchema({"anyOf": [
                                 {"type": "integer", "minimum": 0},
                                 {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}]})]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SuiteSection(_Model):
    """``[suite]``: the suite's name, its seeds and its device."""

    name: Name = Field(description="the suite's name, shown in reports")
    description: str = Field("", description="one paragraph for the report")
    seeds: Seeds = Field(list(range(10)), description="test optimizees: a count n (seeds 0..n-1) or a list of seeds")
    validation_seeds: Seeds = Field(
        list(range(10)), description="validation optimizees for tuning baselines: a count n (seeds "
        f"{VALIDATION_SEED_BASE}..{VALIDATION_SEED_BASE}+n-1) or a list of offsets added to {VALIDATION_SEED_BASE}")
    device: Optional[str] = Field(None, pattern=_DEVICE_RE.pattern,
                                  description="cpu, cuda, cuda:N or mps; `l2obench run --device` overrides it")
    heldout_every: Optional[typing.Annotated[int, Field(gt=0)]] = Field(
        None, description="record held-out metrics (tasks with held-out data) every this many steps and at the "
                          "last; default: about ten points a run (horizon // 10)")
    rank: Criterion = Field("final", description=f"what the report ranks optimizers by, per test variant "
                                                  f"(mean over test seeds): {_CRITERIA_DOC}")
    target: Optional["Target"] = Field(None, description="the target of the report's time to target")

    @pydantic.field_validator("seeds", "validation_seeds")
    @classmethod
    def _below_validation_base(cls, value: list[int]) -> list[int]:
        # test seeds from VALIDATION_SEED_BASE on would be the very optimizees baselines are tuned
        # on; validation offsets that far would reach the next range's seeds
        if value and max(value) >= VALIDATION_SEED_BASE:
            raise ValueError(f"seeds must be below {VALIDATION_SEED_BASE} (from there on they are the "
                             f"validation optimizees baselines are tuned on); got {max(value)}")
        return value


class Target(_Model):
    """``[suite.target]``: the value a run must reach for the report's time to target."""

    metric: Optional[Literal["loss", "heldout_loss", "heldout_accuracy"]] = Field(
        None, description="loss (the minibatch's, mean over seeds), heldout_loss or heldout_accuracy; default: "
                          "the metric suite.rank reads")
    value: Optional[float] = Field(None, allow_inf_nan=False, description="the target; default: the best tuned "
                                   "baseline's final value on each test variant")


class TaskTable(BaseModel):
    """``task = {family = "...", <config key> = value or [grid values], ...}``: a task family and its config.

    Every other key is a parameter of the family's config (see `l2obench list`);
    in a [[test]] entry a list is a grid axis (cartesian product over axes)."""

    model_config = ConfigDict(extra="allow", frozen=True, json_schema_extra={"additionalProperties": True})
    family: str = Field(description="a registered task family, e.g. quadratic or mnist-mlp")

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _without_callables(annotation: Any) -> Any:
    """``Union[Literal[...], Callable]`` -> ``Literal[...]``: a TOML file cannot hold a function."""
    if typing.get_origin(annotation) is typing.Union:
        kept = [a for a in typing.get_args(annotation) if typing.get_origin(a) is not collections.abc.Callable]
        return typing.Union[tuple(kept)] if len(kept) > 1 else kept[0]
    return annotation


def _meta_train_model() -> type[BaseModel]:
    """``[[meta_train]]``: the entry's own keys plus every setting of
    :class:`l2obench.metatrain.MetaTrainConfig`, with its defaults and bounds."""
    from .config import MetaTrainConfig

    fields: dict[str, Any] = {
        "name": (Name, Field(description="the optimizer's name in this suite: cell ids, tables, figures")),
        "optimizer": (str, Field(description="a registered learned optimizer, e.g. lstm or rnnprop")),
        "params": (dict[str, Any], Field(default_factory=dict, description="the learned optimizer's "
                                         "hyperparameters (its plugin's factory keywords)")),
        "task": (TaskTable, Field(description="the task to meta-train on: family and config; a list is a grid axis, "
                                        "and meta-training draws one variant of the grid per episode")),
    }
    for key, info in MetaTrainConfig.model_fields.items():
        copy = pydantic.fields.FieldInfo.merge_field_infos(info)
        fields[key] = (_without_callables(info.annotation), copy)
    fields["seed"] = (MetaSeeds, Field(0, description="seed of the initial meta-parameters and of the optimizees "
                                                      "drawn; a list of seeds meta-trains once per seed, each its "
                                                      "own cell, tested on every variant (ids name[seed=s])"))
    return pydantic.create_model(
        "MetaTrainEntry", __config__=ConfigDict(extra="forbid", frozen=True),
        __doc__="[[meta_train]]: a learned optimizer to meta-train (Eq. 3) before testing; "
                "the other keys are l2obench.metatrain.MetaTrainConfig's settings.", **fields)


MetaTrainEntry = _meta_train_model()


class CheckpointEntry(_Model):
    """``[[checkpoint]]``: an already meta-trained optimizer (from `l2obench meta-train`)."""

    name: Name = Field(description="the optimizer's name in this suite")
    path: str = Field(description="the checkpoint file, relative to the suite file")


class Baselines(_Model):
    """``[baselines]``: hand-designed optimizers, tuned per test variant on validation optimizees."""

    optimizers: list[str] = Field(min_length=1, description="registered optimizers, e.g. sgd, nag, rmsprop, adam")
    lr_grid: list[typing.Annotated[float, Field(gt=0, allow_inf_nan=False)]] = Field(
        default_factory=list, description="learning rates tried for every baseline (a log grid)")
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per optimizer, other hyperparameters: a value is fixed, a list is a grid "
        "axis tuned with lr; an lr here replaces lr_grid for that optimizer")
    tune: Criterion = Field(
        "final", description=f"what tuning selects on, mean over validation seeds, per test variant and "
                             f"horizon: {_CRITERIA_DOC}")
    search: Literal["grid", "sobol"] = Field(
        "grid", description="grid: every point of lr_grid x the list-valued params; sobol: `trials` seeded "
                            "quasirandom points of `space`")
    trials: Optional[typing.Annotated[int, Field(gt=0)]] = Field(
        None, description="search = sobol: the settings tried per baseline")
    search_seed: typing.Annotated[int, Field(ge=0)] = Field(0, description="search = sobol: the scrambling seed")
    space: dict[str, typing.Annotated[list[typing.Annotated[float, Field(allow_inf_nan=False)]],
                                      Field(min_length=2, max_length=2)]] = Field(
        default_factory=dict, description="search = sobol: [low, high] per hyperparameter, e.g. lr = [1e-4, 1.0] "
        "(sampled log-uniformly), momentum = [0.0, 0.99], beta1 = [0.5, 0.99] (uniformly); each baseline searches "
        "the ones it has and params does not fix")


class TestEntry(_Model):
    """``[[test]]``: test variants, a grid over task configs times the horizons."""

    task: TaskTable
    horizons: typing.Annotated[list[typing.Annotated[int, Field(gt=0)]], pydantic.BeforeValidator(_int_or_list)] = \
        Field(min_length=1, description="optimizer steps (T), one or a list")
    optimizers: Optional[list[str]] = Field(
        None, description="names of meta_train / checkpoint entries and baselines; default: all of them")


class Reference(_Model):
    """``[[reference]]``: a published number shown next to ours in the report."""

    problem: str = Field(description="a label, e.g. 'MNIST base'")
    task: str = Field(description="the id of one of this suite's task variants, e.g. quadratic[dim=10]")
    horizon: int = Field(gt=0)
    optimizer: str = Field(description="a name of this suite's optimizers")
    summed_loss: Optional[float] = Field(None, description="loss summed over the horizon")
    final_loss: Optional[float] = Field(None, description="loss at the last step")
    lr: Optional[float] = Field(None, description="the learning rate the source tuned")
    source: str = Field("", description="where the number comes from")


SuiteSection.model_rebuild()


class SuiteFile(_Model):
    """An l2obench suite: meta-train or load learned optimizers, tune baselines on
    validation optimizees, test everything on a grid of task variants and horizons."""

    suite: SuiteSection
    meta_train: list[MetaTrainEntry] = Field(default_factory=list)  # type: ignore[valid-type]
    checkpoint: list[CheckpointEntry] = Field(default_factory=list)
    baselines: Optional[Baselines] = None
    test: list[TestEntry] = Field(min_length=1)
    reference: list[Reference] = Field(default_factory=list)


def json_schema() -> dict[str, Any]:
    """The suite format as JSON Schema (draft 2020-12), from the pydantic models."""
    schema = SuiteFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "l2obench suite"
    return schema
