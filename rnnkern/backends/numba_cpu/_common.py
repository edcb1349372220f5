"""Pieces every Numba cell kernel shares: fast activations, the recurrent product
of one batch row, the weight-gradient GEMMs and the table of kernel variants.

Activations: float64 calls libm (``math.tanh``/``math.exp``), which keeps parity
with the float64 oracle at round-off level. float32 uses a branch-free rational
approximation of tanh (Eigen's ``generic_fast_tanh_float``, max error a few ulp)
that LLVM vectorises: there is no SVML here, and a libm call per element would
keep the pointwise pass scalar. ``sigmoid(v) = (1 + tanh(v / 2)) / 2``.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sys
from typing import NamedTuple

import numba
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

#: variant -> one-line description (``choose`` picks one by shape when none is asked for)
VARIANTS = {
    "v1": "BLAS GEMM for x@W before the loop, per-step BLAS h@R, one fused pointwise "
          "pass, one thread",
    "v2": "as v1, the batch split into row blocks, one per Numba thread, each running "
          "every step of its rows (single-threaded BLAS)",
    "v3": "fully fused: the recurrent product in the kernel's own loop (no BLAS per step), "
          "one thread",
    "v4": "as v3, the batch split into row blocks, one per Numba thread",
    "v5": "forward and backward with the batch as the innermost axis, on explicit "
          "vectors over rows padded to whole vectors, the cache kept in that layout (for "
          "tiny H, where a row of H units is shorter than a vector)",
    "v6": "as v1, the per-step product on a register-blocked SIMD micro-kernel over R "
          "packed once per call (``_simd``) instead of BLAS",
    "v7": "as v6, the batch split into row blocks, one per Numba thread",
    "v8": "as v6, each step's input part x[t] @ W on the micro-kernel too, over a packed W, "
          "instead of one GEMM before the loop (a step's gates stay in cache)",
    "v9": "as v8, the batch split into row blocks, one per Numba thread",
    "v10": "forward one row at a time (for a lone row, B = 1), each step's "
           "pre-activations in registers a block of units at a time over W and R packed by "
           "unit blocks (``_units``), the activations and state update on those registers; "
           "the backward as v6 where H is a multiple of PACKED_LONE_ROW_H, else as v3",
}


class Plan(NamedTuple):
    """How a kernel call runs: the variant, and what it means for the kernels."""

    name: str
    fused: bool  # the per-step product in the kernel's own loop, row by row
    packed: bool  # the per-step product on ``_simd``'s micro-kernel over a packed R
    chunks: int  # row blocks, one per Numba thread in parallel when > 1
    stepped: bool  # the input part x[t] @ W made in each step (packed), not before the loop


#: (fused, packed, parallel, stepped) of each variant (v5: v3's, for a backward on rows,
#: see ``numba_cpu._rows_layout``)
VARIANT_FLAGS = {"v1": (False, False, False, False), "v2": (False, False, True, False),
                 "v3": (True, False, False, False), "v4": (True, False, True, False),
                 "v5": (True, False, False, False), "v6": (False, True, False, False),
                 "v7": (False, True, True, False), "v8": (False, True, False, True),
                 "v9": (False, True, True, True), "v10": (False, True, False, False)}
#: the serial variant a parallel one falls back to when there is one thread or one row
SERIAL = {"v2": "v1", "v4": "v3", "v7": "v6", "v9": "v8"}
#: the variant a stepped one falls back to where its blocks' rows are not whole tiles
UNSTEPPED = {"v8": "v6", "v9": "v7"}

#: hidden sizes up to this run fully fused: a BLAS call per step costs more than the product
FUSED_MAX_H = 32
#: hidden sizes up to this run fully fused with row blocks per thread (v4) wherever there
#: are two rows per thread: at B32 H64 1.1-1.4x faster than a BLAS call per step (v1), for
#: every cell (measured; serially, v3 and v1 are about even there)
FUSED_PARALLEL_MAX_H = 64
#: W and R of at most this many bytes together, (I + H) * G*H * itemsize, have the input
#: part made in each step (v9/v8 for v7/v6), where each row block is whole 4-row tiles:
#: forward 1.04-1.11x faster at B64 T100 with I, H of 256/256, 125/320 and 512/512, RNN
#: I512 H1024 (6 MiB) and GRU I256 H768 (9 MiB); even for LSTM I256 H768 (12 MiB), 0.98
#: for GRU I512 H1024 (18 MiB), where W no longer stays in cache beside R (measured, two
#: threads; serially LSTM B64 I256 H256 1.08x)
STEPPED_MAX_BYTES = 10 << 20
#: rows per row block from which the input part is made in each step: a step's few rows
#: stream all of W for too little work (LSTM T64 B32 I256 H256 on two threads, 16 rows a
#: block, forward 1.1x faster with one GEMM before the loop; even at 32 rows)
STEPPED_MIN_ROWS = 32
#: a lone row (B=1) with H up to this runs v10: at B1 T1000 I8 the LSTM forward 0.32
#: against v6's 0.43 ms (H32), 0.62 against 0.69 (H64), 0.11 against v3's 0.18 (H3); GRU
#: 0.32 against 0.41 (H32), 0.56 against 0.53 (H64); RNN 0.17 against 0.20 (H32), 0.13
#: against 0.16 (H64); at H128 all three even (measured, one core, float32)
UNITS_MAX_H = 64
#: a lone row's backward with H a multiple of this (R.T then split into whole panels of
#: the packed product, no columns left over) runs on the packed product (v6's), else on
#: the fused loop (v3's): with columns left over (H=24) it ran 2x slower; at B1 T1000 H32
#: the LSTM forward on the packed product took 0.54 against 0.66 ms, GRU 0.45 against 0.52
#: (measured, before v10)
PACKED_LONE_ROW_H = 16
#: inputs up to this many have v10's steps make their own input part, more have it made
#: for all steps before the loop (``_units.pack_units``)
UNITS_IN_STEP_MAX_I = 16
#: hidden sizes up to this, with at least BATCH_INNER_MIN_B rows, run the v5 forward
BATCH_INNER_MAX_H = 8
BATCH_INNER_MIN_B = 8
#: rows x gate columns per step below which threads cost more than they save
PARALLEL_MIN_WORK = 16384
#: multiply-adds of a whole call, T * B * G*H * (H + I), below which a parallel variant
#: runs serially: such a call is short enough that one wait for a descheduled thread on a
#: busy machine costs more than a second thread saves (the speakers example's GRU, B16
#: H64, ran 40x slower beside one busy process with its calls split, 6x without)
PARALLEL_MIN_CALL_MACS = 1 << 24
#: multiply-adds of a product over all steps (input projection, weight gradients) from
#: which it is split into row blocks over the Numba threads where OpenBLAS runs one thread.
#: Below it a product takes less time serially than a parallel region can cost on a busy
#: machine, where it waits for a descheduled thread (the seed workload of ``rnnkern bench
#: train`` ran 10-20x slower a step beside other busy processes with its products split)
GEMM_PARALLEL_MIN_MACS = 1 << 23


def choose(variant: str | None, B: int, H: int, G: int, I: int, itemsize: int,
           T: int) -> Plan:
    """The plan of ``variant``, or of the variant picked by shape when it is None
    (B rows, H units, G gates, I inputs of ``itemsize`` bytes, T steps)."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant: expected None or one of {', '.join(map(repr, VARIANTS))}, "
                         f"got {variant!r}")
    plan = _shape_plan(variant, B, H, G, I, itemsize)
    if plan.chunks:
        return plan
    # asked only here: numba.get_num_threads() costs microseconds
    threads = numba.get_num_threads()
    small = B < 2 * threads or T * B * G * H * (H + I) < PARALLEL_MIN_CALL_MACS
    if threads < 2 or B < 2 or (variant is None and small):
        plan = plan._replace(name=SERIAL[plan.name], chunks=1)
    else:
        plan = plan._replace(chunks=min(B, threads))
    if variant is None and plan.stepped and (B % (4 * plan.chunks)
                                             or B // plan.chunks < STEPPED_MIN_ROWS):
        # rows past a multiple of 4 in a block run the input part one row at a time, each
        # streaming all of W: LSTM B6 H256 1.1-1.3x slower than one GEMM before the loop
        plan = plan._replace(name=UNSTEPPED[plan.name], stepped=False)
    return plan


@functools.lru_cache(maxsize=1024)
def _shape_plan(variant: str | None, B: int, H: int, G: int, I: int, itemsize: int) -> Plan:
    """``choose`` less the thread count: chunks=0 for a parallel variant (remembered per
    shape: the decision took ~0.3 us of a ~7 us call at the smallest shapes).

    It also starts Numba's thread pool, so that the pool runs before the process's first
    kernel call, whatever the plan. Why: Numba starts it when it loads a ``parallel=True``
    function from the cache, but a serial kernel compiled beside parallel callees that had
    themselves come from the cache is cached without that step (Numba 0.68 keeps a cached
    library's start-up functions out of the libraries that link it); loaded in a later
    process whose pool had not started, such a kernel segfaulted at its first call
    (``tests/test_numba.py::test_kernel_from_cache_starts_threads``). Once per process
    and shape, here, rather than in ``choose``: it costs microseconds.
    """
    numba.get_num_threads()
    if variant is not None:
        name = variant
    elif B == 1 and H <= UNITS_MAX_H:
        name = "v10"
    elif H <= BATCH_INNER_MAX_H and B >= BATCH_INNER_MIN_B:
        name = "v5"
    elif H <= FUSED_MAX_H:
        name = "v4" if B * G * H >= PARALLEL_MIN_WORK else "v3"
    elif H <= FUSED_PARALLEL_MAX_H:
        name = "v4"
    elif (I + H) * G * H * itemsize <= STEPPED_MAX_BYTES:
        name = "v9"
    else:
        name = "v7"
    fused, packed, parallel, stepped = VARIANT_FLAGS[name]
    if name == "v10":
        packed = H % PACKED_LONE_ROW_H == 0
        fused = not packed
    return Plan(name, fused, packed, 0 if parallel else 1, stepped)


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
