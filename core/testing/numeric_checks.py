"""Conformance checks of an optimizer's numbers and placement: float32 and float64 runs
agree (no hidden float16 round trip, no dtype-only bug), and state and updates live on
the params' device and dtype (checked on the ``meta`` device, and CUDA where present)."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

from ..optimizer import Optimizer
from . import strategies as lst
from .properties import DEFAULT_DTYPES, fail, kit_check, kit_property, run_steps, tensor_text

__all__ = ["check_dtypes_agree", "check_state_on_device", "DTYPE_RTOL"]

#: The largest gap between float32 and float64 updates, relative to the largest update.
DTYPE_RTOL = 1e-4


def _float16_exact(u: Tensor) -> bool:
    """Whether every non-zero finite entry (there is one) is a float16 value."""
    x = u[torch.isfinite(u) & (u != 0)]
    return x.numel() > 0 and bool((x.half().to(x.dtype) == x).all())


@kit_check
def check_dtypes_agree(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES) -> None:
    """The same params and gradients of ordinary scale (``strategies.SCALED``, where
    neither dtype over- or underflows) give float64 updates that agree with the
    float32 ones to float32 rounding (``DTYPE_RTOL`` of the largest update): no
    dtype computes something else, and float32 updates are not rounded through
    float16.  Needs both float32 and float64 in ``dtypes`` (else nothing to compare)."""
    name = "check_dtypes_agree"
    if not {torch.float32, torch.float64} <= set(dtypes):
        return

    @st.composite
    def draw(draw_):
        shape = draw_(lst.shapes(1, 2, 2, 6))
        params = draw_(lst.parameters(shape, torch.float32, max_abs=2.0**-7))
        grads = draw_(lst.gradient_sequences(shape, torch.float32, st.integers(1, 3), ("zero", lst.SCALED)))
        return params, grads

    @kit_property(10)
    @given(draw())
    def prop(example):
        params, grads = example
        single, _ = run_steps(opt, params, grads)
        double, _ = run_steps(opt, params.double(), [g.double() for g in grads])
        p = params.double()
        for t, (a, b) in enumerate(zip(single, double), 1):
            scale = b.abs().max().item() if b.numel() else 0.0
            # an update read off as a change of params is good to an ulp of them
            ulp = 2 * torch.finfo(torch.float32).eps * torch.maximum(p.abs(), (p + b).abs())
            gap = (a.double() - b).abs()
            if not bool((gap <= DTYPE_RTOL * scale + ulp).all()):
                why = ("the float32 updates are all float16 values: they are rounded through float16"
                       if _float16_exact(a) else "one of the dtypes computes something else")
                fail(name, f"step {t}: float32 updates {tensor_text(a)} and float64 updates {tensor_text(b)} differ "
                           f"by {gap.max().item():.3g}, more than float32 rounding ({DTYPE_RTOL:g} of {scale:.3g}); "
                           f"{why}", params=params, grads=grads[:t])
            p = p + b

    prop()


def _devices() -> list[str]:
    return ["meta"] + (["cuda"] if torch.cuda.is_available() else [])


def _misplaced(state, params: Tensor) -> list[str]:
    """The state entries not on params' device, or floating ones not in params' dtype."""
    if not isinstance(state, dict):
        return []
    return [f"{k!r} is {v.dtype} on {v.device}" for k, v in state.items() if isinstance(v, Tensor) and (
        v.device != params.device or (v.is_floating_point() and v.dtype != params.dtype))]


def _cannot_run_on_meta(exc: BaseException) -> bool:
    """Whether ``exc`` is meta tensors refusing data-dependent code (``.item()``, ``if``)."""
    cause = exc.__cause__ or exc
    return isinstance(cause, NotImplementedError) or "meta tensors" in str(cause)


@kit_check
def check_state_on_device(opt: Optimizer, *, dtypes: Sequence[torch.dtype] = DEFAULT_DTYPES,
                          on_device: Callable[[str], Optimizer] | None = None) -> None:
    """Every state tensor ``init`` and ``update`` return lives on params' device, and
    every floating one has params' dtype (state made without ``device=`` or
    ``dtype=`` fails), and so do the updates: checked on torch's ``meta`` device
    (shapes without data, so no accelerator is needed) and on CUDA where present.
    ``on_device(device)`` builds the optimizer for that device (a learned optimizer
    moves its meta-parameters there); an update that cannot run on meta tensors
    (it reads values, say for an ``if``) is checked on ``init`` alone there."""
    name = "check_state_on_device"
    for device in _devices():
        target = on_device(device) if on_device is not None else opt
        for dtype in dtypes:
            params = torch.zeros(2, 3, dtype=dtype).to(device) + torch.linspace(-1, 1, 3, dtype=dtype).to(device)
            grads = torch.ones(2, 3, dtype=dtype).to(device) * 0.5
            state = target.init(params)
            if bad := _misplaced(state, params):
                raise AssertionError(f"{name}: init() on {dtype} params on {device} gave state {', '.join(bad)}; "
                                     f"create state with device=params.device, dtype=params.dtype (or *_like)")
            for t in (1, 2):
                try:
                    u, state = target.update(grads, state, params)
                except Exception as exc:
                    if device == "meta" and _cannot_run_on_meta(exc):
                        break
                    raise
                if bad := _misplaced(state, params):
                    raise AssertionError(f"{name}: step {t}: update() on {dtype} params on {device} gave state "
                                         f"{', '.join(bad)}; create state with device=params.device, "
                                         f"dtype=params.dtype (or *_like)")
                if isinstance(u, Tensor) and (u.device, u.dtype) != (params.device, params.dtype):
                    raise AssertionError(f"{name}: step {t}: update() on {dtype} params on {device} gave updates "
                                         f"{u.dtype} on {u.device}")
                params = params + u
