"""The public API for plugins: everything a plugin needs, in one module.

The built-in plugins import from here alone (a test enforces it), so a
third-party plugin can do whatever they do::

    from l2obench.api import Optimizer, chain, scale, hookimpl

Every name is re-exported at the top level (``l2obench.Optimizer``).  The groups:

- **hooks**: :data:`hookimpl`, the marker of hook implementations
  (``register_optimizers``, ``register_learned_optimizers``,
  ``register_task_families``, ``register_datasets``, ``register_executors``).
- **optimizers**: :class:`Optimizer` (``init`` / ``update``, capability flags),
  :data:`State`, the combinators :func:`chain`, :func:`scale`, :func:`stateless`,
  the state helpers :func:`step_count`, :func:`zeros_like_state`, :func:`prefixed`,
  :func:`unprefixed`, the transforms the built-in baselines are chained from, and
  :func:`from_torch_optimizer`, which wraps a torch.optim-style optimizer class.
- **hyperparameters**: the annotations that declare their bounds (:data:`LearningRate`,
  :data:`Beta`, :data:`Positive`, :data:`NonNegative`, :data:`PositiveInt`), checked for the
  command line, suites and checkpoints alike before a factory runs.
- **learned optimizers**: :class:`LearnedOptimizer` and its :class:`Capabilities`.
- **tasks**: :class:`Task`, :class:`Renderable` (a task whose test cells leave images),
  :class:`TaskFamily`, :class:`TaskConfig`,
  :func:`seed_generator`, :data:`SPLITS`.
- **data sets**: :class:`Dataset`, and what a data-set plugin is built from:
  :class:`DataFile` and :func:`read_data_file` (``L2OBENCH_DATA_DIR`` or a checksummed
  download into :func:`data_cache_dir`; :func:`data_dir`, :data:`DATA_ENV`), the IDX
  reader :func:`parse_idx` and :class:`IDXDataset`; for task families,
  :func:`select_classes` and :func:`images_to_float`.
- **executors**: :class:`Executor`.
- **errors and switches**: :class:`L2OError` and its kinds, :class:`L2OWarning`,
  :func:`env_switch`; :func:`get_registry`, to look up what other plugins registered.
"""
from .devices import cpu_model
from .datasets import (DATA_ENV, DataFile, Dataset, IDXDataset, data_cache_dir, data_dir, images_to_float, parse_idx,
                       read_data_file, select_classes)
from .env import env_switch
from .errors import CheckpointError, ConfigError, DataError, L2OError, L2OWarning, PluginError
from .executor import Executor
from .from_torch import from_torch_optimizer
from .hookspecs import hookimpl
from .hyperparameters import Beta, LearningRate, NonNegative, Positive, PositiveInt
from .learned import Capabilities, LearnedOptimizer
from .optimizer import Optimizer, State, chain, prefixed, scale, stateless, step_count, unprefixed, zeros_like_state
from .registry import get_registry
from .task import SPLITS, Renderable, Split, Task, TaskConfig, TaskFamily, seed_generator
from .transforms import (add_decayed_weights, decoupled_weight_decay, scale_by_adagrad, scale_by_adam,
                         scale_by_rms, trace)

__all__ = [
    "hookimpl",
    "Optimizer", "State", "chain", "scale", "stateless", "step_count", "zeros_like_state", "prefixed",
    "unprefixed", "add_decayed_weights", "decoupled_weight_decay", "scale_by_adagrad", "scale_by_adam",
    "scale_by_rms", "trace", "from_torch_optimizer",
    "LearningRate", "Beta", "Positive", "NonNegative", "PositiveInt",
    "LearnedOptimizer", "Capabilities",
    "Task", "Renderable", "TaskFamily", "TaskConfig", "Split", "SPLITS", "seed_generator",
    "Dataset", "DATA_ENV", "DataFile", "IDXDataset", "read_data_file", "parse_idx", "data_dir", "data_cache_dir",
    "images_to_float", "select_classes",
    "Executor",
    "L2OError", "ConfigError", "PluginError", "CheckpointError", "DataError", "L2OWarning", "env_switch", "cpu_model",
    "get_registry",
]
