"""The public API for plugins: everything a plugin needs, in one module.

The built-in plugins import from here alone (a test enforces it), so a
third-party plugin can do whatever they do::

    from l2obench.api import Optimizer, chain, scale, hookimpl

Every name is re-exported at the top level (``l2obench.Optimizer``).  The groups:

- **hooks**: :data:`hookimpl`, the marker of hook implementations
  (``register_optimizers``, ``register_learned_optimizers``,
  ``register_task_families``, ``register_datasets``, ``register_executors``,
  ``register_estimators``).
- **optimizers**: :class:`Optimizer` (``init`` / ``update``, capability flags),
  :data:`State`, the combinators :func:`chain`, :func:`scale`, :func:`stateless`,
  the state helpers :func:`step_count`, :func:`zeros_like_state`, :func:`prefixed`,
  :func:`unprefixed`, the transforms the built-in baselines are chained from,
  :func:`from_torch_optimizer`, which wraps a torch.optim-style optimizer class, and
  :func:`steps_to_replay` / :func:`replaying`, which mark an unroll's steps whose ``replay``
  follows.
- **hyperparameters**: the annotations that declare their bounds (:data:`LearningRate`,
  :data:`Beta`, :data:`Positive`, :data:`NonNegative`, :data:`PositiveInt`), checked for the
  command line, suites and checkpoints alike before a factory runs.
- **learned optimizers**: :class:`LearnedOptimizer` and its :class:`Capabilities`.
- **tasks**: :class:`Task`, :class:`Renderable` (a task whose test cells leave images),
  :class:`TaskFamily`, :class:`TaskConfig`,
  :func:`seed_generator`, :data:`SPLITS`; :func:`task_metrics` (the held-out metrics a
  task declares) and :func:`heldout_metric` (their name in the results table); :func:`module_task`, a Task from an
  ordinary ``torch.nn.Module`` (its :class:`ModuleTask` and :class:`ModuleBatch`).
- **data sets**: :class:`Dataset`, and what a data-set plugin is built from:
  :class:`DataFile` and :func:`read_data_file` (``L2OBENCH_DATA_DIR`` or a checksummed
  download into :func:`data_cache_dir`; :func:`data_dir`, :data:`DATA_ENV`), the IDX
  reader :func:`parse_idx` and :class:`IDXDataset`; for task families,
  :func:`select_classes` and :func:`images_to_float`.
- **executors**: :class:`Executor`.
- **comparing results** (over ``l2obench.load_results(DIR)``): :func:`seed_scores`,
  :func:`performance_profile`, :func:`rank_summary`, :func:`robust_summary`,
  :func:`meta_seed_spread`, :func:`higher_is_better`; the seeded bootstrap intervals
  :func:`bootstrap_interval`, :func:`paired_log_ratio_interval`, :func:`two_level_interval`
  and their :class:`Interval`.
- **meta-gradient estimators**: :class:`Estimator` (``episode(problem)`` yielding one
  :class:`Estimate` per truncation) and the :class:`MetaProblem` it is given; the truncated
  unroll of Eq. 3 (:func:`truncated_unroll`, :class:`Unroll`) truncated BPTT is built from; the
  population machinery evolution strategies share (:class:`Particles`, :class:`PopulationState`,
  :func:`start_population`, :func:`run_truncation`, :func:`restart_from`, :func:`antithetic`,
  :func:`flat_meta_params`, :func:`split_flat`); :class:`HeldOutTask`, a task whose
  ``evaluate(params, split)`` a held-out objective reads.
- **errors and switches**: :class:`L2OError` and its kinds, :class:`L2OWarning`,
  :func:`env_switch`; :func:`get_registry`, to look up what other plugins registered.
"""
from .analysis import higher_is_better, meta_seed_spread, performance_profile, rank_summary, robust_summary, seed_scores
from .bootstrap import Interval, bootstrap_interval, paired_log_ratio_interval, two_level_interval
from .devices import cpu_model
from .datasets import (DATA_ENV, DataFile, Dataset, IDXDataset, data_cache_dir, data_dir, images_to_float, parse_idx,
                       read_data_file, select_classes)
from .env import env_switch
from .errors import CheckpointError, ConfigError, DataError, L2OError, L2OWarning, PluginError
from .estimator import Estimate, Estimator, HeldOutTask, MetaProblem
from .executor import Executor
from .from_torch import from_torch_optimizer
from .hookspecs import hookimpl
from .hyperparameters import Beta, LearningRate, NonNegative, Positive, PositiveInt
from .learned import Capabilities, LearnedOptimizer
from .from_module import ModuleBatch, ModuleTask, module_task
from .population import (Particles, PopulationState, antithetic, flat_meta_params, restart_from,
                         run_truncation, split_flat, start_population)
from .optimizer import (Optimizer, State, chain, prefixed, replaying, scale, stateless, step_count, steps_to_replay,
                        unprefixed, zeros_like_state)
from .registry import get_registry
from .task import SPLITS, Renderable, Split, Task, TaskConfig, TaskFamily, heldout_metric, seed_generator, task_metrics
from .unroll import Unroll, unroll as truncated_unroll  # l2obench.unroll is the module
from .transforms import (add_decayed_weights, decoupled_weight_decay, scale_by_adagrad, scale_by_adam,
                         scale_by_rms, trace)

__all__ = [
    "hookimpl",
    "Optimizer", "State", "chain", "scale", "stateless", "step_count", "zeros_like_state", "prefixed",
    "unprefixed", "add_decayed_weights", "decoupled_weight_decay", "scale_by_adagrad", "scale_by_adam",
    "scale_by_rms", "trace", "from_torch_optimizer", "steps_to_replay", "replaying",
    "LearningRate", "Beta", "Positive", "NonNegative", "PositiveInt",
    "LearnedOptimizer", "Capabilities",
    "Task", "Renderable", "TaskFamily", "TaskConfig", "Split", "SPLITS", "seed_generator", "task_metrics", "heldout_metric",
    "module_task", "ModuleTask", "ModuleBatch",
    "Dataset", "DATA_ENV", "DataFile", "IDXDataset", "read_data_file", "parse_idx", "data_dir", "data_cache_dir",
    "images_to_float", "select_classes",
    "Executor",
    "Estimator", "Estimate", "MetaProblem", "HeldOutTask", "truncated_unroll", "Unroll", "Particles", "PopulationState",
    "start_population", "run_truncation", "restart_from", "antithetic", "flat_meta_params", "split_flat",
    "L2OError", "ConfigError", "PluginError", "CheckpointError", "DataError", "L2OWarning", "env_switch", "cpu_model",
    "get_registry",
    "seed_scores", "performance_profile", "rank_summary", "robust_summary", "meta_seed_spread", "higher_is_better",
    "bootstrap_interval", "paired_log_ratio_interval", "two_level_interval", "Interval",
]
