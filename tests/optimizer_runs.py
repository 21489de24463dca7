"""A test helper shared by the learned-optimizer tests: an optimizer run on given gradients."""
from __future__ import annotations


def run(opt, params, grads):
    """Apply ``opt`` to ``params`` for each gradient of ``grads`` in turn: (the updates, the final state)."""
    state = opt.init(params)
    out = []
    for g in grads:
        u, state = opt.update(g, state, params)
        params = params + u
        out.append(u)
    return out, state
