"""The public conformance kit for optimizers, learned optimizers and task families.

Hypothesis strategies (:mod:`l2obench.testing.strategies`), small named checks
(:mod:`~l2obench.testing.optimizer_checks`, :mod:`~l2obench.testing.group_checks`,
:mod:`~l2obench.testing.learned_checks`, :mod:`~l2obench.testing.task_checks`),
running them (:mod:`l2obench.testing.conformance`) and a pytest plugin
(:mod:`l2obench.testing.pytest_plugin`), after scikit-learn's
``check_estimator`` / ``parametrize_with_checks``.  In a plugin package's tests::

    from l2obench.testing import parametrize_with_checks

    @parametrize_with_checks({"myopt": my_optimizer(), "mytask": my_family})
    def test_conformance(obj, check):
        check(obj)

Or all at once, raising one error that lists every failure:
``check_optimizer(opt)``, ``check_learned_optimizer(lopt)``,
``check_task_family(family)``; against a reference implementation,
``check_matches_reference(opt, torch.optim.Adam, {"lr": 1e-3})``.  An optimizer that uses the task's parameter
groups is checked through its factory (``{"lars": lars}``), so the kit can give
it groups of its own.  A check that is known to fail is listed with a reason:
``expected_failed_checks={"check_zero_grad": "weight decay moves params"}``.
"""
from . import strategies
from .conformance import (CHECK_NAMES, OPTIMIZER_FACTORY_CHECKS, check_learned_optimizer, check_object,
                          check_optimizer, check_task_family, checks_for, parametrize_with_checks, registered_objects)
from .group_checks import check_uses_groups
from .learned_checks import (LEARNED_OPTIMIZER_CHECKS, check_capabilities, check_meta_gradients, check_replay,
                             check_second_derivatives, check_state_round_trip)
from .optimizer_checks import (OPTIMIZER_CHECKS, check_batched_equals_rows, check_coordinates_independent,
                               check_descent_on_quadratic, check_deterministic, check_dtypes_agree,
                               check_inputs_unchanged, check_interleaved_runs, check_permutation_equivariant,
                               check_state_on_device, check_state_structure, check_updates_finite, check_zero_grad)
from .reference_checks import check_matches_reference
from .strategies import (dtypes, gradient_sequences, gradients, hyperparameters, log_uniform, parameters, shapes,
                         task_configs)
from .task_checks import (TASK_FAMILY_CHECKS, check_config_errors, check_task_batching, check_task_deterministic,
                          check_task_finite_at_init, check_task_gradient, check_task_heldout, check_task_render)

__all__ = [
    "strategies",
    # strategies
    "dtypes", "shapes", "parameters", "gradients", "gradient_sequences", "log_uniform", "hyperparameters",
    "task_configs",
    # running checks
    "check_optimizer", "check_learned_optimizer", "check_task_family", "check_object", "checks_for",
    "parametrize_with_checks", "registered_objects",
    # the checks
    "OPTIMIZER_CHECKS", "OPTIMIZER_FACTORY_CHECKS", "LEARNED_OPTIMIZER_CHECKS", "TASK_FAMILY_CHECKS", "CHECK_NAMES",
    "check_state_structure", "check_inputs_unchanged", "check_updates_finite", "check_deterministic",
    "check_permutation_equivariant", "check_coordinates_independent", "check_batched_equals_rows",
    "check_zero_grad", "check_descent_on_quadratic", "check_uses_groups", "check_interleaved_runs",
    "check_dtypes_agree", "check_state_on_device", "check_matches_reference",
    "check_capabilities", "check_meta_gradients", "check_replay", "check_second_derivatives",
    "check_state_round_trip",
    "check_task_finite_at_init", "check_task_batching", "check_task_deterministic", "check_task_heldout",
    "check_task_gradient", "check_config_errors", "check_task_render",
]
