"""An example l2obench plugin: one optimizer and one task family, registered
through the ``l2obench`` entry-point group exactly as the built-ins are."""
from l2obench import hookimpl

from .lion import lion
from .logistic import family

__all__ = ["lion", "family"]


@hookimpl
def register_optimizers(register):
    register("lion", lion)


@hookimpl
def register_task_families(register):
    register("logistic-regression", family)
