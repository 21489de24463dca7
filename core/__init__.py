"""l2obench: benchmark how well optimizers, learned and hand-designed, generalize."""
from importlib.metadata import PackageNotFoundError, version as _version

from .errors import CheckpointError, ConfigError, DataError, L2OError, PluginError
from .hookspecs import hookimpl
from .learned import LearnedOptimizer
from .optimizer import Optimizer, chain, scale, stateless
from .registry import Registry, get_registry
from .task import Task, TaskConfig, TaskFamily

try:
    __version__ = _version("l2obench")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "CheckpointError", "ConfigError", "DataError", "L2OError", "PluginError",
    "hookimpl", "LearnedOptimizer", "Optimizer", "chain", "scale", "stateless",
    "Registry", "get_registry", "Task", "TaskConfig", "TaskFamily", "load_results",
    "__version__",
]


def load_results(directory):
    """The tidy results table of a suite run directory, as a pandas DataFrame."""
    from .store import load_results as _load

    return _load(directory)
