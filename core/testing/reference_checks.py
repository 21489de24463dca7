"""Comparing an optimizer with a reference implementation: a ``torch.optim``
optimizer class, step for step, in float32 and float64 (the way the built-in
baselines are checked against torch.optim)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from ..optimizer import Optimizer
from . import strategies as lst
from .properties import DEFAULT_DTYPES, fail, kit_check, kit_property, tensor_text

__all__ = ["check_matches_reference", "reference_updates"]

#: Relative tolerance of the updates, per dtype, against the largest update of the step.
REFERENCE_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def reference_updates(reference: type, kwargs: Mapping[str, Any], params: Tensor,
                      grads: Sequence[Tensor]) -> list[Tensor]:
    """The updates ``reference(params, **kwargs)`` (a ``torch.optim.Optimizer``
    class) makes through ``grads``, one instance per row of ``params``: each step
    starts from ``params`` (a leaf reset before the step) and the update is the
    change ``step()`` made."""
    rows = [params[i].detach().clone() for i in range(params.shape[0])]
    leaves = [r.clone() for r in rows]
    optimizers = [reference([leaf], **dict(kwargs)) for leaf in leaves]
    out = []
    for g in grads:
        step = []
        for i, (leaf, opt) in enumerate(zip(leaves, optimizers)):
            with torch.no_grad():
                leaf.copy_(rows[i])
            leaf.grad = g[i].detach().clone()
            opt.step()
            step.append(leaf.detach() - rows[i])
        update = torch.stack(step)
        out.append(update)
        rows = [r + u for r, u in zip(rows, update)]
    return out


@kit_check
def check_matches_reference(opt: Optimizer, reference: type, kwargs: Mapping[str, Any] | None = None, *,
                            dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES, steps: tuple[int, int] = (1, 6)) -> None:
    """``opt`` makes the updates that ``reference(params, **kwargs)`` (a
    ``torch.optim.Optimizer`` class, or any class taking ``params, **kwargs`` with a
    ``.step()``) makes, step for step, in each of ``dtypes``, on drawn params and
    gradients of ordinary scale (``strategies.SCALED``).  Each reference step starts
    from ``opt``'s params, so rounding does not compound; updates agree to
    ``REFERENCE_RTOL`` of the largest update plus an ulp of the params (the
    reference's update is read off as the change in its parameter)."""
    name = "check_matches_reference"
    kwargs = dict(kwargs or {})
    label = f"{getattr(reference, '__name__', reference)}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"

    @st.composite
    def draw(draw_):
        dtype = draw_(st.sampled_from(list(dtypes)))
        shape = draw_(lst.shapes(1, 3, 1, 6))
        params = draw_(lst.parameters(shape, dtype))
        grads = draw_(lst.gradient_sequences(shape, dtype, st.integers(*steps), ("zero", lst.SCALED)))
        return params, grads

    @kit_property(10)
    @given(draw())
    def prop(example):
        params, grads = example
        want = reference_updates(reference, kwargs, params, grads)
        state = opt.init(params.clone())
        for t, (g, w) in enumerate(zip(grads, want), 1):
            u, state = opt.update(g.clone(), state, params.clone())
            eps = torch.finfo(params.dtype).eps
            tol = REFERENCE_RTOL.get(params.dtype, 1e-5) * w.abs().max() + 2 * eps * torch.maximum(
                params.abs(), (params + w).abs())
            if u.shape != w.shape or not bool(((u - w).abs() <= tol).all()):
                fail(name, f"step {t}: updates {tensor_text(u)} but {label} makes {tensor_text(w)} "
                           f"({str(params.dtype).removeprefix('torch.')})", params=params, grads=grads[:t])
            params = params + u

    prop()
