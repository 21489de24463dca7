"""Suite files: a whole benchmark declared in TOML, validated before anything runs.

A suite names the learned optimizers to meta-train (or checkpoints to load), the
hand-designed baselines with the grid their learning rate is tuned over, and
the test variants: grids over task configs and horizons.  Grids expand to
cells with stable readable ids (benchopt style)::

    mnist-mlp[hidden=40,activation=relu]             a task variant
    adam[lr=0.01]                                    a baseline and its settings
    adam[lr=0.01] @ mnist-mlp[hidden=40] @ T=200     a test cell

An id lists the parameters *written in the suite*, in the order written, grid
axes and fixed values alike (unwritten defaults are left out); a baseline's id
lists ``lr`` first.  So an id is exactly what the suite says and never changes
when a plugin's defaults do (the cell's hash key does, see
:mod:`l2obench.runner`).  In a task or baseline table a list is a grid axis: to
pass a list-valued parameter, wrap it in another list (``channels = [[8, 16]]``).

Protocol (the paper's, Sec. 3): each baseline's hyperparameters are chosen per
test variant (task config and horizon) by the tuning rule on *validation*
optimizees (``validation_seeds``, split ``"validation"``, seeds from
1,000,000 on), then it is evaluated, like every other optimizer, on the *test*
optimizees (``seeds``, split ``"test"``, seeds 0, 1, ...).  Learned optimizers
are evaluated with the meta-parameters meta-training kept.

Every mistake is refused by :func:`load_suite` in one line naming the file, the
key path (``test[0].task.activation``), the value, what is allowed and, for a
misspelt plugin name, the closest registered one.
"""
from __future__ import annotations

import collections.abc
import difflib
import hashlib
import itertools
import json
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from .config import VALIDATION_SEED_BASE
from .errors import ConfigError, L2OError
from .registry import unknown_name_message

#: Validation optimizees (baseline tuning, early stopping) use seeds from here on,
#: like the meta-trainer's, so they never meet the test seeds 0, 1, 2, ...
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


class SuiteError(ConfigError):
    """A suite file is unreadable or invalid (one line: file, key path, value, what is allowed)."""


# -- the file format -------------------------------------------------------------

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
        "task": (TaskTable, Field(description="the task to meta-train on: family and config (no grids)")),
    }
    for key, info in MetaTrainConfig.model_fields.items():
        copy = pydantic.fields.FieldInfo.merge_field_infos(info)
        fields[key] = (_without_callables(info.annotation), copy)
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
    lr_grid: list[typing.Annotated[float, Field(gt=0)]] = Field(
        default_factory=list, description="learning rates tried for every baseline (a log grid)")
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per optimizer, other hyperparameters: a value is fixed, a list is a grid "
        "axis tuned with lr; an lr here replaces lr_grid for that optimizer")
    tune: Literal["final", "summed"] = Field(
        "final", description="what tuning minimises, mean over validation seeds: the loss at the last step "
        "of the horizon (the paper) or the loss summed over the horizon")


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


# -- what a validated suite expands to --------------------------------------------

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
    """A learned optimizer of the suite: meta-trained here (``train``) or loaded (``checkpoint``)."""

    name: str
    plugin: str
    params: dict[str, Any]
    version: str
    task: Optional[TaskVariant] = None
    train: Optional[dict[str, Any]] = None
    checkpoint: Optional[Path] = None
    checkpoint_hash: Optional[str] = None

    @property
    def id(self) -> str:
        return self.name


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


# -- loading and validation --------------------------------------------------------

def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _model_at(model: Any, parts: tuple[Any, ...]) -> Any:
    """The pydantic model class reached by following ``parts`` from ``model`` (None if not a model)."""
    for p in parts:
        if isinstance(p, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or p not in model.model_fields:
            return None
        model = _unwrap(model.model_fields[p].annotation)
    return model


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin in (list, typing.Union, typing.Annotated) or str(origin) == "types.UnionType":
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            annotation = args[0]
        elif origin is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return annotation


def _pydantic_message(err: dict[str, Any], root: Any, prefix: tuple[Any, ...] = ()) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("function-after",))))
    path = _loc(prefix + loc)
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        model = _model_at(root, loc[:-1])
        allowed = list(model.model_fields) if model is not None else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{path}: unknown key (value {value!r}); {hint}allowed keys: {', '.join(allowed)}"
    if err["type"] == "missing":
        return f"{path}: missing; this key is required"
    msg = err["msg"]
    for lead in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(lead)
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        msg = f"expected {ctx['expected']}"
    return f"{path}: invalid value {value!r}: {msg}"


def parse_toml(text: str, path: Path) -> dict[str, Any]:
    """The data of TOML ``text``; a syntax error is one line ``file:line: ...``."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        if not m:
            raise SuiteError(f"{path}: invalid TOML: {msg}") from None
        line = int(m.group(1))
        lines = text.splitlines()
        source = lines[line - 1].strip() if line <= len(lines) else ""
        raise SuiteError(f"{path}:{line}: invalid TOML: {msg[:m.start()].strip()} "
                         f"(column {m.group(2)}: {source!r})") from None


def load_suite(path: str | Path, registry=None) -> Suite:
    """Read, validate and expand a suite file; on any mistake, one line and nothing touched."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SuiteError(f"suite file {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"suite file {str(path)!r} cannot be read ({exc})") from None
    return parse_suite(text, path, registry)


def parse_suite(text: str, path: str | Path = "<suite>", registry=None) -> Suite:
    """Validate and expand suite ``text`` as if read from ``path`` (relative checkpoint
    paths are resolved against its directory)."""
    from .registry import get_registry

    path = Path(path)
    data = parse_toml(text, path)
    try:
        model = SuiteFile.model_validate(data)
    except pydantic.ValidationError as exc:
        # an unknown key is usually a misspelt one, and the cause of a "missing" error
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        raise SuiteError(f"{path}: {_pydantic_message(errors[0], SuiteFile)}") from None
    return _Validator(path, text, model, registry if registry is not None else get_registry()).suite()


def _grid(table: dict[str, Any]) -> list[dict[str, Any]]:
    """Cartesian product over list-valued keys, in the order written (first key slowest)."""
    keys = list(table)
    axes = [table[k] if isinstance(table[k], list) else [table[k]] for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*axes)]


def _plain(value: Any) -> Any:
    """A config value as JSON-ready data (tuples become lists)."""
    return json.loads(json.dumps(value, default=str))


class _Validator:
    """The checks pydantic cannot do alone: names against the registry, task configs
    against their family, hyperparameters against factory signatures, cross references."""

    def __init__(self, path: Path, text: str, model: SuiteFile, registry):
        self.path, self.text, self.model, self.reg = path, text, model, registry

    def fail(self, where: str, message: str) -> None:
        raise SuiteError(f"{self.path}: {where}: {message}")

    def entry(self, kind: str, name: str, where: str, extra: tuple[str, ...] = ()):
        table = self.reg.entries[kind]
        if name in table:
            return table[name]
        noun = {"optimizer": "optimizer", "learned": "learned optimizer", "task": "task family"}[kind]
        self.fail(where, unknown_name_message(noun, name, list(table) + list(extra)))

    def task(self, table: TaskTable, where: str, grid: bool) -> list[TaskVariant]:
        entry = self.entry("task", table.family, f"{where}.family")
        family = entry.obj
        written = table.config
        if not grid:
            for k, v in written.items():
                if isinstance(v, list) and not self._list_field(family, k):
                    self.fail(f"{where}.{k}", f"a list ({v!r}) is a grid, and grids are only allowed in [[test]]; "
                                              f"give one value")
        combos = _grid(written) if grid else [written]
        if grid:
            for k, v in written.items():
                if isinstance(v, list) and not v:
                    self.fail(f"{where}.{k}", "an empty grid axis; give at least one value")
        variants = []
        for combo in combos:
            try:
                config = family.config(**combo)
            except pydantic.ValidationError as exc:
                err = exc.errors()[0]
                if err["type"] == "extra_forbidden":
                    keys = list(family.config.model_fields)
                    close = difflib.get_close_matches(str(err["loc"][0]), keys, n=1)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    raise SuiteError(f"{self.path}: {where}.{_loc(err['loc'])}: unknown key of task family "
                                     f"{table.family!r} (value {err.get('input')!r}); {hint}allowed keys: "
                                     f"family, {', '.join(keys)}") from None
                raise SuiteError(f"{self.path}: {_pydantic_message(err, None, (where,))} "
                                 f"(task family {table.family!r})") from None
            except L2OError as exc:
                self.fail(where, str(exc))
            variants.append(TaskVariant(table.family, combo, _plain(config.model_dump()), entry.origin))
        return variants

    @staticmethod
    def _list_field(family, key: str) -> bool:
        info = family.config.model_fields.get(key)
        if info is None:
            return False
        origin = typing.get_origin(_strip_annotated(info.annotation))
        return origin in (list, tuple)

    def params(self, entry, params: dict[str, Any], where: str) -> None:
        """Each hyperparameter against the factory's signature, the key named in the path."""
        known = entry.parameters()
        for key, value in params.items():
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.fail(f"{where}.{key}", f"unknown parameter of {entry.name!r} (value {value!r}); {hint}"
                                            f"allowed: {', '.join(known) or 'none'}")
            try:
                entry.check_parameters({key: value})
            except L2OError as exc:
                self.fail(f"{where}.{key}", str(exc))

    def suite(self) -> Suite:
        m = self.model
        learned: dict[str, LearnedSpec] = {}
        taken: dict[str, str] = {}

        def claim(name: str, where: str) -> None:
            if name in taken:
                self.fail(where, f"the name {name!r} is already used by {taken[name]}; names must be unique")
            taken[name] = where

        for i, e in enumerate(m.meta_train):
            where = f"meta_train[{i}]"
            claim(e.name, f"{where}.name")
            entry = self.entry("learned", e.optimizer, f"{where}.optimizer")
            self.params(entry, e.params, f"{where}.params")
            (task,) = self.task(e.task, f"{where}.task", grid=False)
            train = {k: getattr(e, k) for k in _meta_train_keys()}
            learned[e.name] = LearnedSpec(e.name, e.optimizer, {**entry.parameters(), **e.params}, entry.origin,
                                          task=task, train=_plain(train))
        for i, c in enumerate(m.checkpoint):
            where = f"checkpoint[{i}]"
            claim(c.name, f"{where}.name")
            ckpt = (self.path.parent / c.path)
            from .checkpoint import load_checkpoint

            try:
                _, info = load_checkpoint(ckpt, self.reg)
            except L2OError as exc:
                self.fail(f"{where}.path", str(exc))
            entry = self.reg.get("learned", info.plugin)
            learned[c.name] = LearnedSpec(c.name, info.plugin, dict(info.hyperparameters), entry.origin,
                                          checkpoint=ckpt.resolve(), checkpoint_hash=info.content_hash)

        baselines: dict[str, list[OptimizerSpec]] = {}
        b = m.baselines
        if b is not None:
            for i, name in enumerate(b.optimizers):
                where = f"baselines.optimizers[{i}]"
                entry = self.entry("optimizer", name, where)
                claim(name, where)
            for name in b.params:
                if name not in b.optimizers:
                    close = difflib.get_close_matches(name, b.optimizers, n=1)
                    hint = f"did you mean {close[0]!r}? " if close else ""
                    self.fail(f"baselines.params.{name}", f"{name!r} is not in baselines.optimizers; {hint}"
                                                          f"listed: {', '.join(b.optimizers)}")
            for name in b.optimizers:
                entry = self.reg.get("optimizer", name)
                extra = b.params.get(name, {})
                where = f"baselines.params.{name}"
                if "lr" in extra:
                    table = {"lr": extra["lr"], **{k: v for k, v in extra.items() if k != "lr"}}
                else:
                    if "lr" not in entry.parameters():
                        self.fail(where, f"optimizer {name!r} has no lr to tune; give its settings here "
                                         f"(allowed: {', '.join(entry.parameters()) or 'none'})")
                    if not b.lr_grid:
                        self.fail("baselines.lr_grid", f"empty, and baselines.params.{name} gives no lr; "
                                                       f"give a list of learning rates")
                    table = {"lr": list(b.lr_grid), **extra}
                for k, v in table.items():
                    if isinstance(v, list) and not v:
                        self.fail(f"{where}.{k}", "an empty grid axis; give at least one value")
                specs = []
                for combo in _grid(table):
                    self.params(entry, combo, where)
                    specs.append(OptimizerSpec(name, combo, {**entry.parameters(), **combo}, entry.origin))
                baselines[name] = specs

        names = list(learned) + list(baselines)
        tests: list[TestVariant] = []
        for i, t in enumerate(m.test):
            where = f"test[{i}]"
            if t.optimizers is None:
                chosen = tuple(names)
            else:
                for j, name in enumerate(t.optimizers):
                    if name not in names:
                        self.fail(f"{where}.optimizers[{j}]", _not_in_suite(name, names))
                chosen = tuple(dict.fromkeys(t.optimizers))
            if not chosen:
                self.fail(f"{where}.optimizers", "no optimizer to test; add [[meta_train]], [[checkpoint]] or "
                                                 "[baselines]")
            for variant in self.task(t.task, f"{where}.task", grid=True):
                tests.append(TestVariant(variant, tuple(dict.fromkeys(t.horizons)), chosen, i))
        references = []
        variants = {(tv.task.id, h) for tv in tests for h in tv.horizons}
        for i, r in enumerate(m.reference):
            where = f"reference[{i}]"
            if r.optimizer not in names:
                self.fail(f"{where}.optimizer", _not_in_suite(r.optimizer, names))
            if (r.task, r.horizon) not in variants:
                known = sorted({f"{v} @ T={h}" for v, h in variants})
                close = difflib.get_close_matches(f"{r.task} @ T={r.horizon}", known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                self.fail(where, f"{r.task} @ T={r.horizon} is not a test variant of this suite; {hint}"
                                 f"variants: {', '.join(known[:8])}{' ...' if len(known) > 8 else ''}")
            references.append(r.model_dump())
        return Suite(self.path, self.text, m, learned, baselines, tests, references)


def _not_in_suite(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(str(name), names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"{name!r} is not an optimizer of this suite; {hint}its optimizers (from meta_train, checkpoint "
            f"and baselines): {', '.join(names) or 'none'}")


def _strip_annotated(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _strip_annotated(args[0])
    return annotation


def _meta_train_keys() -> list[str]:
    from .config import MetaTrainConfig

    return list(MetaTrainConfig.model_fields)
