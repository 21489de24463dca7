"""The built-in data sets, one module each, registered through the same hook a
third-party data-set plugin implements: ``mnist``, ``fashion-mnist`` and ``cifar-10``."""
from l2obench.api import hookimpl

from .cifar10 import CIFAR_10
from .fashion_mnist import FASHION_MNIST
from .mnist import MNIST


@hookimpl
def register_datasets(register):
    register("mnist", MNIST)
    register("fashion-mnist", FASHION_MNIST)
    register("cifar-10", CIFAR_10)
