"""Keep freed memory in the process for reuse.

A batched run allocates tensors of tens to hundreds of MB on every step (the LSTM
states of 32 seeds of a 15,910-coordinate optimizee are 40 MB each).  glibc's
malloc serves blocks that large with ``mmap`` and returns them to the kernel when
they are freed, so every step pays a page fault per 4 KiB of every such tensor
when it is first written: a third of a batched evaluation's time.  Raising the
mmap threshold and the trim threshold makes freed blocks stay in the heap, where
the next step's tensors of the same sizes reuse them.  The price is that the
process keeps its peak heap until it exits.

The ``l2obench`` command and its worker processes call :func:`keep_freed_memory`
at start; a program that uses the library directly may call it too.  Set
``L2OBENCH_KEEP_FREED_MEMORY=0`` to leave malloc as it is.  Elsewhere than glibc
it does nothing.
"""
from __future__ import annotations

import ctypes
import os

from .env import env_switch

ENV = "L2OBENCH_KEEP_FREED_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: blocks below this come from the heap, and are kept there when freed
MMAP_THRESHOLD = 1 << 30
_FALLBACK_MMAP_THRESHOLD = 32 << 20  # the largest value glibc builds that cap it accept
TRIM_THRESHOLD = (1 << 31) - 1

_applied: bool | None = None


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks for reuse (once per process); True if it did."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if not env_switch(ENV):
        return False
    if not _glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and not mallopt(_M_MMAP_THRESHOLD, _FALLBACK_MMAP_THRESHOLD):
        return False
    _applied = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
