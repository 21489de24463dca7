"""The fused CPU kernel of the paper's LSTM optimizer (``lstm_kernel.cpp``), built
on first use with the system's C++ compiler and loaded with :mod:`ctypes`.

The kernel computes what :mod:`l2obench.plugins.lstm` computes with torch ops,
for float32 tensors on the CPU: one optimizer step for every coordinate, and
the meta-gradient of a whole unroll with second derivatives dropped
(recomputing the unroll's forward tile by tile, so that what the backward
reads stays in cache instead of crossing memory twice per step).

The library is compiled once per source, compiler and CPU into the user cache
(``~/.cache/l2obench/kernels`` on Linux) with ``-O3 -march=native``; it
needs nothing but the C++ standard library, so the build takes a second or
two.  Where no compiler is found or the build fails, a warning says so once
and the torch implementation runs instead.  ``L2OBENCH_NATIVE=0`` turns the
kernel off; ``CXX`` names the compiler (default ``c++``).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from l2obench.env import env_switch
from l2obench.errors import L2OWarning

SOURCE = Path(__file__).with_name("lstm_kernel.cpp")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread")
#: tried in turn: with OpenMP (threads shared with torch's pool), then with std::thread
#: for compilers without it (Apple's clang)
VARIANTS = (("-fopenmp",), ())
ABI = 2

_float_p = ctypes.POINTER(ctypes.c_float)
_ptrs = ctypes.POINTER(ctypes.c_void_p)


def enabled() -> bool:
    """Whether the kernel may be used (``L2OBENCH_NATIVE`` is not 0, false, no or off)."""
    return env_switch("L2OBENCH_NATIVE")


def cache_dir() -> Path:
    import pooch

    return Path(pooch.os_cache("l2obench")) / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.machine() + platform.processor()


def _build(cxx: str) -> Path:
    """The library for this source, compiler and CPU: from the cache, else compiled
    with the first of :data:`VARIANTS` that builds."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join(FLAGS), _cpu_flags()]).encode())
    target = cache_dir() / f"lstm-{key.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        for extra in VARIANTS:
            done = subprocess.run([cxx, *FLAGS, *extra, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True)
            if done.returncode == 0:
                os.replace(tmp, target)
                return target
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise OSError(f"{cxx} exited with status {done.returncode}: {last}")
    finally:
        if tmp.exists():
            tmp.unlink()


@functools.lru_cache(maxsize=None)
def _load(cxx: str) -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(_build(cxx)))
        if lib.l2o_lstm_abi() != ABI:
            raise OSError("the cached library is of another version")
    except (OSError, subprocess.SubprocessError) as exc:
        warnings.warn(f"the fused LSTM kernel is unavailable ({exc}); the LSTM runs on torch ops, about half as "
                      "fast (L2OBENCH_NATIVE=0 silences this)", L2OWarning, stacklevel=3)
        return None
    i, i64, f, fp, vp = ctypes.c_int, ctypes.c_int64, ctypes.c_float, _float_p, _ptrs
    lib.l2o_lstm_step.argtypes = [i, i, i, i64, fp, f, fp, vp, vp, vp, vp, fp, i]
    lib.l2o_lstm_step.restype = None
    lib.l2o_lstm_unroll_backward.argtypes = [i, i, i, i64, i, fp, f, fp, vp, vp, fp, fp, i]
    lib.l2o_lstm_unroll_backward.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernel, building it on first use; ``None`` if it is turned off or cannot be built."""
    if not enabled():
        return None
    return _load(os.environ.get("CXX", "c++"))


def available() -> bool:
    return library() is not None


def _fp(t: Tensor):
    return ctypes.cast(t.data_ptr(), _float_p)


def _array(tensors: Sequence[Tensor]):
    return ctypes.cast((ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors]), _ptrs)


def _check(*tensors: Tensor) -> None:
    for t in tensors:
        if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError("the fused LSTM kernel takes contiguous float32 CPU tensors")


def step(params: Tensor, scale: float, x: Tensor, h: Sequence[Tensor], c: Sequence[Tensor], hidden: int):
    """One step for ``M`` coordinates: features ``x (F, M)``, per layer ``h, c (hidden, M)``
    -> (update ``(M,)``, new ``h`` list, new ``c`` list).  ``params`` as in lstm_kernel.cpp."""
    lib = library()
    layers, (features, m) = len(h), x.shape
    _check(params, x, *h, *c)
    h_new = [torch.empty_like(t) for t in h]
    c_new = [torch.empty_like(t) for t in c]
    out = x.new_empty(m)
    lib.l2o_lstm_step(layers, hidden, features, m, _fp(params), scale, _fp(x), _array(h), _array(c),
                      _array(h_new), _array(c_new), _fp(out), torch.get_num_threads())
    return out, h_new, c_new


def unroll_backward(params: Tensor, scale: float, x: Tensor, h0: Sequence[Tensor], c0: Sequence[Tensor],
                    d_out: Tensor, hidden: int) -> Tensor:
    """The gradient with respect to ``params`` of ``sum_t <d_out[t], update_t>`` over an unroll
    whose LSTM inputs are ``x (T, F, M)`` (constants) from the state ``h0, c0``."""
    lib = library()
    steps, features, m = x.shape
    _check(params, x, d_out, *h0, *c0)
    grad = torch.zeros_like(params)
    lib.l2o_lstm_unroll_backward(len(h0), hidden, features, m, steps, _fp(params), scale, _fp(x), _array(h0),
                                 _array(c0), _fp(d_out), _fp(grad), torch.get_num_threads())
    return grad
