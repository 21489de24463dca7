"""Every registered plugin through the public conformance kit (issue 5): one
table-driven test over all optimizers (default hyperparameters), learned
optimizers (fresh meta-parameters) and task families in the registry."""
from l2obench.testing import parametrize_with_checks, registered_objects

REGISTERED = registered_objects()

#: registry name -> {check: reason}; each runs as xfail(strict=True), so a fix is noticed.
EXPECTED_FAILURES: dict[str, dict[str, str]] = {}

_NAMES = {id(obj): name for name, obj in REGISTERED.items()}


@parametrize_with_checks(REGISTERED, expected_failed_checks=lambda obj: EXPECTED_FAILURES.get(_NAMES[id(obj)], {}))
def test_conformance(obj, check):
    check(obj)
