"""l2obench: benchmark how well optimizers, learned and hand-designed, generalize."""
from importlib.metadata import PackageNotFoundError, version as _version

from .errors import CheckpointError, ConfigError, DataError, L2OError, L2OWarning, PluginError
from .hookspecs import hookimpl
from .registry import Registry, get_registry

# The public plugin API (l2obench.api) is re-exported here.  Its names need torch, so
# they are imported on first use: commands that never touch a tensor (``l2obench
# report``, ``schema``, ``--help``) start fast.
_API = (
    "Optimizer", "State", "chain", "scale", "stateless", "step_count", "zeros_like_state", "prefixed",
    "unprefixed", "add_decayed_weights", "decoupled_weight_decay", "scale_by_adagrad", "scale_by_adam",
    "scale_by_rms", "trace", "from_torch_optimizer", "steps_to_replay", "replaying", "LearningRate", "Beta", "Positive", "NonNegative", "PositiveInt", "LearnedOptimizer",
    "Capabilities", "Task", "Renderable", "TaskFamily", "TaskConfig", "Split", "SPLITS", "seed_generator", "task_metrics",
    "heldout_metric", "module_task", "ModuleTask", "ModuleBatch", "Dataset", "DATA_ENV",
    "DataFile", "IDXDataset", "read_data_file", "parse_idx", "data_dir", "data_cache_dir", "images_to_float",
    "select_classes", "Executor", "env_switch", "cpu_model",
    "seed_scores", "performance_profile", "rank_summary", "robust_summary", "meta_seed_spread", "higher_is_better",
    "bootstrap_interval", "paired_log_ratio_interval", "two_level_interval", "Interval",
    "Estimator", "Estimate", "MetaProblem", "HeldOutTask", "truncated_unroll", "Unroll", "Particles", "PopulationState",
    "start_population", "run_truncation", "restart_from", "antithetic", "flat_meta_params", "split_flat",
)


def __getattr__(name):
    if name not in _API:
        raise AttributeError(f"module 'l2obench' has no attribute {name!r}")
    from . import api

    value = getattr(api, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))

try:
    __version__ = _version("l2obench")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "CheckpointError", "ConfigError", "DataError", "L2OError", "L2OWarning", "PluginError",
    "hookimpl", *_API, "Registry", "get_registry", "load_results", "time_to_target",
    "__version__",
]


def load_results(directory):
    """The tidy results table of a suite run directory, as a pandas DataFrame."""
    from .store import load_results as _load

    return _load(directory)


def time_to_target(results, target=None, metric="loss", kind="test"):
    """Per cell of a results table, the steps and seconds to reach a target (AlgoPerf); see
    :func:`l2obench.targets.time_to_target`."""
    from .targets import time_to_target as _time_to_target

    return _time_to_target(results, target, metric, kind)
