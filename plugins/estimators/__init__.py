"""The built-in gradient estimators of meta-training, one a module: truncated BPTT
(the paper's, the default), antithetic ES and persistent ES."""
from l2obench.api import hookimpl

from .es import es
from .pes import pes
from .tbptt import tbptt


@hookimpl
def register_estimators(register):
    register("tbptt", tbptt)
    register("es", es)
    register("pes", pes)
