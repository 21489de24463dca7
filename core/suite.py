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

The file format is :mod:`l2obench.suite_format`; what a suite expands to (ids,
variants, specs) is :mod:`l2obench.suite_specs`; both are importable from here.
"""
from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import pydantic
from pydantic import BaseModel

from .config import KEYLESS_DEFAULTS
from .errors import ConfigError, L2OError, did_you_mean
from .registry import unknown_name_message
from .suite_format import (Baselines, CheckpointEntry, MetaTrainEntry, Name, Reference, Seeds, SuiteFile,
                           SuiteSection, TaskTable, TestEntry, json_schema)
from .suite_specs import (LearnedSpec, OptimizerSpec, Suite, TaskVariant, TestVariant, expand_grid, format_value,
                          make_id, plain)

__all__ = [
    "load_suite", "parse_suite", "parse_toml", "SuiteError",
    # the file format (l2obench.suite_format)
    "Seeds", "Name", "SuiteSection", "TaskTable", "MetaTrainEntry", "CheckpointEntry", "Baselines", "TestEntry",
    "Reference", "SuiteFile", "json_schema",
    # what a suite expands to (l2obench.suite_specs)
    "format_value", "make_id", "TaskVariant", "OptimizerSpec", "LearnedSpec", "TestVariant", "Suite",
]


class SuiteError(ConfigError):
    """A suite file is unreadable or invalid (one line: file, key path, value, what is allowed)."""


# -- error messages ------------------------------------------------------------------

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
        hint = did_you_mean(str(loc[-1]), allowed)
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


# -- loading and validation --------------------------------------------------------

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
        noun = {"optimizer": "optimizer", "learned": "learned optimizer", "task": "task family",
                "estimator": "estimator"}[kind]
        self.fail(where, unknown_name_message(noun, name, list(table) + list(extra)))

    def task(self, table: TaskTable, where: str, meta_train: bool = False) -> list[TaskVariant]:
        """The variants of a task table: a list is a grid axis, in [[test]] and [[meta_train]] alike
        (there, a distribution that meta-training draws one variant from per episode), except that
        in [[meta_train]] a list given to a list-valued parameter (``channels = [4, 4]``) is its value."""
        entry = self.entry("task", table.family, f"{where}.family")
        family = entry.obj
        written = table.config
        if meta_train:
            written = {k: [v] if isinstance(v, list) and self._list_field(family, k) else v for k, v in written.items()}
        combos = expand_grid(written)
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
                    hint = did_you_mean(str(err["loc"][0]), keys)
                    raise SuiteError(f"{self.path}: {where}.{_loc(err['loc'])}: unknown key of task family "
                                     f"{table.family!r} (value {written.get(str(err['loc'][0]), err.get('input'))!r}); {hint}allowed keys: "
                                     f"family, {', '.join(keys)}") from None
                raise SuiteError(f"{self.path}: {_pydantic_message(err, None, (where,))} "
                                 f"(task family {table.family!r})") from None
            except L2OError as exc:
                self.fail(where, str(exc))
            variants.append(TaskVariant(table.family, combo, plain(config.model_dump()), entry.origin))
        return variants

    @staticmethod
    def _list_field(family, key: str) -> bool:
        info = family.config.model_fields.get(key)
        if info is None:
            return False
        origin = typing.get_origin(_strip_annotated(info.annotation))
        return origin in (list, tuple)

    def estimator(self, e, where: str) -> None:
        """The entry's estimator: a registered name, valid settings, and fit for its objective and horizon."""
        from .estimator import check_estimator

        entry = self.entry("estimator", e.estimator, f"{where}.estimator")
        self.params(entry, e.estimator_params, f"{where}.estimator_params")
        try:
            check_estimator(entry.create(**e.estimator_params), e.estimator, e.objective, e.horizon, where)
        except L2OError as exc:
            self.fail(f"{where}.estimator_params", str(exc).removeprefix(f"{where}: "))

    def objective(self, e, variants, where: str) -> None:
        """A held-out objective needs every variant meta-trained on to declare its metric."""
        from .config import TRAIN_LOSS
        from .estimator import check_objective

        if e.objective == TRAIN_LOSS:
            return
        for v in variants:
            try:
                check_objective(e.objective, self.reg.task(v.family, **v.config), where)
            except L2OError as exc:
                self.fail(f"{where}.objective", str(exc).removeprefix(f"{where}: "))

    def across_settings(self, e, where: str) -> None:
        """The meta-training settings' checks across keys (``min_horizon`` against ``horizon``)."""
        from .config import MetaTrainConfig

        try:
            MetaTrainConfig.from_params(**{k: getattr(e, k) for k in _meta_train_keys() if k != "seed"})
        except L2OError as exc:
            self.fail(where, str(exc).removeprefix("meta-train config: "))

    def params(self, entry, params: dict[str, Any], where: str) -> None:
        """Each hyperparameter against the factory's signature, the key named in the path."""
        known = entry.parameters()
        for key, value in params.items():
            if key not in known:
                hint = did_you_mean(key, list(known))
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
            try:  # the factory's own checks across parameters (building one is cheap)
                entry.create(**e.params)
            except L2OError as exc:
                self.fail(f"{where}.params", str(exc))
            variants = self.task(e.task, f"{where}.task", meta_train=True)
            train = {k: getattr(e, k) for k in _meta_train_keys()
                     if not (k in KEYLESS_DEFAULTS and getattr(e, k) == KEYLESS_DEFAULTS[k])}
            self.estimator(e, where)
            self.across_settings(e, where)
            self.objective(e, variants, where)
            params = {**entry.parameters(), **e.params}
            distribution = tuple(variants) if len(variants) > 1 else ()
            if isinstance(e.seed, list):  # one meta-training run per seed
                for s in e.seed:
                    spec = LearnedSpec(e.name, e.optimizer, params, entry.origin, task=variants[0],
                                       train=plain({**train, "seed": s}), meta_seed=s, distribution=distribution)
                    learned[spec.id] = spec
            else:
                learned[e.name] = LearnedSpec(e.name, e.optimizer, params, entry.origin, task=variants[0],
                                              train=plain(train), distribution=distribution)
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
                    hint = did_you_mean(name, b.optimizers)
                    self.fail(f"baselines.params.{name}", f"{name!r} is not in baselines.optimizers; {hint}"
                                                          f"listed: {', '.join(b.optimizers)}")
            if b.search == "sobol":
                self.search_space(b)
            elif b.trials is not None or b.space:
                self.fail("baselines.trials" if b.trials is not None else "baselines.space",
                          'only for search = "sobol"; a grid is lr_grid x the list-valued params')
            for name in b.optimizers:
                entry = self.reg.get("optimizer", name)
                extra = b.params.get(name, {})
                where = f"baselines.params.{name}"
                if b.search == "sobol":
                    baselines[name] = [OptimizerSpec(name, combo, {**entry.parameters(), **combo}, entry.origin)
                                       for combo in self.sobol_points(b, entry, extra, where)]
                    continue
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
                for combo in expand_grid(table):
                    self.params(entry, combo, where)
                    specs.append(OptimizerSpec(name, combo, {**entry.parameters(), **combo}, entry.origin))
                baselines[name] = specs

        names = list(dict.fromkeys(spec.name for spec in learned.values())) + list(baselines)
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
            for variant in self.task(t.task, f"{where}.task"):
                tests.append(TestVariant(variant, tuple(dict.fromkeys(t.horizons)), chosen, i))
        references = []
        variants = {(tv.task.id, h) for tv in tests for h in tv.horizons}
        for i, r in enumerate(m.reference):
            where = f"reference[{i}]"
            if r.optimizer not in names:
                self.fail(f"{where}.optimizer", _not_in_suite(r.optimizer, names))
            if (r.task, r.horizon) not in variants:
                known = sorted({f"{v} @ T={h}" for v, h in variants})
                hint = did_you_mean(f"{r.task} @ T={r.horizon}", known)
                self.fail(where, f"{r.task} @ T={r.horizon} is not a test variant of this suite; {hint}"
                                 f"variants: {', '.join(known[:8])}{' ...' if len(known) > 8 else ''}")
            references.append(r.model_dump())
        suite = Suite(self.path, self.text, m, learned, baselines, tests, references)
        self.heldout_metrics(suite)
        return suite

    def search_space(self, b) -> None:
        """``search = "sobol"`` needs trials and a space with lr, each range low < high."""
        if b.trials is None:
            self.fail("baselines.trials", 'missing; search = "sobol" tries this many settings per baseline')
        if "lr" not in b.space:
            self.fail("baselines.space", 'needs lr = [low, high]; search = "sobol" always searches the learning '
                                         'rate')
        if b.lr_grid:
            self.fail("baselines.lr_grid", 'a grid, but search = "sobol" samples lr from baselines.space.lr; '
                                           'remove one')
        known = {k for name in b.optimizers for k in self.reg.get("optimizer", name).parameters()}
        for key, (low, high) in b.space.items():
            if key not in known:
                self.fail(f"baselines.space.{key}", f"no baseline has this hyperparameter; "
                                                    f"{did_you_mean(key, sorted(known))}theirs: "
                                                    f"{', '.join(sorted(known))}")
            if not low < high or (key == "lr" and low <= 0):
                self.fail(f"baselines.space.{key}", f"invalid range [{low}, {high}]: give [low, high] with "
                                                    f"low < high{' and low > 0' if key == 'lr' else ''}")

    def sobol_points(self, b, entry, fixed: dict[str, Any], where: str) -> list[dict[str, Any]]:
        """``b.trials`` settings of one baseline from a scrambled Sobol sequence (seed
        ``b.search_seed``) over the space's ranges it has and ``fixed`` does not set: lr
        log-uniform, the others uniform, each rounded to 3 significant digits for readable ids."""
        import math

        import torch

        axes = [k for k in b.space if k in entry.parameters() and k not in fixed]
        if "lr" not in axes:
            self.fail(f"{where}.lr", "fixed here, but search = \"sobol\" searches lr; remove it from params")
        engine = torch.quasirandom.SobolEngine(len(axes), scramble=True, seed=b.search_seed)
        points = engine.draw(b.trials, dtype=torch.float64).tolist()
        combos = []
        for u in points:
            combo: dict[str, Any] = {}
            for k, x in zip(axes, u):
                low, high = b.space[k]
                v = math.exp(math.log(low) + x * (math.log(high) - math.log(low))) if k == "lr" else low + x * (
                    high - low)
                combo[k] = float(f"{v:.3g}")
            combo.update(fixed)
            self.params(entry, combo, where)
            combos.append(combo)
        return combos

    def heldout_metrics(self, suite: Suite) -> None:
        """A setting that reads a held-out metric needs every task variant it concerns to
        report it: tuning, the baselines' variants; the ranking and the target, every one."""
        from .task import heldout_metric, task_metrics

        wanted = []
        if suite.tune_rule.startswith("heldout_"):
            wanted.append(("baselines.tune", suite.tune_rule, lambda tv: bool(set(tv.optimizers) & set(baselines))))
        if suite.rank_rule.startswith("heldout_"):
            wanted.append(("suite.rank", suite.rank_rule, lambda tv: True))
        if suite.target["metric"].startswith("heldout_"):
            wanted.append(("suite.target.metric", suite.target["metric"], lambda tv: True))
        baselines = suite.baselines
        reported: dict[str, tuple[str, ...]] = {}
        for where, metric, concerns in wanted:
            for tv in suite.tests:
                if not concerns(tv):
                    continue
                if tv.task.id not in reported:
                    try:
                        task = self.reg.task(tv.task.family, **tv.task.config)
                    except L2OError as exc:
                        self.fail(f"test[{tv.entry}].task", str(exc))
                    reported[tv.task.id] = tuple(heldout_metric(n) for n in task_metrics(task))
                if metric not in reported[tv.task.id]:
                    have = ", ".join(reported[tv.task.id]) or "none"
                    self.fail(where, f"{metric!r} needs held-out metrics, but task variant {tv.task.id} "
                                     f"(test[{tv.entry}]) reports {have}; choose final or summed, or "
                                     f"test only tasks with held-out data")


def _not_in_suite(name: str, names: list[str]) -> str:
    hint = did_you_mean(str(name), names)
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
