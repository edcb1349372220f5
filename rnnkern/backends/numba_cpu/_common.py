"""Pieces every Numba cell kernel shares: fast activations, the recurrent product
of one batch row, the weight-gradient GEMMs.

Activations: float64 calls libm (``math.tanh``/``math.exp``), which keeps parity
with the float64 oracle at round-off level. float32 uses a branch-free rational
approximation of tanh (Eigen's ``generic_fast_tanh_float``, max error a few ulp)
that LLVM vectorises: there is no SVML here, and a libm call per element would
keep the pointwise pass scalar. ``sigmoid(v) = (1 + tanh(v / 2)) / 2``.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys

import numpy as np
from numba import njit, types
from numba.extending import overload

from ._vec import Vec, maximum, minimum, vexp_libm, vtanh_libm

#: fastmath flags of every kernel: reassociation lets LLVM vectorise the reductions
#: of the fused recurrent product; no nnan/ninf, so NaN and inf still propagate
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
#: options of every kernel: error_model="numpy" drops the ZeroDivisionError check that
#: would otherwise keep every loop containing a division from vectorising
JIT = {"cache": True, "fastmath": FASTMATH, "error_model": "numpy"}

# ----------------------------------------------------------------------------
# activations, specialised per dtype at compile time

_F = np.float32
_TANH_CLAMP = _F(7.90531110763549805)
_A1, _A3, _A5, _A7 = _F(4.89352455891786e-03), _F(6.37261928875436e-04), \
    _F(1.48572235717979e-05), _F(5.12229709037114e-08)
_A9, _A11, _A13 = _F(-8.60467152213735e-11), _F(2.00018790482477e-13), \
    _F(-2.76076847742355e-16)
_B0, _B2, _B4, _B6 = _F(4.89352518554385e-03), _F(2.26843463243900e-03), \
    _F(1.18534705686654e-04), _F(1.19825839466702e-06)
_HALF = _F(0.5)


def _tanh32(v):
    # odd rational p(v)/q(v^2) on the clamped input; tanh is +-1 in float32 beyond the clamp.
    # The clamp's bound comes first: a NaN v loses every comparison and so passes through,
    # where v first would have turned it into the bound (tanh(NaN) = 1, a diverged model
    # looking healthy)
    v = maximum(-_TANH_CLAMP, minimum(_TANH_CLAMP, v))
    v2 = v * v
    p = v2 * _A13 + _A11
    p = v2 * p + _A9
    p = v2 * p + _A7
    p = v2 * p + _A5
    p = v2 * p + _A3
    p = v2 * p + _A1
    q = v2 * _B6 + _B4
    q = v2 * q + _B2
    q = v2 * q + _B0
    return v * p / q


def fast_tanh(v):
    """tanh of a scalar or a ``Vec``: libm in float64, the vectorisable rational form in
    float32."""
    return math.tanh(v)


def fast_sigmoid(v):
    """The logistic function of a scalar or a ``Vec``, by the same per-dtype rule as
    ``fast_tanh``."""
    return 1.0 / (1.0 + math.exp(-v))


@overload(fast_tanh, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ol_tanh(v):
    if v == types.float32 or (isinstance(v, Vec) and v.dtype == types.float32):
        return _tanh32
    if isinstance(v, Vec):
        return lambda v: vtanh_libm(v)
    return lambda v: math.tanh(v)


@overload(fast_sigmoid, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ol_sigmoid(v):
    if v == types.float32 or (isinstance(v, Vec) and v.dtype == types.float32):
        return lambda v: _HALF + _HALF * fast_tanh(_HALF * v)
    # exp(-v) overflows to inf for v < -709 and 1 / inf is the right 0
    if isinstance(v, Vec):
        return lambda v: 1.0 / (1.0 + vexp_libm(-v))
    return lambda v: 1.0 / (1.0 + math.exp(-v))


# ----------------------------------------------------------------------------
# allocation of the big arrays

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
    H256) land on new pages again, at a page fault per page: ~5000 faults and ~17 ms of
    a ~128 ms forward+backward there (measured). Here blocks up to 32 MiB come from the
    heap and up to ``KEEP_FREED_BYTES`` of its free top stay mapped: that call then
    faults no page and takes ~111 ms. Called once when the backend is imported; a
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
    touch of a fresh 4 KiB page costs a page fault: an LSTM forward at B64 T100 H256
    writes ~50 MB of new arrays per call, which took ~12k faults and ~30 ms of a ~65 ms
    call on this (virtualised) machine, against ~5 ms with 2 MiB pages (measured).
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
    Inference writes ~4 (T, B, H) arrays fewer into fresh memory: LSTM forward B64 T100
    H256 33.0 -> 31.7 ms, I125 H320 35.8 -> 34.3 ms."""
    return T if keep else 1


@njit(**JIT)
def states(s0, T):
    """(T+1, B, H) for the states of a sequence, s0: (B, H) the first (the rest are
    for the kernel to write): s[t] enters step t (s[t % (T+1)] for a ring, see ``kept``)."""
    s = empty((T + 1, s0.shape[0], s0.shape[1]), s0)
    s[0] = s0
    return s


# ----------------------------------------------------------------------------
# pointwise pieces and products shared by the cells


#: products below this many multiply-adds run in the kernels' own loops: below it a BLAS
#: call costs more in its fixed overhead (~1 us) than the arithmetic
SMALL_MACS = 1 << 15


@njit(**JIT)
def matmul(A, B, out):
    """out: (M, N) = A: (M, K) @ B: (K, N); A or B may be transposed views."""
    M, K = A.shape
    N = B.shape[1]
    if M * N * K >= SMALL_MACS:
        np.dot(A, B, out=out)
        return
    if N < 8:
        # rows shorter than a vector: one reduction along K per element (an inner loop
        # over N this short ran 5x slower, e.g. dx = dgates @ W.T at I=1)
        for m in range(M):
            for n in range(N):
                acc = out.dtype.type(0)
                for k in range(K):
                    acc += A[m, k] * B[k, n]
                out[m, n] = acc
        return
    for m in range(M):
        for n in range(N):
            out[m, n] = 0
        for k in range(K):
            a = A[m, k]
            for n in range(N):
                out[m, n] += a * B[k, n]


@njit(**JIT)
def add_row_product(hrow, R, out):
    """out: (G*H,) += hrow: (H,) @ R: (H, G*H), the fused path's recurrent product of one row."""
    H, GH = R.shape
    # four rows of R per sweep: a quarter of the loads and stores of out
    H4 = H - H % 4
    for k in range(0, H4, 4):
        h0, h1, h2, h3 = hrow[k], hrow[k + 1], hrow[k + 2], hrow[k + 3]
        for g in range(GH):
            out[g] += h0 * R[k, g] + h1 * R[k + 1, g] + h2 * R[k + 2, g] + h3 * R[k + 3, g]
    for k in range(H4, H):
        hk = hrow[k]
        for g in range(GH):
            out[g] += hk * R[k, g]


@njit(**JIT)
def add_rows_product(A, R, out, lo, hi):
    """out[n] += A[n] @ R for lo <= n < hi, the fused path's recurrent product of a block.

    A: (B, H)   R: (H, G*H)   out: (B, G*H). Two rows at a time share every load of R
    (products 1.5x faster than row by row at H=64, measured); an odd last row goes alone.
    """
    H, GH = R.shape
    H4 = H - H % 4
    n = lo
    while n + 1 < hi:
        o0, o1 = out[n], out[n + 1]
        for k in range(0, H4, 4):
            a0, a1, a2, a3 = A[n, k], A[n, k + 1], A[n, k + 2], A[n, k + 3]
            b0, b1, b2, b3 = A[n + 1, k], A[n + 1, k + 1], A[n + 1, k + 2], A[n + 1, k + 3]
            for g in range(GH):
                r0, r1, r2, r3 = R[k, g], R[k + 1, g], R[k + 2, g], R[k + 3, g]
                o0[g] += a0 * r0 + a1 * r1 + a2 * r2 + a3 * r3
                o1[g] += b0 * r0 + b1 * r1 + b2 * r2 + b3 * r3
        for k in range(H4, H):
            a, bb = A[n, k], A[n + 1, k]
            for g in range(GH):
                o0[g] += a * R[k, g]
                o1[g] += bb * R[k, g]
        n += 2
    if n < hi:
        add_row_product(A[n], R, out[n])


@njit(**JIT)
def add_into(a, b):
    """a += b for two 2-D arrays of one shape, without a temporary."""
    for n in range(a.shape[0]):
        for j in range(a.shape[1]):
            a[n, j] += b[n, j]


#: the side of a square block of ``transposed``
TRANSPOSE_BLOCK = 32


@njit(**JIT)
def transposed(a):
    """a.T as a new C-contiguous (N, M) array, for a: (M, N), a block at a time: the plain
    copy walks one side with a stride of a whole row, and a power-of-two row length maps
    every element of that walk to a few cache sets (640x1024 float32: 2.1 -> 0.5 ms,
    3200x256: 1.5 -> 0.9 ms, measured on one Zen 4 core)."""
    M, N = a.shape
    out = np.empty((N, M), a.dtype)
    for i0 in range(0, M, TRANSPOSE_BLOCK):
        i1 = min(M, i0 + TRANSPOSE_BLOCK)
        for j0 in range(0, N, TRANSPOSE_BLOCK):
            j1 = min(N, j0 + TRANSPOSE_BLOCK)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    out[j, i] = a[i, j]
    return out
