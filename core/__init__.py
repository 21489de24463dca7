"""l2obench: benchmark how well optimizers, learned and hand-designed, generalize."""
from importlib.metadata import PackageNotFoundError, version as _version

from .errors import CheckpointError, ConfigError, DataError, L2OError, L2OWarning, PluginError
from .hookspecs import hookimpl
from .registry import Registry, get_registry

# The names below need torch; they are imported on first use, so that commands
# that never touch a tensor (``l2obench report``, ``schema``, ``--help``) start fast.
_LAZY = {
    "LearnedOptimizer": "learned",
    "Optimizer": "optimizer", "chain": "optimizer", "scale": "optimizer", "stateless": "optimizer",
    "Task": "task", "TaskConfig": "task", "TaskFamily": "task",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'l2obench' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

try:
    __version__ = _version("l2obench")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "CheckpointError", "ConfigError", "DataError", "L2OError", "L2OWarning", "PluginError",
    "hookimpl", "LearnedOptimizer", "Optimizer", "chain", "scale", "stateless",
    "Registry", "get_registry", "Task", "TaskConfig", "TaskFamily", "load_results",
    "__version__",
]


def load_results(directory):
    """The tidy results table of a suite run directory, as a pandas DataFrame."""
    from .store import load_results as _load

    return _load(directory)
