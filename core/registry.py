"""The one registry of optimizers, learned optimizers, task families, data sets, executors
and meta-gradient estimators.

Plugins are found through the ``l2obench`` entry-point group, the built-in ones
included.  The registry owns the name rules and every error a plugin can cause,
each reported in one line that names the plugin's distribution.

Environment variables, so that a broken third-party plugin can be switched off
and everything else keeps working:

- ``L2OBENCH_DISABLE_PLUGIN_AUTOLOAD=1``: load only the built-in plugins (and
  those named in ``L2OBENCH_PLUGINS``).
- ``L2OBENCH_PLUGINS=name,name``: an allow-list; third-party plugins load only if
  their distribution or entry-point name is listed.

Names are lower-case (``adam``, ``lstm-gac``, ``mnist-mlp``), since they appear in
suite files and cell ids like ``adam[lr=0.01]``.  Hand-designed and learned
optimizers share one namespace, because suites and ``l2obench evaluate`` name
either kind the same way.
"""
from __future__ import annotations

import importlib.metadata as md
import inspect
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from .errors import ConfigError, PluginError, did_you_mean

PROJECT = "l2obench"
DISABLE_ENV = "L2OBENCH_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "L2OBENCH_PLUGINS"
NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")

#: kind -> (hook name, noun used in messages)
KINDS: dict[str, tuple[str, str]] = {
    "optimizer": ("register_optimizers", "optimizer"),
    "learned": ("register_learned_optimizers", "learned optimizer"),
    "task": ("register_task_families", "task family"),
    "dataset": ("register_datasets", "dataset"),
    "executor": ("register_executors", "executor"),
    "estimator": ("register_estimators", "estimator"),
}

#: kinds whose names must not clash with each other: suites name either optimizer kind alike
_NAMESPACES: dict[str, tuple[str, ...]] = {
    "optimizer": ("optimizer", "learned"),
    "learned": ("optimizer", "learned"),
    "task": ("task",),
    "dataset": ("dataset",),
    "executor": ("executor",),
    "estimator": ("estimator",),
}

#: the keyword a factory takes to receive the task's parameter groups (not a hyperparameter)
GROUPS_KEYWORD = "groups"


@dataclass(frozen=True)
class Entry:
    """One registered thing: its name, kind, the object and where it came from."""

    name: str
    kind: str
    obj: Any
    plugin: str
    distribution: str
    version: str

    @property
    def origin(self) -> str:
        return f"{self.distribution} {self.version}"

    def parameters(self) -> dict[str, Any]:
        """Parameter names and defaults (a factory's keywords, a family's config fields)."""
        if self.kind == "task":
            return {
                n: (None if f.is_required() else f.get_default(call_default_factory=True))
                for n, f in self.obj.config.model_fields.items()
            }
        if self.kind == "dataset":
            return {}
        return {
            p.name: (None if p.default is inspect.Parameter.empty else p.default)
            for p in inspect.signature(self.obj).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and not (self.kind == "optimizer" and p.name == GROUPS_KEYWORD)
        }

    @property
    def uses_groups(self) -> bool:
        """Whether a hand-designed optimizer's factory takes the task's parameter groups
        (a keyword-only ``groups``), as layer-wise optimizers do."""
        return self.kind == "optimizer" and GROUPS_KEYWORD in inspect.signature(self.obj).parameters

    def check_parameters(self, params: dict[str, Any]) -> None:
        """Refuse unknown hyperparameters, and values that break the factory's declaration
        (:mod:`l2obench.hyperparameters`), with one line."""
        known = self.parameters()
        noun = KINDS[self.kind][1]
        takes_any = self.kind != "task" and any(
            p.kind is p.VAR_KEYWORD for p in inspect.signature(self.obj).parameters.values())
        for key, value in params.items():
            if key not in known and not takes_any:
                raise ConfigError(
                    f"{noun} {self.name!r}: unknown parameter {key!r} (value {value!r}); "
                    f"{did_you_mean(key, known)}allowed: {', '.join(known) or 'none'}"
                )
        if self.kind in ("optimizer", "learned", "estimator"):
            from . import hyperparameters

            skip = (GROUPS_KEYWORD,) if self.kind == "optimizer" else ()
            hyperparameters.check(self.obj, params, f"{noun} {self.name!r}", skip=skip)

    def create(self, task_groups=None, /, **params):
        """Build the thing with validated parameters (a Task for a task family).

        A learned optimizer is given its registered ``name`` and its ``hyperparameters``
        (every keyword of the factory, defaults included), so it can be saved and rebuilt
        from itself alone.  ``task_groups`` (a task's named parameter slices) reach a
        hand-designed optimizer whose factory takes them (:attr:`uses_groups`)."""
        if self.kind == "task":
            fam = self.obj
            return fam.build(fam.validate(**params))
        if self.kind == "dataset":
            return self.obj
        self.check_parameters(params)
        extra = {GROUPS_KEYWORD: dict(task_groups or {})} if self.uses_groups else {}
        try:
            obj = self.obj(**params, **extra)
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{KINDS[self.kind][1]} {self.name!r}: {exc}") from None
        if self.kind == "learned":
            obj.name = self.name
            obj.hyperparameters = self.bound_parameters(params)
        return obj

    def bound_parameters(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` with the factory's defaults filled in (what a checkpoint records)."""
        bound = inspect.signature(self.obj).bind_partial(**params)
        bound.apply_defaults()
        out = dict(bound.arguments)
        for p in inspect.signature(self.obj).parameters.values():
            if p.kind is p.VAR_KEYWORD:
                out.update(out.pop(p.name, {}))
            elif p.kind is p.VAR_POSITIONAL:
                out.pop(p.name, None)
        return out


@dataclass
class _Source:
    plugin: str
    distribution: str
    version: str

    def __str__(self) -> str:
        return f"plugin {self.plugin!r} of distribution {self.distribution}"


class _RegisterError(PluginError):
    """Raised by the ``register`` callback; passes through the hook unwrapped."""


#: What every message about a third-party plugin tells the user to do.
SWITCH_OFF = f"uninstall it, or switch it off with {DISABLE_ENV}=1 or an allow-list in {ALLOW_ENV}"
SEE_HOOKS = "the hooks and their signatures are under 'Writing a plugin' in the l2obench README"


def normalize(name: str) -> str:
    """A distribution or plugin name compared the way pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def allow_list() -> set[str]:
    """The normalized names in ``L2OBENCH_PLUGINS`` (empty: no allow-list)."""
    return {normalize(s.strip()) for s in os.environ.get(ALLOW_ENV, "").split(",") if s.strip()}


def autoload_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class Registry:
    """Loads plugins and holds what they register, by kind and name.

    ``plugins`` are registered inline after the installed ones (a module or any
    object with hook implementations); ``entry_points=False`` skips the
    installed plugins, built-in ones included.
    """

    def __init__(self, plugins: Iterable[Any] = (), *, entry_points: bool = True):
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._sources: dict[str, _Source] = {}
        self.entries: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        #: third-party plugins not loaded because of the environment variables, as "dist (entry point)"
        self.skipped: list[str] = []
        if entry_points:
            self._load_entry_points()
        for plugin in plugins:
            self.add_plugin(plugin)
        self._collect()

    # -- loading ---------------------------------------------------------
    def _load_entry_points(self) -> None:
        allow = allow_list()
        disabled = autoload_disabled()
        found: list[tuple[md.EntryPoint, str, str]] = []
        for ep in md.entry_points(group=PROJECT):
            dist = ep.dist.name if ep.dist is not None else "<unknown>"
            version = ep.dist.version if ep.dist is not None else "?"
            found.append((ep, dist, version))
        # Built-ins first, then by distribution: the order of loading (and of any
        # duplicate-name message) does not depend on the order of sys.path.
        found.sort(key=lambda f: (normalize(f[1]) != PROJECT, normalize(f[1]), f[0].name))
        known = {PROJECT} | {normalize(d) for _, d, _ in found} | {normalize(ep.name) for ep, _, _ in found}
        unknown = sorted(allow - known)
        if unknown:
            third_party = sorted({d for _, d, _ in found if normalize(d) != PROJECT})
            raise PluginError(
                f"{ALLOW_ENV} names {', '.join(unknown)}, which no installed distribution provides; "
                f"installed plugin distributions: {', '.join(third_party) or 'none besides l2obench'}"
            )
        for ep, dist, version in found:
            if normalize(dist) != PROJECT:
                listed = normalize(dist) in allow or normalize(ep.name) in allow
                if (allow or disabled) and not listed:
                    self.skipped.append(f"{dist} ({ep.name})")
                    continue
            try:
                module = ep.load()
            except (Exception, SystemExit) as exc:
                raise PluginError(
                    f"plugin {ep.name!r} of distribution {dist} {version} failed to import "
                    f"({type(exc).__name__}: {_one_line(exc)}); {SWITCH_OFF}"
                ) from None
            self.add_plugin(module, name=ep.name, distribution=dist, version=version)

    def add_plugin(self, plugin: Any, name: str | None = None, distribution: str | None = None,
                   version: str | None = None) -> None:
        """Register a plugin object or module (used for entry points and inline plugins)."""
        if name is None:
            base = getattr(plugin, "__name__", None) or type(plugin).__name__
            name, n = base, 1
            while self.pm.has_plugin(name):
                n += 1
                name = f"{base}#{n}"
        source = _Source(name, distribution or "<inline>", version or "-")
        if self.pm.has_plugin(name):
            raise PluginError(
                f"two plugins are named {name!r}: one of distribution {self._sources[name].distribution} "
                f"and one of {source.distribution}; rename one entry point, or {SWITCH_OFF}"
            )
        self._check_hook_names(plugin, source)
        try:
            self.pm.register(plugin, name=name)
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            raise PluginError(f"{source} has a bad hook: {_one_line(exc)}; {SEE_HOOKS}") from None
        self._sources[name] = source

    def _check_hook_names(self, plugin: Any, source: _Source) -> None:
        """Catch the two silent mistakes: a misspelt hook, and a hook without ``@hookimpl``."""
        hooks = sorted(n for n, caller in vars(self.pm.hook).items() if getattr(caller, "spec", None))
        for attr in dir(plugin):
            marked = self.pm.parse_hookimpl_opts(plugin, attr) is not None
            if marked and attr not in hooks:
                hint = did_you_mean(attr, hooks)
                raise PluginError(
                    f"{source} implements {attr!r}, which is not an l2obench hook; {hint}{SEE_HOOKS}"
                )
            if not marked and attr in hooks and callable(getattr(plugin, attr, None)):
                raise PluginError(
                    f"{source} defines {attr}() without the @l2obench.hookimpl decorator, so it would "
                    f"never be called; decorate it"
                )

    def _collect(self) -> None:
        for kind, (hook_name, noun) in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            # Registration order: built-ins first, then third-party, then inline plugins.
            for impl in hook.get_hookimpls():
                src = self._sources.get(impl.plugin_name, _Source(impl.plugin_name, "<inline>", "-"))
                if "register" not in impl.argnames:
                    raise PluginError(
                        f"{src} {src.version} implements {hook_name}() without the 'register' argument, so "
                        f"it could register nothing; write it as {hook_name}(register) and call "
                        f"register(name, obj); {SEE_HOOKS}"
                    )
                register = self._register_callback(kind, noun, src)
                try:
                    returned = impl.function(register=register)
                except _RegisterError:
                    raise
                except Exception as exc:
                    raise PluginError(
                        f"{src} {src.version} raised in {hook_name} "
                        f"({type(exc).__name__}: {_one_line(exc)}); {SWITCH_OFF}"
                    ) from None
                if returned is not None:
                    raise PluginError(
                        f"{src} {src.version}: {hook_name} returned a {type(returned).__name__} instead of "
                        f"calling register(name, obj) for each entry, so nothing it returned is registered; "
                        f"call register and return nothing"
                    )

    def _register_callback(self, kind: str, noun: str, src: _Source) -> Callable[[str, Any], None]:
        def register(name: str, obj: Any) -> None:
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise _RegisterError(
                    f"{src} registered the {noun} name {name!r}: a name starts with a lower-case letter "
                    f"and has only lower-case letters, digits, '-', '_' or '.'"
                )
            if kind == "task":
                from .task import TaskFamily

                if not isinstance(obj, TaskFamily):
                    raise _RegisterError(
                        f"{src} registered task family {name!r} as a {type(obj).__name__}; "
                        f"register a l2obench.TaskFamily"
                    )
                if not obj.name:
                    object.__setattr__(obj, "name", name)
            elif kind == "dataset":
                from .datasets import Dataset

                if not isinstance(obj, Dataset):
                    raise _RegisterError(
                        f"{src} registered dataset {name!r} as a {type(obj).__name__} without "
                        f"'description', 'classes', 'shape' and 'load(split)'; register an l2obench.datasets.Dataset"
                    )
            elif not callable(obj):
                raise _RegisterError(
                    f"{src} registered {noun} {name!r} as a {type(obj).__name__}; register a factory function"
                )
            for other_kind in _NAMESPACES[kind]:
                other = self.entries[other_kind].get(name)
                if other is not None:
                    raise _RegisterError(
                        f"{noun} {name!r} is registered twice: as {_a(KINDS[other_kind][1])} by distribution "
                        f"{other.distribution} (plugin {other.plugin!r}) and as {_a(noun)} by distribution "
                        f"{src.distribution} (plugin {src.plugin!r}); uninstall one, or use {ALLOW_ENV} "
                        f"to choose"
                    )
            self.entries[kind][name] = Entry(name, kind, obj, src.plugin, src.distribution, src.version)

        return register

    # -- lookup ----------------------------------------------------------
    def get(self, kind: str, name: str) -> Entry:
        table = self.entries[kind]
        try:
            return table[name]
        except KeyError:
            raise ConfigError(unknown_name_message(KINDS[kind][1], name, table)) from None

    def optimizer(self, name: str, groups=None, /, **hyperparameters):
        """A hand-designed optimizer ``Optimizer`` built with validated hyperparameters
        (and the task's parameter ``groups``, for an optimizer that uses them)."""
        return self.get("optimizer", name).create(groups, **hyperparameters)

    def learned(self, name: str, **hyperparameters):
        """A fresh learned optimizer (meta-parameters initialised by the plugin)."""
        return self.get("learned", name).create(**hyperparameters)

    def estimator(self, name: str, **settings):
        """The meta-gradient estimator ``name`` built with validated ``settings``."""
        return self.get("estimator", name).create(**settings)

    def family(self, name: str):
        return self.get("task", name).obj

    def dataset(self, name: str):
        """The registered data set ``name`` (an :class:`l2obench.datasets.Dataset`)."""
        return self.get("dataset", name).obj

    def task(self, family: str, **config):
        """The Task of ``family`` with a validated ``config``."""
        return self.get("task", family).create(**config)

    def all_entries(self) -> list[Entry]:
        return [e for table in self.entries.values() for e in table.values()]


def unknown_name_message(noun: str, name: Any, known: Iterable[str]) -> str:
    known = sorted(known)
    return f"unknown {noun} {name!r}: {did_you_mean(name, known)}registered: {', '.join(known) or 'none'}"


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (pluggy's and some import errors span several)."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


_default: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry of installed plugins, loaded once."""
    global _default
    if _default is None or refresh:
        _default = Registry()
    return _default
