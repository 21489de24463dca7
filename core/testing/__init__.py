"""The public conformance kit for optimizers, learned optimizers and task families.

Hypothesis strategies (:mod:`l2obench.testing.strategies`), small named checks
(:mod:`l2obench.testing.checks`) and a pytest plugin
(:mod:`l2obench.testing.pytest_plugin`), after scikit-learn's
``check_estimator`` / ``parametrize_with_checks``.  In a plugin package's tests::

    from l2obench.testing import parametrize_with_checks

    @parametrize_with_checks({"myopt": my_optimizer(), "mytask": my_family})
    def test_conformance(obj, check):
        check(obj)

Or all at once, raising one error that lists every failure:
``check_optimizer(opt)``, ``check_learned_optimizer(lopt)``,
``check_task_family(family)``.  A check that is known to fail is listed with a
reason: ``expected_failed_checks={"check_zero_grad": "weight decay moves params"}``.
"""
from . import strategies
from .checks import (CHECK_NAMES, LEARNED_OPTIMIZER_CHECKS, OPTIMIZER_CHECKS, TASK_FAMILY_CHECKS,
                     check_batched_equals_rows, check_config_errors, check_coordinates_independent,
                     check_descent_on_quadratic, check_deterministic, check_inputs_unchanged,
                     check_learned_optimizer, check_meta_gradients, check_object, check_optimizer, check_replay,
                     check_permutation_equivariant, check_state_round_trip, check_state_structure,
                     check_task_batching, check_task_deterministic, check_task_family,
                     check_task_finite_at_init, check_updates_finite, check_zero_grad, checks_for,
                     parametrize_with_checks, registered_objects)
from .strategies import (dtypes, gradient_sequences, gradients, hyperparameters, log_uniform, parameters, shapes,
                         task_configs)

__all__ = [
    "strategies",
    # strategies
    "dtypes", "shapes", "parameters", "gradients", "gradient_sequences", "log_uniform", "hyperparameters",
    "task_configs",
    # running checks
    "check_optimizer", "check_learned_optimizer", "check_task_family", "check_object", "checks_for",
    "parametrize_with_checks", "registered_objects",
    # the checks
    "OPTIMIZER_CHECKS", "LEARNED_OPTIMIZER_CHECKS", "TASK_FAMILY_CHECKS", "CHECK_NAMES",
    "check_state_structure", "check_inputs_unchanged", "check_updates_finite", "check_deterministic",
    "check_permutation_equivariant", "check_coordinates_independent", "check_batched_equals_rows",
    "check_zero_grad", "check_descent_on_quadratic", "check_meta_gradients", "check_replay", "check_state_round_trip",
    "check_task_finite_at_init", "check_task_batching", "check_task_deterministic", "check_config_errors",
]
