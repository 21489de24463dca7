"""The hooks a plugin implements. Each hook is a verb that receives a
``register`` callback; the registry owns name rules, duplicates and errors.

A plugin is a module (or object) with functions decorated by
``l2obench.hookimpl`` and named after these specs, listed under the
``l2obench`` entry-point group of its distribution::

    [project.entry-points.l2obench]
    myplugin = "myplugin"
"""
import pluggy

hookspec = pluggy.HookspecMarker("l2obench")
hookimpl = pluggy.HookimplMarker("l2obench")


@hookspec
def register_optimizers(register):
    """Register hand-designed optimizers: ``register(name, factory)``.

    ``factory(**hyperparameters) -> Optimizer``; its keyword arguments with
    their defaults are the optimizer's hyperparameters (``lr`` by convention
    for the step size that suites tune).
    """


@hookspec
def register_learned_optimizers(register):
    """Register learned optimizers: ``register(name, factory)``.

    ``factory(**hyperparameters) -> LearnedOptimizer``, a module whose
    parameters are the meta-parameters.
    """


@hookspec
def register_task_families(register):
    """Register task families: ``register(name, family)`` with a ``TaskFamily``."""


@hookspec
def register_datasets(register):
    """Register data sets: ``register(name, dataset)`` with an object satisfying
    :class:`l2obench.datasets.Dataset` (arrays for a fixed train / validation / test split)."""


@hookspec
def register_estimators(register):
    """Register meta-gradient estimators: ``register(name, factory)``.

    ``factory(**settings) -> Estimator`` (:class:`l2obench.api.Estimator`); its keyword
    arguments with their defaults are the settings a suite gives as ``estimator_params``.
    """


@hookspec
def register_executors(register):
    """Register executors that run suite cells: ``register(name, factory)``.

    ``factory(workers: int) -> Executor``, an object satisfying
    :class:`l2obench.api.Executor`.
    """
