"""Allocation of the kernels' big arrays and the memory they reuse: huge pages, glibc's
thresholds for freed memory, and the per-step arrays a forward keeps."""

from __future__ import annotations

import ctypes
import os
import sys

import numpy as np
from numba import njit, types

from ._jit import JIT

#: arrays from this size get transparent huge pages where the kernel offers them
HUGE_PAGE = 1 << 21
HUGE_MIN_BYTES = 2 * HUGE_PAGE

if sys.platform.startswith("linux"):
    _madvise = types.ExternalFunction("madvise", types.intc(types.uintp, types.uintp, types.intc))
    _MADV_HUGEPAGE = 14

    @njit(**JIT)
    def _advise_huge_pages(a):
        nbytes = a.size * a.itemsize
        if nbytes < HUGE_MIN_BYTES:
            return
        p = a.ctypes.data
        lo = (p + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
        hi = (p + nbytes) // HUGE_PAGE * HUGE_PAGE
        _madvise(lo, hi - lo, _MADV_HUGEPAGE)  # a hint: its failure changes nothing
else:
    @njit(**JIT)
    def _advise_huge_pages(a):
        pass


#: freed memory glibc may keep for reuse (see ``reuse_freed_memory``)
KEEP_FREED_BYTES = 1 << 28
#: glibc's largest mmap threshold on 64-bit: blocks below it come from the heap
_MMAP_THRESHOLD_MAX = 1 << 25
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def reuse_freed_memory() -> bool:
    """Have glibc's malloc hand the big arrays one kernel call frees to the next one.

    By default glibc serves blocks over its (adaptive) mmap threshold with fresh mappings
    and gives the free top of its heap back to the system beyond a trim threshold, so
    every call's caches and gradients (~100 MB for an LSTM forward+backward at B64 T100
    H256) land on new pages again, at a page fault per page. Here blocks up to 32 MiB come
    from the heap and up to ``KEEP_FREED_BYTES`` of its free top stay mapped, so that such
    a call faults no page (LSTM medium forward+backward ~128 -> ~111 ms; benchmarks/README.md,
    "Design notes", memory). Called once when the backend is imported; a
    process-wide setting, so ``RNNKERN_MALLOPT=0`` leaves glibc's defaults alone.
    Returns whether the settings were made (False off glibc).
    """
    if os.environ.get("RNNKERN_MALLOPT", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a C library without mallopt (musl)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                and mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES))


@njit(**JIT)
def empty(shape, like):
    """np.empty(shape, like.dtype), asking Linux for huge pages when the array is big.

    NumPy does the same for its own arrays; Numba's allocator does not, and the first
    touch of a fresh 4 KiB page costs a page fault: the faults of the new arrays an LSTM
    medium forward writes took ~30 of its ~65 ms (benchmarks/README.md, "Design notes",
    memory).
    """
    a = np.empty(shape, like.dtype)
    _advise_huge_pages(a)
    return a


@njit(**JIT)
def kept(T, keep):
    """How many steps a forward's per-step arrays hold: all T where the cache is kept for a
    backward (keep), one for inference (``training=False``), which every step overwrites,
    its states (``states(s0, kept(T, keep))``) then a ring of two. The kernels index such
    an array a with t % len(a), which is t when every step is kept: one loop serves both.
    Inference writes ~4 (T, B, H) arrays fewer into fresh memory (LSTM wide forward 35.8 ->
    34.3 ms; benchmarks/README.md, "Design notes", the inference pass)."""
    return T if keep else 1


@njit(**JIT)
def states(s0, T):
    """(T+1, B, H) for the states of a sequence, s0: (B, H) the first (the rest are
    for the kernel to write): s[t] enters step t (s[t % (T+1)] for a ring, see ``kept``)."""
    s = empty((T + 1, s0.shape[0], s0.shape[1]), s0)
    s[0] = s0
    return s
