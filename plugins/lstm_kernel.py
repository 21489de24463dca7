"""The fused CPU kernel of the paper's LSTM optimizer (``lstm_kernel.cpp``), built
on first use with the system's C++ compiler and loaded with :mod:`ctypes`.

The kernel computes what :mod:`l2obench.plugins.lstm` computes with torch ops,
for float32 tensors on the CPU: one optimizer step for every coordinate, and
the meta-gradient of a whole unroll with second derivatives dropped
(recomputing the unroll's forward tile by tile, so that what the backward
reads stays in cache, or reading the gate activations the steps recorded: one
record per step, :func:`record_size` floats, written as the step streams through
its states).

The library is compiled once per source, compiler, ``-march`` and CPU into the
user cache (``~/.cache/l2obench/kernels`` on Linux) with ``-O3``; it needs
nothing but the C++ standard library, so the build takes a few seconds.  Its
vector width and register blocking follow the instruction set the ``-march``
enables (``avx512``, ``avx2`` with FMA, else ``generic`` compiler vectors), which
names the file.  On first use on a machine a self-check times the kernel
against torch ops on the paper's MNIST shapes (one unroll, forward and
meta-gradient) and keeps the result in a JSON file beside the library; the
kernel runs only where it was clearly faster (under :data:`CHECK_MARGIN` of torch's
time).  Where it is not, or no compiler is
found, or the build fails, a warning says so once and the torch implementation
runs instead.  :func:`backend` says which runs and why.

Environment:

- ``L2OBENCH_NATIVE``: ``auto`` (the default) uses the kernel where the
  self-check found it faster; ``1`` (on, true, yes, force) uses it wherever it
  builds; ``0`` (off, false, no) uses torch ops.
- ``L2OBENCH_KERNEL_MARCH``: the compiler's ``-march`` (default ``native``, e.g.
  ``x86-64-v3`` for AVX2, ``x86-64`` for the generic path); a build for an
  instruction set this CPU lacks is refused with a warning.  Delete the JSON
  file beside a library to check it again.
- ``CXX``: the compiler (default ``c++``).
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import json
import math
import os
import platform
import subprocess
import time
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import Tensor

from l2obench.api import ConfigError, L2OWarning, cpu_model

SOURCE = Path(__file__).with_name("lstm_kernel.cpp")
FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-pthread")
#: tried in turn: with OpenMP (threads shared with torch's pool), then with std::thread
#: for compilers without it (Apple's clang)
VARIANTS = (("-fopenmp",), ())
ABI = 7
#: ``-march`` values the ISA benchmark tries on x86-64: AVX-512, AVX2 with FMA, SSE2 only
X86_MARCHES = ("x86-64-v4", "x86-64-v3", "x86-64")
#: the self-check's workload: the paper's MNIST optimizee (784-20-10 MLP), an unroll of 10 steps
CHECK_COORDINATES, CHECK_STEPS = 15910, 10
#: the kernel runs where the self-check's unroll takes under this fraction of torch's time: within
#: the timing's noise the torch ops, the reference implementation, are kept
CHECK_MARGIN = 0.9

_ON, _OFF = ("1", "on", "true", "yes", "force"), ("0", "off", "false", "no")
#: an instruction set's compiler macro -> the /proc/cpuinfo flag a CPU needs to run it
_CPU_FLAG = {"__AVX512F__": "avx512f", "__AVX512BW__": "avx512bw", "__AVX512DQ__": "avx512dq",
             "__AVX512VL__": "avx512vl", "__AVX512CD__": "avx512cd", "__AVX2__": "avx2", "__FMA__": "fma",
             "__AVX__": "avx", "__F16C__": "f16c", "__BMI2__": "bmi2"}

#: set by :func:`forced` (the self-check times both implementations through the plugin)
_forced: str | None = None


def choice() -> str:
    """``L2OBENCH_NATIVE`` read as ``"auto"``, ``"kernel"`` or ``"torch"``."""
    value = os.environ.get("L2OBENCH_NATIVE", "auto").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in _ON:
        return "kernel"
    if value in _OFF:
        return "torch"
    raise ConfigError(f"L2OBENCH_NATIVE={value!r} is not auto, 1 or 0; set auto (the kernel where the self-check "
                      "found it faster), 1 (the kernel) or 0 (torch ops)")


def enabled() -> bool:
    """Whether the kernel may be used (``L2OBENCH_NATIVE`` is not 0, false, no or off)."""
    return _forced == "kernel" or (_forced is None and choice() != "torch")


def march() -> str:
    """The ``-march`` the kernel is built for (``L2OBENCH_KERNEL_MARCH``, default ``native``)."""
    return os.environ.get("L2OBENCH_KERNEL_MARCH", "native").strip() or "native"


def cache_dir() -> Path:
    import pooch

    return Path(pooch.os_cache("l2obench")) / "kernels"


def _cxx() -> str:
    return os.environ.get("CXX", "c++")


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.machine() + platform.processor()


@functools.lru_cache(maxsize=None)
def _compiler(cxx: str, march: str) -> tuple[str, str, frozenset, str]:
    """(version, instruction set, vector macros, every predefined macro) of ``cxx -march=<march>``:
    the last includes the CPU the build is tuned for (``__tune_znver1__``), which the kernel's
    register blocking follows, so the build's cache key does too."""
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True).stdout
    done = subprocess.run([cxx, f"-march={march}", "-dM", "-E", "-x", "c++", os.devnull], capture_output=True,
                          text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise OSError(f"{cxx} -march={march} exited with status {done.returncode}: {last}")
    macros = frozenset(m for line in done.stdout.splitlines() for m in line.split()[1:2] if m in _CPU_FLAG)
    return version, isa_of(macros), macros, "\n".join(sorted(done.stdout.splitlines()))


def isa_for(march: str, cxx: str | None = None) -> str:
    """The instruction-set path (``avx512``, ``avx2``, ``generic``) of a build for ``-march``."""
    return _compiler(cxx or _cxx(), march)[1]


def isa_of(macros) -> str:
    """The kernel's instruction-set path for these compiler macros, as lstm_kernel.cpp decides it."""
    if "__AVX512F__" in macros:
        return "avx512"
    if "__AVX2__" in macros and "__FMA__" in macros:
        return "avx2"
    return "generic"


def missing_cpu_flags(march: str, cxx: str | None = None) -> list[str]:
    """The CPU flags a ``-march`` build needs that this CPU lacks (none for ``native``)."""
    if march == "native":
        return []
    flags = set(_cpu_flags().split(":", 1)[-1].split())
    return sorted(_CPU_FLAG[m] for m in _compiler(cxx or _cxx(), march)[2] if _CPU_FLAG[m] not in flags)


def _target(cxx: str, march: str) -> Path:
    """Where the build for this source, compiler, ``-march`` (its instruction set and every macro
    it predefines, the tuning's included) and CPU is cached."""
    version, isa, _, defines = _compiler(cxx, march)
    key = hashlib.sha256("\0".join([SOURCE.read_text(), version, " ".join((*FLAGS, f"-march={march}")), isa,
                                     _cpu_flags(), defines]).encode())
    return cache_dir() / f"lstm-{isa}-{key.hexdigest()[:16]}.so"


def build(march: str = "native", cxx: str | None = None) -> Path:
    """The library for this source, compiler, ``-march`` and CPU: from the cache, else
    compiled with the first of :data:`VARIANTS` that builds."""
    cxx = cxx or _cxx()
    flags = (*FLAGS, f"-march={march}")
    target = _target(cxx, march)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        for extra in VARIANTS:
            done = subprocess.run([cxx, *flags, *extra, str(SOURCE), "-o", str(tmp)], capture_output=True, text=True)
            if done.returncode == 0:
                os.replace(tmp, target)
                return target
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise OSError(f"{cxx} exited with status {done.returncode}: {last}")
    finally:
        if tmp.exists():
            tmp.unlink()


@functools.lru_cache(maxsize=None)
def _open(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    if lib.l2o_lstm_abi() != ABI:
        raise OSError("the cached library is of another version")
    # every pointer (to floats, or to an array of tensors' pointers) as an address
    i, i64, f, p = ctypes.c_int, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
    lib.l2o_lstm_step.argtypes = [i, i, i, i64, p, f, p, p, p, p, i64, p, p, i64, p, p, i]
    lib.l2o_lstm_step.restype = None
    lib.l2o_lstm_unroll_backward.argtypes = [i, i, i, i64, i, p, f, p, p, p, p, i64, p, p, p, p, i]
    lib.l2o_lstm_record_floats.argtypes = [i, i, i64]
    lib.l2o_lstm_record_floats.restype = i64
    lib.l2o_lstm_unroll_backward.restype = None
    lib.l2o_lstm_isa.restype = ctypes.c_char_p
    if hasattr(lib, "l2o_lstm_blocking"):  # builds of earlier sources of this ABI have none
        lib.l2o_lstm_blocking.restype = ctypes.c_char_p
    return lib


@functools.lru_cache(maxsize=None)
def _load(cxx: str, march: str) -> ctypes.CDLL | None:
    try:
        missing = missing_cpu_flags(march, cxx)
        if missing:
            raise OSError(f"this CPU cannot run -march={march} (no {', '.join(missing)})")
        return _open(build(march, cxx))
    except (OSError, subprocess.SubprocessError) as exc:
        warnings.warn(f"the fused LSTM kernel is unavailable ({exc}); the LSTM runs on torch ops "
                      "(L2OBENCH_NATIVE=0 silences this)", L2OWarning, stacklevel=3)
        return None


def library() -> ctypes.CDLL | None:
    """The loaded kernel for :func:`march`, building it on first use; ``None`` if it is
    turned off or cannot be built."""
    if not enabled():
        return None
    return _load(_cxx(), march())


def isa() -> str | None:
    """The instruction set of the loaded kernel (``avx512``, ``avx2``, ``generic``), or ``None``."""
    lib = library()
    return None if lib is None else lib.l2o_lstm_isa().decode()


def blocking(lib: ctypes.CDLL | None = None) -> str | None:
    """The vectors and register blocking a build chose for the CPU it is tuned for (``"vectors
    8x2, gemv 5, outer 5x2, sigmoids 4"``), of ``lib`` or the loaded kernel; ``None`` without one."""
    lib = lib or library()
    if lib is None or not hasattr(lib, "l2o_lstm_blocking"):
        return None
    return lib.l2o_lstm_blocking().decode()


def backend() -> tuple[bool, str]:
    """Whether the kernel runs the LSTM (float32 on the CPU), and why: turned off or
    forced by ``L2OBENCH_NATIVE``, not built, or the self-check's timings."""
    if _forced is not None:
        return _forced == "kernel" and library() is not None, f"forced to {_forced} for the self-check"
    return _decide(choice(), _cxx(), march())


def available() -> bool:
    """Whether the kernel should be used: see :func:`backend`."""
    return backend()[0]


def reset() -> None:
    """Forget this process's decisions and loaded builds' checks, so the next use decides
    again (after a self-check record is deleted, or in tests)."""
    _decide.cache_clear()
    _load.cache_clear()


@functools.lru_cache(maxsize=None)
def _decide(how: str, cxx: str, march: str) -> tuple[bool, str]:
    if how == "torch":
        return False, "turned off by L2OBENCH_NATIVE=0"
    lib = _load(cxx, march)
    if lib is None:
        return False, f"the kernel could not be built for -march={march}"
    isa_name = lib.l2o_lstm_isa().decode()
    if how == "kernel":
        return True, f"forced by L2OBENCH_NATIVE=1 ({isa_name}, -march={march})"
    record = self_check(build(march, cxx))
    timings = (f"{record['kernel_ms']:.0f} ms against {record['torch_ms']:.0f} ms for torch ops on a "
               f"{CHECK_STEPS}-step unroll of the paper's MNIST LSTM, {record['threads']} threads")
    if record["kernel_ms"] < CHECK_MARGIN * record["torch_ms"]:
        return True, f"the self-check found the kernel faster on this CPU ({isa_name}, -march={march}: {timings})"
    warnings.warn(f"the fused LSTM kernel is not faster than torch ops on this CPU ({isa_name}, -march={march}: "
                  f"{timings}); the LSTM runs on torch ops (L2OBENCH_NATIVE=1 forces the kernel)", L2OWarning,
                  stacklevel=4)
    return False, f"the self-check found the kernel not faster than torch ops on this CPU ({isa_name}, " \
                  f"-march={march}: {timings}; it runs where it takes under {CHECK_MARGIN:.0%} of their time)"


def record_path(library_path: Path) -> Path:
    """Where the self-check of a built library is kept: beside it."""
    return library_path.with_suffix(".json")


def self_check(library_path: Path) -> dict:
    """The self-check of a built library: from its JSON file, else timed now and kept.
    Each implementation runs one unroll of the paper's MNIST LSTM (forward steps and
    meta-gradient); the faster of three alternated runs of each counts."""
    path = record_path(library_path)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    kernel, torch_ops = [], []
    unroll_seconds("kernel"), unroll_seconds("torch")  # warm-up: first allocations, oneDNN's set-up
    for _ in range(3):
        kernel.append(unroll_seconds("kernel"))
        torch_ops.append(unroll_seconds("torch"))
    record = {"kernel_ms": min(kernel) * 1e3, "torch_ms": min(torch_ops) * 1e3, "threads": torch.get_num_threads(),
              "coordinates": CHECK_COORDINATES, "steps": CHECK_STEPS,
              "isa": _open(library_path).l2o_lstm_isa().decode(), "cpu": cpu_model(),
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return record


@contextlib.contextmanager
def forced(name: str) -> Iterator[None]:
    """Within the block, :func:`backend` answers ``name`` (``"kernel"`` or ``"torch"``)."""
    global _forced
    before, _forced = _forced, name
    try:
        yield
    finally:
        _forced = before


def unroll_seconds(name: str, coordinates: int = CHECK_COORDINATES, steps: int = CHECK_STEPS) -> float:
    """Seconds for one unroll of the paper's LSTM through the plugin's public optimizer,
    on the kernel (steps without a graph, then ``replay``'s backward) or on torch ops
    (steps with a graph, then its backward), as meta-training runs them."""
    from l2obench import get_registry

    gen = torch.Generator().manual_seed(0)
    grads = torch.randn(steps, 1, coordinates, generator=gen) * 1e-2
    weights = torch.randn(steps, 1, coordinates, generator=gen)
    with forced(name):
        lopt = get_registry().learned("lstm")
        opt = lopt.opt_fn()
        if (opt.replay is not None) != (name == "kernel"):
            raise RuntimeError(f"the lstm optimizer does not run on {name} when forced to")
        start = time.perf_counter()
        state = opt.init(grads[0])
        if name == "kernel":
            updates, s = [], state
            with torch.no_grad():
                for g in grads:
                    u, s = opt.update(g, s, None)
                    updates.append(u)
            total = (opt.replay(grads, state, torch.stack(updates)) * weights).sum()
        else:
            total = 0
            for g, w in zip(grads, weights):
                u, state = opt.update(g, state, None)
                total = total + (u * w).sum()
        total.backward()
        return time.perf_counter() - start


def _pointer_arrays(*groups: Sequence[Tensor]):
    """The kernel's arrays of tensor pointers, one per group, in one ctypes array: ``(the
    array, which the caller keeps until the call returns, [each group's address])``."""
    pointers = [t.data_ptr() for group in groups for t in group]
    array = (ctypes.c_void_p * len(pointers))(*pointers)
    at, addresses = ctypes.addressof(array), []
    for group in groups:
        addresses.append(at)
        at += len(group) * ctypes.sizeof(ctypes.c_void_p)
    return array, addresses


def flat_size(layers: int, hidden: int, features: int) -> int:
    """How many numbers the flat layout of a network of this shape holds."""
    return sum(4 * hidden * ((features if layer == 0 else hidden) + hidden + 1) for layer in range(layers)) + hidden + 1


def split_flat(flat: Tensor, layers: int, hidden: int, features: int) -> list[Tensor]:
    """The kernel's flat layout (its gradient's: each layer's ``[weight_ih | weight_hh]`` and one
    bias, then the head's ``w, b``) as ``weight_ih, weight_hh, bias`` per layer (copies of the
    two weights, a view of the bias) and the head's ``w, b`` (views)."""
    if flat.numel() != flat_size(layers, hidden, features):
        raise ValueError(f"a flat layout of {flat.numel()} numbers for a network of {flat_size(layers, hidden, features)}")
    out, at = [], 0
    for layer in range(layers):
        n_in = features if layer == 0 else hidden
        w = flat[at:at + 4 * hidden * (n_in + hidden)].view(4 * hidden, n_in + hidden)
        at += w.numel()
        out += [w[:, :n_in].contiguous(), w[:, n_in:].contiguous(), flat[at:at + 4 * hidden]]
        at += 4 * hidden
    return out + [flat[at:at + hidden], flat[at + hidden:]]


def per_tensor(flat: Tensor, layers: int, hidden: int, features: int, bias_hh=torch.zeros_like) -> list[Tensor]:
    """The flat layout (:func:`split_flat`) as the kernel's weights are given (torch's tensors:
    each layer's ``weight_ih, weight_hh, bias_ih, bias_hh``, the head's ``w, b``): the layer's
    bias as ``bias_ih`` and ``bias_hh(bias)`` as ``bias_hh``."""
    parts = split_flat(flat, layers, hidden, features)
    out = []
    for layer in range(layers):
        w_ih, w_hh, bias = parts[3 * layer:3 * layer + 3]
        out += [w_ih, w_hh, bias, bias_hh(bias)]
    return out + parts[-2:]


def weights_of(flat: Tensor, layers: int, hidden: int, features: int) -> list[Tensor]:
    """The kernel's weights from the flat layout: :func:`per_tensor` with a zero ``bias_hh``."""
    return per_tensor(flat, layers, hidden, features)


def _weights(params: Tensor | Sequence[Tensor], layers: int, hidden: int, features: int) -> list[Tensor]:
    """The kernel's weights, each of the size lstm_kernel.cpp reads for this shape (the
    kernel trusts them: a wrong size would read past a tensor's end)."""
    if isinstance(params, Tensor):
        params = weights_of(params, layers, hidden, features)
    if len(params) != 4 * layers + 2:
        raise ValueError(f"{len(params)} weight tensors for {layers} layers; the kernel takes 4 a layer and 2")
    sizes = [n for layer in range(layers)
             for n in (4 * hidden * (features if layer == 0 else hidden), 4 * hidden * hidden, 4 * hidden, 4 * hidden)]
    for k, (w, size) in enumerate(zip(params, [*sizes, hidden, 1])):
        if w.numel() != size:
            raise ValueError(f"weight {k} has {w.numel()} numbers; a network of {layers} layers of {hidden} units "
                             f"on {features} features has {size} there")
    return list(params)


def _raw(x: Tensor) -> None:
    if x.shape[-2] != 1:
        raise ValueError(f"with log_sign_p the kernel takes the raw gradients, one row; got {x.shape[-2]} rows")


def _states_shaped(h: Sequence[Tensor], c: Sequence[Tensor], layers: int, hidden: int, m: int) -> None:
    if len(c) != layers or any(tuple(t.shape) != (hidden, m) for t in (*h, *c)):
        raise ValueError(f"the states must be {layers} h and {layers} c of shape {(hidden, m)}; got "
                         f"{[tuple(t.shape) for t in h]} and {[tuple(t.shape) for t in c]}")


def _check(*tensors: Tensor, contiguous: bool = True) -> None:
    for t in tensors:
        if t.dtype is not torch.float32 or not t.is_cpu or (contiguous and not t.is_contiguous()):
            what = "contiguous float32 CPU tensors" if contiguous else "float32 CPU tensors"
            raise ValueError(f"the fused LSTM kernel takes {what}; got {t.dtype} on {t.device}"
                             f"{'' if t.is_contiguous() else ', not contiguous'}")


#: the step writes its new states in rows of a multiple of this many floats (one cache line),
#: so that every tile's row starts a line and can be streamed to memory
ROW_ALIGN = 16


def _rows(states: Sequence[Tensor], m: int) -> tuple[list[Tensor], int]:
    """The states ``(hidden, m)`` as the kernel reads them, rows of ``m`` floats one row stride
    apart, and that stride: as they are where they share one (the step's own outputs),
    else contiguous copies."""
    strides = {t.stride(0) if t.shape[0] > 1 else m for t in states}
    if len(strides) == 1 and all(t.stride(1) == 1 or m == 1 for t in states):
        (ld,) = strides
        if ld >= m:
            return list(states), ld
    return [t.contiguous() for t in states], m


def _new_states(layers: int, hidden: int, m: int) -> tuple[list[Tensor], list[Tensor], int]:
    """Room for a step's new ``h`` and ``c`` of every layer, ``(hidden, m)`` views of one
    tensor whose rows are :data:`ROW_ALIGN`-float multiples apart, and that row stride."""
    ld = -(-m // ROW_ALIGN) * ROW_ALIGN
    room = torch.empty(2 * layers, hidden, ld)[:, :, :m]
    return list(room[:layers]), list(room[layers:]), ld


def _log_sign(p: float | None):
    """The kernel's ``pre`` argument: ``(p, e^-p, e^p)`` as float32, as torch rounds the
    Python floats of :func:`~l2obench.plugins.lstm.preprocess.log_sign`, or null."""
    if p is None:
        return None
    return (ctypes.c_float * 3)(p, math.exp(-p), math.exp(p))


def record_size(layers: int, hidden: int, m: int, *, lib: ctypes.CDLL | None = None) -> int:
    """The floats of one step's record (:func:`step`'s ``record``) for ``m`` coordinates."""
    return (lib or library()).l2o_lstm_record_floats(layers, hidden, m)


def _check_record(record: Tensor, size: int, what: str) -> None:
    _check(record)
    if record.numel() != size:
        raise ValueError(f"{what} has {record.numel()} floats; a step's record of this shape has {size}")


def step(params: Tensor | Sequence[Tensor], scale: float, x: Tensor, h: Sequence[Tensor], c: Sequence[Tensor],
         hidden: int, *, lib: ctypes.CDLL | None = None, log_sign_p: float | None = None,
         record: Tensor | None = None):
    """One step for ``M`` coordinates: features ``x (F, M)`` or, with ``log_sign_p``, the raw
    gradients ``x (1, M)`` whose two features the kernel computes (the paper's log/sign
    preprocessing with that ``p``); per layer ``h, c (hidden, M)`` -> (update ``(M,)``, new
    ``h`` list, new ``c`` list; their rows start cache lines, :data:`ROW_ALIGN`-float
    multiples apart, so they are views, not contiguous).  ``params``: the network's weights as lstm_kernel.cpp takes
    them (:func:`~l2obench.plugins.lstm.backend.kernel_weights`), or the flat layout of the
    gradient (:func:`weights_of`); ``lib`` a library from :func:`build` other than
    :func:`library`'s (tests of each ISA).  With ``record`` (:func:`record_size` floats) the
    step also writes its gate activations there, for :func:`unroll_backward`'s ``records``."""
    lib = lib or library()
    layers, (features, m) = len(h), x.shape
    if log_sign_p is not None:
        _raw(x)
        features = 2
    weights = _weights(params, layers, hidden, features)
    _check(*weights, x)
    _check(*h, *c, contiguous=False)
    _states_shaped(h, c, layers, hidden, m)
    states, ld_in = _rows([*h, *c], m)
    if record is not None:
        _check_record(record, record_size(layers, hidden, m, lib=lib), "the record")
    h_new, c_new, ld_out = _new_states(layers, hidden, m)
    out = x.new_empty(m)
    keep, (w_p, h_p, c_p, h_new_p, c_new_p) = _pointer_arrays(weights, states[:layers], states[layers:], h_new, c_new)
    lib.l2o_lstm_step(layers, hidden, features, m, w_p, scale, x.data_ptr(), _log_sign(log_sign_p), h_p, c_p, ld_in,
                      h_new_p, c_new_p, ld_out, out.data_ptr(), None if record is None else record.data_ptr(),
                      torch.get_num_threads())
    del keep
    return out, h_new, c_new


def unroll_backward(params: Tensor | Sequence[Tensor], scale: float, x: Tensor, h0: Sequence[Tensor],
                    c0: Sequence[Tensor], d_out: Tensor, hidden: int, *, lib: ctypes.CDLL | None = None,
                    log_sign_p: float | None = None, input_grad: bool = False,
                    records: Sequence[Tensor] | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """The gradient, in the flat layout, of ``sum_t <d_out[t], update_t>`` over an unroll
    whose LSTM inputs are ``x (T, F, M)`` (with ``log_sign_p`` the raw gradients ``(T, 1, M)``,
    as in :func:`step`) from the state ``h0, c0``; ``params`` as in :func:`step`.  With
    ``input_grad`` also the gradient with respect to ``x`` (``(T, F, M)``; not with
    ``log_sign_p``): ``(flat, d_x)``.  With ``records``, one per step, the records :func:`step`
    wrote making this unroll (from these weights, inputs and first state: the caller's promise),
    the forward is read from them instead of recomputed: the same result to the bit."""
    lib = lib or library()
    steps, features, m = x.shape
    if log_sign_p is not None:
        if input_grad:
            raise ValueError("the kernel gives no gradient with respect to raw gradients (log_sign_p)")
        _raw(x)
        features = 2
    weights = _weights(params, len(h0), hidden, features)
    _check(*weights, x, d_out)
    _check(*h0, *c0, contiguous=False)
    _states_shaped(h0, c0, len(h0), hidden, m)
    states, ld0 = _rows([*h0, *c0], m)
    if tuple(d_out.shape) != (steps, m):
        raise ValueError(f"d_out is {tuple(d_out.shape)}; the unroll has {steps} steps of {m} coordinates")
    grad = x.new_zeros(flat_size(len(h0), hidden, features))
    if records is not None:
        if len(records) != steps:
            raise ValueError(f"{len(records)} records for an unroll of {steps} steps")
        size = record_size(len(h0), hidden, m, lib=lib)
        for t, record in enumerate(records):
            _check_record(record, size, f"the record of step {t}")
    d_x = torch.empty_like(x) if input_grad else None
    live = live_steps(d_out)
    if d_x is not None:
        d_x[live:] = 0
    if live:
        keep, (w_p, h_p, c_p, r_p) = _pointer_arrays(weights, states[:len(h0)], states[len(h0):], records or ())
        lib.l2o_lstm_unroll_backward(len(h0), hidden, features, m, live, w_p, scale, x.data_ptr(),
                                     _log_sign(log_sign_p), h_p, c_p, ld0, d_out.data_ptr(), grad.data_ptr(),
                                     None if d_x is None else d_x.data_ptr(), r_p if records is not None else None,
                                     torch.get_num_threads())
        del keep
    return (grad, d_x) if input_grad else grad


def live_steps(d_out: Tensor) -> int:
    """How many leading steps of an unroll its backward must run: the steps up to the last
    whose ``d_out`` row has a nonzero (or NaN).  A later step's update reaches no term of the
    meta-loss (the last step's never does in :func:`l2obench.unroll.unroll`'s surrogate), so its
    gradients are zeros: leaving it out saves its recomputed forward and its backward and
    changes no sum (adding zeros of finite products), whose bits the tests compare."""
    rows = d_out.reshape(d_out.shape[0], -1).ne(0).any(1).nonzero()
    return int(rows[-1]) + 1 if rows.numel() else 0


def open_library(path: Path) -> ctypes.CDLL:
    """A built library (from :func:`build`) loaded, for :func:`step` and :func:`unroll_backward`'s ``lib``."""
    return _open(path)
