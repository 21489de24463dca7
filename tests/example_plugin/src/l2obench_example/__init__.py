"""An example l2obench plugin: two optimizers and two task families, registered
through the ``l2obench`` entry-point group exactly as the built-ins are."""
from l2obench.api import hookimpl

from .blobs import family as blobs
from .lars import lars
from .lion import lion
from .logistic import family

__all__ = ["lion", "lars", "family", "blobs"]


@hookimpl
def register_optimizers(register):
    register("lion", lion)
    register("lars", lars)


@hookimpl
def register_task_families(register):
    register("blobs-mlp", blobs)
    register("logistic-regression", family)
