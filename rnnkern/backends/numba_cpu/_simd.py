"""The per-step recurrent product on explicit vectors (``_vec``), over a packed copy of R.

Why: at the GEMM-bound shapes the per-step ``h @ R`` (e.g. 64x256 @ 256x1024) is where
the time goes, and OpenBLAS packs all of R again on every call, once per step. Here R is
packed once per kernel call into panels of ``2 * lanes`` columns, and each step runs a
register-blocked micro-kernel over them (a tile of the output in registers, the panels
streamed from cache: 6 (or 4) rows x two panels with AVX-512's 32 registers, 6 (or 4)
rows x one panel with AVX2's 16, ``PAIRED``): at that product 89 GFLOP/s on one core
against OpenBLAS's 66 (benchmarks/README.md, "Design notes", the packed per-step
product). Each call first copies the rows of its tiles so that a tile reads them in one
stream (``_pack_rows``, BLIS's packing of A), R's panels from L3 beside them.

The same tiles make the input part ``x @ W`` over a packed W: for all steps at once
before the loop (rows-packed), or step by step inside it (rows-packed-stepped,
``input_part``), so that a step's gates never leave cache.
K runs in blocks of ``KB``: a pair of panels over one block stays in L2 while every row
tile uses it, and a pair's blocks run one after another, so that the partial sums they
pass on are still in cache.

The backward's weight gradients dW = x.T @ dgates and dR = h.T @ dgates run on it too, over
the gate gradients packed once (``weight_grads``).

The micro-kernel's accumulators are ``_vec.Vec`` values: LLVM keeps a tile of the output
in registers only when they are values, not array elements it cannot prove unaliased.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from ._jit import FASTMATH, JIT
from ._memory import empty
from ._products import add_into, matmul, transposed
from ._vec import VECTOR_BYTES, lanes, vbcast, vfma, vload, vstore, vzero

# ----------------------------------------------------------------------------
# the packed product

#: the tile that keeps a block of the output in registers, by the register file: with
#: AVX-512's 32 vector registers, 4 rows x a pair of panels (16 accumulators); with AVX2's
#: 16, 6 rows x one panel (12 accumulators, 2 panel vectors and a broadcast: 15). The 4 x 2
#: tile on AVX2 spills accumulators to the stack at every multiply-add (512x1280 @
#: 1280x4096: 34 GFLOP/s against 81 with 6 x 1; benchmarks/README.md, "Design notes",
#: the tile follows the register file)
PAIRED = VECTOR_BYTES == 64

#: rows of P (the K axis) per block of ``product``: 128 KB of the panels a tile reads,
#: float32 or float64, an eighth of a Zen 4 core's L2: 512 rows of a pair of 64-byte-vector
#: panels, 2048 of one AVX2 panel (smaller blocks ran 3-8% slower; benchmarks/README.md,
#: "Design notes", K in blocks)
KB = 512 if PAIRED else 2048


def _panel(B, P, p):
    """P[p] = B[:, p * NR : (p + 1) * NR], the panel's rows consecutive."""


@overload(_panel, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ol_panel(B, P, p):
    if B.layout == "C":
        def rows(B, P, p):
            # a pair of vectors per row: the scalar loop below ran 7x slower at 1024x4096
            K, N = B.shape
            L = lanes(B)
            for k in range(K):
                o = (p * K + k) * 2 * L
                vstore(P, o, vload(B, k * N + p * 2 * L))
                vstore(P, o + L, vload(B, k * N + p * 2 * L + L))
        return rows

    def any_layout(B, P, p):
        # read B along its memory order: by rows when it is row-major, by columns when it
        # is a transposed view (the backward's R.T)
        K = B.shape[0]
        nr = P.shape[2]
        if B.strides[1] <= B.strides[0]:
            for k in range(K):
                for j in range(nr):
                    P[p, k, j] = B[k, p * nr + j]
        else:
            for j in range(nr):
                for k in range(K):
                    P[p, k, j] = B[k, p * nr + j]
    return any_layout


@njit(**JIT)
def _panels(B):
    """An uninitialised (N // NR, K, NR) array for ``pack(B)``: B: (K, N)."""
    K, N = B.shape
    nr = 2 * lanes(B)
    return empty((N // nr, K, nr), B)


@njit(parallel=True, **JIT)
def pack(B):
    """B: (K, N), any layout -> (N // NR, K, NR) C-contiguous, NR = 2 * lanes: B's columns
    in panels of NR, each panel's rows consecutive (the order the micro-kernel reads them).
    The last N % NR columns are left out; ``product`` takes those from B itself."""
    P = _panels(B)
    for p in prange(P.shape[0]):
        _panel(B, P, p)
    return P


@njit(**JIT)
def pack_serial(B):
    """``pack`` on the calling thread alone, for a caller that is one of several threads
    already."""
    P = _panels(B)
    for p in range(P.shape[0]):
        _panel(B, P, p)
    return P


@njit(**JIT)
def _start(out, o, add):
    """An accumulator's first value: out.flat[o : o + lanes] when adding to out, else 0."""
    return vload(out, o) if add else vzero(out)


@njit(**JIT)
def _tile4x2(Ap, P, out, m, p, add, k0, k1, ks, rs):
    """out[m:m+4, panels p, p+1] (+)= A[m:m+4] @ P[p:p+2]: 16 vector accumulators in
    registers, four vectors of P per broadcast row element (3-6% faster than one panel
    at a time).
    Ap: A[m + r, k] at Ap.flat[m*K + k*ks + r*rs]: A itself (ks = 1, rs = K) or its rows
    packed by ``_pack_rows`` (ks = 4, rs = 1)
    P: (panels, K, NR)   out: (M, N) C-contiguous."""
    K, N, L = P.shape[1], out.shape[1], lanes(Ap)
    o = m * N + p * 2 * L
    c00, c01, c02, c03 = _start(out, o, add), _start(out, o + L, add), \
        _start(out, o + 2 * L, add), _start(out, o + 3 * L, add)
    c10, c11, c12, c13 = _start(out, o + N, add), _start(out, o + N + L, add), \
        _start(out, o + N + 2 * L, add), _start(out, o + N + 3 * L, add)
    c20, c21, c22, c23 = _start(out, o + 2 * N, add), _start(out, o + 2 * N + L, add), \
        _start(out, o + 2 * N + 2 * L, add), _start(out, o + 2 * N + 3 * L, add)
    c30, c31, c32, c33 = _start(out, o + 3 * N, add), _start(out, o + 3 * N + L, add), \
        _start(out, o + 3 * N + 2 * L, add), _start(out, o + 3 * N + 3 * L, add)
    a0, ps = m * K, K * 2 * L  # the tile's packed rows, the elements of one panel
    pk = p * ps
    for k in range(k0, k1):
        q, ak = pk + 2 * L * k, a0 + ks * k
        b0, b1 = vload(P, q), vload(P, q + L)
        b2, b3 = vload(P, q + ps), vload(P, q + ps + L)
        a = vbcast(Ap, ak)
        c00, c01, c02, c03 = vfma(a, b0, c00), vfma(a, b1, c01), vfma(a, b2, c02), vfma(a, b3, c03)
        a = vbcast(Ap, ak + rs)
        c10, c11, c12, c13 = vfma(a, b0, c10), vfma(a, b1, c11), vfma(a, b2, c12), vfma(a, b3, c13)
        a = vbcast(Ap, ak + 2 * rs)
        c20, c21, c22, c23 = vfma(a, b0, c20), vfma(a, b1, c21), vfma(a, b2, c22), vfma(a, b3, c23)
        a = vbcast(Ap, ak + 3 * rs)
        c30, c31, c32, c33 = vfma(a, b0, c30), vfma(a, b1, c31), vfma(a, b2, c32), vfma(a, b3, c33)
    for r, (v0, v1, v2, v3) in enumerate(((c00, c01, c02, c03), (c10, c11, c12, c13),
                                          (c20, c21, c22, c23), (c30, c31, c32, c33))):
        vstore(out, o + r * N, v0)
        vstore(out, o + r * N + L, v1)
        vstore(out, o + r * N + 2 * L, v2)
        vstore(out, o + r * N + 3 * L, v3)


@njit(**JIT)
def _tile6x2(Ap, P, out, m, p, add, k0, k1, ks, rs):
    """``_tile4x2`` over 6 rows: 24 vector accumulators, for AVX-512's 32 registers
    (1280x512 @ 512x4096 on one AVX-512 core: 1.3x the rate of 4 rows)."""
    K, N, L = P.shape[1], out.shape[1], lanes(Ap)
    o = m * N + p * 2 * L
    c00, c01, c02, c03 = _start(out, o, add), _start(out, o + L, add), \
        _start(out, o + 2 * L, add), _start(out, o + 3 * L, add)
    c10, c11, c12, c13 = _start(out, o + N, add), _start(out, o + N + L, add), \
        _start(out, o + N + 2 * L, add), _start(out, o + N + 3 * L, add)
    c20, c21, c22, c23 = _start(out, o + 2 * N, add), _start(out, o + 2 * N + L, add), \
        _start(out, o + 2 * N + 2 * L, add), _start(out, o + 2 * N + 3 * L, add)
    c30, c31, c32, c33 = _start(out, o + 3 * N, add), _start(out, o + 3 * N + L, add), \
        _start(out, o + 3 * N + 2 * L, add), _start(out, o + 3 * N + 3 * L, add)
    c40, c41, c42, c43 = _start(out, o + 4 * N, add), _start(out, o + 4 * N + L, add), \
        _start(out, o + 4 * N + 2 * L, add), _start(out, o + 4 * N + 3 * L, add)
    c50, c51, c52, c53 = _start(out, o + 5 * N, add), _start(out, o + 5 * N + L, add), \
        _start(out, o + 5 * N + 2 * L, add), _start(out, o + 5 * N + 3 * L, add)
    a0, ps = m * K, K * 2 * L
    pk = p * ps
    for k in range(k0, k1):
        q, ak = pk + 2 * L * k, a0 + ks * k
        b0, b1 = vload(P, q), vload(P, q + L)
        b2, b3 = vload(P, q + ps), vload(P, q + ps + L)
        a = vbcast(Ap, ak)
        c00, c01, c02, c03 = vfma(a, b0, c00), vfma(a, b1, c01), vfma(a, b2, c02), vfma(a, b3, c03)
        a = vbcast(Ap, ak + rs)
        c10, c11, c12, c13 = vfma(a, b0, c10), vfma(a, b1, c11), vfma(a, b2, c12), vfma(a, b3, c13)
        a = vbcast(Ap, ak + 2 * rs)
        c20, c21, c22, c23 = vfma(a, b0, c20), vfma(a, b1, c21), vfma(a, b2, c22), vfma(a, b3, c23)
        a = vbcast(Ap, ak + 3 * rs)
        c30, c31, c32, c33 = vfma(a, b0, c30), vfma(a, b1, c31), vfma(a, b2, c32), vfma(a, b3, c33)
        a = vbcast(Ap, ak + 4 * rs)
        c40, c41, c42, c43 = vfma(a, b0, c40), vfma(a, b1, c41), vfma(a, b2, c42), vfma(a, b3, c43)
        a = vbcast(Ap, ak + 5 * rs)
        c50, c51, c52, c53 = vfma(a, b0, c50), vfma(a, b1, c51), vfma(a, b2, c52), vfma(a, b3, c53)
    for r, (v0, v1, v2, v3) in enumerate(((c00, c01, c02, c03), (c10, c11, c12, c13),
                                          (c20, c21, c22, c23), (c30, c31, c32, c33),
                                          (c40, c41, c42, c43), (c50, c51, c52, c53))):
        vstore(out, o + r * N, v0)
        vstore(out, o + r * N + L, v1)
        vstore(out, o + r * N + 2 * L, v2)
        vstore(out, o + r * N + 3 * L, v3)


@njit(**JIT)
def _tile6(Ap, P, out, m, p, add, k0, k1, ks, rs):
    """out[m:m+6, panel p] (+)= A[m:m+6] @ P[p]: the AVX2 tile, 12 accumulators; Ap, ks, rs
    as for ``_tile4x2`` (packed: ks = 6)."""
    K, N, L = P.shape[1], out.shape[1], lanes(Ap)
    o = m * N + p * 2 * L
    c00, c01 = _start(out, o, add), _start(out, o + L, add)
    c10, c11 = _start(out, o + N, add), _start(out, o + N + L, add)
    c20, c21 = _start(out, o + 2 * N, add), _start(out, o + 2 * N + L, add)
    c30, c31 = _start(out, o + 3 * N, add), _start(out, o + 3 * N + L, add)
    c40, c41 = _start(out, o + 4 * N, add), _start(out, o + 4 * N + L, add)
    c50, c51 = _start(out, o + 5 * N, add), _start(out, o + 5 * N + L, add)
    a0, pk = m * K, p * K * 2 * L
    for k in range(k0, k1):
        b0, b1 = vload(P, pk + 2 * L * k), vload(P, pk + 2 * L * k + L)
        ak = a0 + ks * k
        a = vbcast(Ap, ak)
        c00, c01 = vfma(a, b0, c00), vfma(a, b1, c01)
        a = vbcast(Ap, ak + rs)
        c10, c11 = vfma(a, b0, c10), vfma(a, b1, c11)
        a = vbcast(Ap, ak + 2 * rs)
        c20, c21 = vfma(a, b0, c20), vfma(a, b1, c21)
        a = vbcast(Ap, ak + 3 * rs)
        c30, c31 = vfma(a, b0, c30), vfma(a, b1, c31)
        a = vbcast(Ap, ak + 4 * rs)
        c40, c41 = vfma(a, b0, c40), vfma(a, b1, c41)
        a = vbcast(Ap, ak + 5 * rs)
        c50, c51 = vfma(a, b0, c50), vfma(a, b1, c51)
    for r, (v0, v1) in enumerate(((c00, c01), (c10, c11), (c20, c21), (c30, c31),
                                  (c40, c41), (c50, c51))):
        vstore(out, o + r * N, v0)
        vstore(out, o + r * N + L, v1)


@njit(**JIT)
def _row_tiles(rows):
    """(tiles of 6 rows, tiles of 4) of ``product`` over ``rows`` rows; the rest (at most
    3, at most 1 where rows is above 5) run one row at a time. One fewer tile of 6 where
    that leaves whole tiles of 4 instead of 2 or 3 lone rows (32 rows: 4 x 6 + 2 x 4)."""
    sixes = rows // 6
    rest = rows - 6 * sixes
    if rest % 4 >= 2 and sixes > 0:
        sixes -= 1
        rest += 6
    return sixes, rest // 4


@njit(**JIT)
def _tile4(Ap, P, out, m, p, add, k0, k1, ks, rs):
    """``_tile4x2`` for the one panel p (the last of an odd number; every panel of the 4
    rows past the tiles of 6 on AVX2): 8 accumulators."""
    K, N, L = P.shape[1], out.shape[1], lanes(Ap)
    o = m * N + p * 2 * L
    c00, c01 = _start(out, o, add), _start(out, o + L, add)
    c10, c11 = _start(out, o + N, add), _start(out, o + N + L, add)
    c20, c21 = _start(out, o + 2 * N, add), _start(out, o + 2 * N + L, add)
    c30, c31 = _start(out, o + 3 * N, add), _start(out, o + 3 * N + L, add)
    a0, pk = m * K, p * K * 2 * L
    for k in range(k0, k1):
        b0, b1 = vload(P, pk + 2 * L * k), vload(P, pk + 2 * L * k + L)
        ak = a0 + ks * k
        a = vbcast(Ap, ak)
        c00, c01 = vfma(a, b0, c00), vfma(a, b1, c01)
        a = vbcast(Ap, ak + rs)
        c10, c11 = vfma(a, b0, c10), vfma(a, b1, c11)
        a = vbcast(Ap, ak + 2 * rs)
        c20, c21 = vfma(a, b0, c20), vfma(a, b1, c21)
        a = vbcast(Ap, ak + 3 * rs)
        c30, c31 = vfma(a, b0, c30), vfma(a, b1, c31)
    vstore(out, o, c00)
    vstore(out, o + L, c01)
    vstore(out, o + N, c10)
    vstore(out, o + N + L, c11)
    vstore(out, o + 2 * N, c20)
    vstore(out, o + 2 * N + L, c21)
    vstore(out, o + 3 * N, c30)
    vstore(out, o + 3 * N + L, c31)


@njit(**JIT)
def _tile1x4(A, P, out, m, p, add, k0, k1):
    """out[m, panels p..p+3] (+)= A[m] @ P[p:p+4]: one row, four panels, again 8
    accumulators (a lone row with one panel has 2 dependent FMA chains, a quarter of the
    throughput). A: (M, K) C-contiguous itself, not packed: one row is one stream already."""
    K, N, L = P.shape[1], out.shape[1], lanes(A)
    o = m * N + p * 2 * L
    c0, c1, c2, c3 = _start(out, o, add), _start(out, o + L, add), \
        _start(out, o + 2 * L, add), _start(out, o + 3 * L, add)
    c4, c5, c6, c7 = _start(out, o + 4 * L, add), _start(out, o + 5 * L, add), \
        _start(out, o + 6 * L, add), _start(out, o + 7 * L, add)
    ps = K * 2 * L  # elements of one panel
    p0 = p * ps
    for k in range(k0, k1):
        a = vbcast(A, m * K + k)
        q = p0 + 2 * L * k
        c0, c1 = vfma(a, vload(P, q), c0), vfma(a, vload(P, q + L), c1)
        c2, c3 = vfma(a, vload(P, q + ps), c2), vfma(a, vload(P, q + ps + L), c3)
        c4 = vfma(a, vload(P, q + 2 * ps), c4)
        c5 = vfma(a, vload(P, q + 2 * ps + L), c5)
        c6 = vfma(a, vload(P, q + 3 * ps), c6)
        c7 = vfma(a, vload(P, q + 3 * ps + L), c7)
    for i, v in enumerate((c0, c1, c2, c3, c4, c5, c6, c7)):
        vstore(out, o + i * L, v)


@njit(**JIT)
def _tile1(A, P, out, m, p, add, k0, k1):
    """``_tile4`` for the one row m and the one panel p: a row left over past a multiple
    of 4 rows, in the panels left over past a multiple of 4 panels. K runs in four
    interleaved partial sums (8 accumulators), added at the end: with one sum per vector,
    2 chains of K dependent multiply-adds, a lone row's backward product (B1 H32:
    1 x 128 @ 128 x 32, two panels) waited on the multiply-add latency."""
    K, N, L = P.shape[1], out.shape[1], lanes(A)
    o = m * N + p * 2 * L
    c0, c1 = _start(out, o, add), _start(out, o + L, add)
    d0, d1, e0, e1, f0, f1 = vzero(A), vzero(A), vzero(A), vzero(A), vzero(A), vzero(A)
    pk, ak = p * K * 2 * L, m * K
    k4 = k0 + (k1 - k0) // 4 * 4
    for k in range(k0, k4, 4):
        q = pk + 2 * L * k
        a = vbcast(A, ak + k)
        c0, c1 = vfma(a, vload(P, q), c0), vfma(a, vload(P, q + L), c1)
        a = vbcast(A, ak + k + 1)
        d0, d1 = vfma(a, vload(P, q + 2 * L), d0), vfma(a, vload(P, q + 3 * L), d1)
        a = vbcast(A, ak + k + 2)
        e0, e1 = vfma(a, vload(P, q + 4 * L), e0), vfma(a, vload(P, q + 5 * L), e1)
        a = vbcast(A, ak + k + 3)
        f0, f1 = vfma(a, vload(P, q + 6 * L), f0), vfma(a, vload(P, q + 7 * L), f1)
    for k in range(k4, k1):
        a = vbcast(A, ak + k)
        c0 = vfma(a, vload(P, pk + 2 * L * k), c0)
        c1 = vfma(a, vload(P, pk + 2 * L * k + L), c1)
    vstore(out, o, (c0 + d0) + (e0 + f0))
    vstore(out, o + L, (c1 + d1) + (e1 + f1))


@njit(**JIT)
def _interleave(A, Ap, m, mr):
    """Ap[m*K : (m+mr)*K] = A[m : m+mr] with A[m + r, k] at m*K + k*mr + r."""
    K = A.shape[1]
    o = m * K
    for r in range(mr):
        for k in range(K):
            Ap[o + k * mr + r] = A[m + r, k]


#: columns of a product from which ``product`` packs its tiles' rows (``_pack_rows``): below
#: it the copy costs more than it saves (each element of A meets 2N multiply-adds; RNN B1
#: T1000 I8 H32 backward, whose weight gradients have N = 32: 201 -> 220 us with the copy)
PACK_ROWS_MIN_N = 256


@njit(**JIT)
def _pack_rows(A, Ap, lo, m6, m4):
    """Ap[lo*K : m4*K] = A[lo:m4], the rows of ``_row_tiles``' tiles of 6 (from lo) and of
    4 (from m6), each tile's rows interleaved, so that a tile reads its broadcasts in one
    sequential stream.

    Why: the tiles read a column of their rows at every k, MR rows K elements apart: a
    4 KiB row stride puts all MR rows in one set of the L1 cache, and the prefetcher
    follows one stream better than MR (30 x 1024 @ 1024x4096 on one AVX2 core: 58-63 ->
    68-76 GFLOP/s, packing included; benchmarks/README.md, "Design notes", the tiles' rows packed).
    """
    for m in range(lo, m6, 6):
        _interleave(A, Ap, m, 6)
    for m in range(m6, m4, 4):
        _interleave(A, Ap, m, 4)


@njit(**JIT)
def _tile(Ap, P, out, m, p, acc, k0, k1, ks, rs, six):
    """One tile of ``_row_tiles_product``: rows m..m+6 (``six``) or m..m+4, panel p and,
    where there is one, p + 1, K block k0..k1."""
    if six:
        if PAIRED and p + 1 < P.shape[0]:
            _tile6x2(Ap, P, out, m, p, acc, k0, k1, ks, rs)
        else:
            _tile6(Ap, P, out, m, p, acc, k0, k1, ks, rs)
    elif PAIRED and p + 1 < P.shape[0]:
        _tile4x2(Ap, P, out, m, p, acc, k0, k1, ks, rs)
    else:
        _tile4(Ap, P, out, m, p, acc, k0, k1, ks, rs)


#: bytes of a product's row tiles (their rows of A: rows x K) from which, where one K block
#: of all its panels fits in L2 (``K_OUTER_MAX_PANEL_BYTES``), its K blocks run outermost
#: and each tile runs over all the panels: the tile's block of A then stays in L1 instead of
#: coming back from L3 once per pair of panels (dx = dgates @ W.T, LSTM T20 B64 I512 H1024
#: on one AVX-512 core: 130 -> 185 GF/s; B64 T100 I256 H256: 131 -> 187). Rows that fit in
#: L2 are read from there either way, and panels first is faster for them (the per-step
#: products)
K_OUTER_MIN_BYTES = 1 << 20
#: bytes of one K block of a product's panels up to which it stays in L2 (see above)
K_OUTER_MAX_PANEL_BYTES = 1 << 20


@njit(**JIT)
def _row_tiles_product(Ap, P, out, lo, m6, m4, add, ks6, ks4, rs):
    """``product``'s rows lo..m4 in its tiles of 6 rows (lo..m6) and of 4 (m6..m4), every
    whole panel. Ap: A's rows, element (r, k) of the tile from row m at
    Ap[m*K + k*ks + r*rs], ks = ks6 or ks4 (see ``_tile4x2``)."""
    panels, K = P.shape[0], P.shape[1]
    step = 2 if PAIRED else 1
    if (m4 - lo) * K * Ap.itemsize >= K_OUTER_MIN_BYTES \
            and min(K, KB) * panels * P.shape[2] * P.itemsize <= K_OUTER_MAX_PANEL_BYTES:
        for k0 in range(0, K, KB):
            k1 = min(K, k0 + KB)
            acc = add or k0 > 0
            for m in range(lo, m6, 6):
                for p in range(0, panels, step):
                    _tile(Ap, P, out, m, p, acc, k0, k1, ks6, rs, True)
            for m in range(m6, m4, 4):
                for p in range(0, panels, step):
                    _tile(Ap, P, out, m, p, acc, k0, k1, ks4, rs, False)
        return
    # K in blocks: one block of a pair of panels (KB * 2 * NR elements) stays in L2 while
    # every row tile uses it, the tiles' partial sums going through out; the blocks of a
    # pair run one after the other, so that those partial sums are still in cache when
    # the next block reads them (K outermost, they came back from L3 at N = 4096: 32 rows
    # by 1024 @ 1024 x 4096 ran ~3% slower)
    for p in range(0, panels, step):
        for k0 in range(0, K, KB):
            k1 = min(K, k0 + KB)
            acc = add or k0 > 0
            for m in range(lo, m6, 6):
                _tile(Ap, P, out, m, p, acc, k0, k1, ks6, rs, True)
            for m in range(m6, m4, 4):
                _tile(Ap, P, out, m, p, acc, k0, k1, ks4, rs, False)


@njit(**JIT)
def product_work(M, K, N, like, packed):
    """``product``'s work for A: (M, K) @ B: (K, N): (M*N,) for BLAS's result before it is
    added, and for a packed variant (M*K,) for the micro-kernel's copy of A's rows (a B
    narrower than one panel goes to BLAS there too)."""
    return np.empty(M * (max(K, N) if packed is not None else N), like.dtype)


@njit(**JIT)
def _blas_product(A, B, out, lo, hi, add, work):
    """``product`` on BLAS (``matmul``); for ``add`` through work[:M*N] as (M, N)."""
    M, N = A.shape[0], B.shape[1]
    if add:
        assert work.shape[0] >= M * N
        scratch = work[:M * N].reshape((M, N))
        matmul(A[lo:hi], B, scratch[lo:hi])
        add_into(out[lo:hi], scratch[lo:hi])
    else:
        matmul(A[lo:hi], B, out[lo:hi])


@njit(**JIT)
def product(A, B, P, out, lo, hi, add, work):
    """out[lo:hi] = A[lo:hi] @ B, or += when ``add``: the per-step recurrent product of a
    block of rows (adding it where it is summed with the input part, x @ W or the gradient
    carried over: no pass over a separate result).

    A: (M, K) C-contiguous   B: (K, N)   out: (M, N) C-contiguous
    P: ``pack(B)``, or None to call ``matmul`` (BLAS from ``SMALL_MACS`` multiply-adds)
    instead; None is decided by the argument's type, so that a kernel without a packed
    variant compiles without the micro-kernel. ``pack`` of a B narrower than one panel is
    empty, and such a product goes to BLAS too.
    work: ``product_work(M, K, N, ...)``, a 1-D workspace: the micro-kernel's copy of
    A[lo:hi] (``_pack_rows``) in work[lo*K : hi*K], or the rows lo..hi of BLAS's result for
    ``add``, work[:M*N] as (M, N); nothing else of it is written (one buffer, not two: an
    array argument more cost a tenth of a step at B1 H32)
    """
    K, N = B.shape
    assert A.shape[1] == K and out.shape[1] == N and 0 <= lo <= hi <= A.shape[0]
    assert hi <= out.shape[0]
    if P is None:
        _blas_product(A, B, out, lo, hi, add, work)
        return
    nr = P.shape[2]
    # the tiles index raw memory: shapes that do not fit would read or write out of bounds
    assert P.shape[1] == K and nr == 2 * lanes(A)
    if P.shape[0] == 0:
        _blas_product(A, B, out, lo, hi, add, work)
        return
    if K == 0:  # no K blocks below to write out: an empty sum
        if not add:
            out[lo:hi] = 0
        return
    assert P.shape[0] == N // nr and work.shape[0] >= hi * K
    sixes, fours = _row_tiles(hi - lo)
    m6 = lo + 6 * sixes
    m4 = m6 + 4 * fours
    if m4 > lo:
        # the row tiles' rows from a copy (element (r, k) at k*MR + r) or from A itself
        if N >= PACK_ROWS_MIN_N:
            _pack_rows(A, work, lo, m6, m4)
            _row_tiles_product(work, P, out, lo, m6, m4, add, 6, 4, 1)
        else:
            _row_tiles_product(A.reshape(A.size), P, out, lo, m6, m4, add, 1, 1, K)
    panels = P.shape[0]
    p4 = panels // 4 * 4
    for k0 in range(0, K, KB):
        k1 = min(K, k0 + KB)
        acc = add or k0 > 0
        for m in range(m4, hi):
            for p in range(0, p4, 4):
                _tile1x4(A, P, out, m, p, acc, k0, k1)
            for p in range(p4, panels):
                _tile1(A, P, out, m, p, acc, k0, k1)
    # columns past the last whole panel, read from B itself
    for m in range(lo, hi):
        if not add:
            for j in range(panels * nr, N):
                out[m, j] = 0
        for k in range(K):
            a = A[m, k]
            for j in range(panels * nr, N):
                out[m, j] += a * B[k, j]


def _pack_or_none(B, packed):
    """``pack_if`` for jitted callers, chosen by ``packed``'s type."""


@overload(_pack_or_none, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ol_pack_or_none(B, packed):
    # by type, not by a branch: Numba prunes ``packed is None`` only where packed is None,
    # and an unpruned branch would make the result Optional (None or an array)
    if isinstance(packed, types.NoneType):
        return lambda B, packed: None
    return lambda B, packed: pack(B)


@njit(**JIT)
def pack_if(B, packed):
    """``pack(B)`` for a packed variant (``packed`` True), else None (``packed`` None),
    which makes ``product`` call BLAS; the argument's type decides, so that a kernel
    without a packed variant compiles without ``pack``."""
    return _pack_or_none(B, packed)


@njit(parallel=True, **JIT)
def _product_parallel(chunks, A, B, P, out):
    """out = A: (N, K) @ B with ``product``, in ``chunks`` row blocks, one per Numba
    thread."""
    N = A.shape[0]
    work = product_work(N, A.shape[1], 0, A, True)
    for i in prange(chunks):
        product(A, B, P, out, i * N // chunks, (i + 1) * N // chunks, False, work)


@njit(**JIT)
def input_projection(x, W, PW, G, chunks):
    """(T, B, G) = x: (T, B, I) @ W: (I, G), the input part of every step at once, with
    ``product`` over PW (``pack_if(W, ...)``: on the micro-kernel, or BLAS when None);
    ``chunks`` (None: one) splits the T*B rows into that many blocks, one per Numba thread.
    (The parallel loop is a function of its own: entering a ``parallel=True`` function
    costs a tenth of a call at the smallest shapes even when its prange is not
    reached.)"""
    T, B, I = x.shape
    N = T * B
    out = empty((T, B, G), x)
    x2, o2 = x.reshape(N, I), out.reshape(N, G)
    if chunks is None:
        product(x2, W, PW, o2, 0, N, False, product_work(N, I, 0, x, True))
    else:
        _product_parallel(chunks, x2, W, PW, o2)
    return out


@njit(**JIT)
def input_part(x, W, G, gemm_chunks, packed, stepped, n):
    """x: (T, B, I) @ W: (I, G) for every step -> (T, B, G), and PW: W packed (or None for
    an unpacked variant). ``packed`` and ``stepped`` are True or None (see ``pack_if``).

    stepped: each step makes its own slice with ``product(x[t], W, PW, ...)`` while that
    step's rows are in cache: the array comes back unfilled, (n, B, G) for the n steps a
    forward keeps (``_memory.kept``).
    Else ``input_projection`` of all steps at once, in gemm_chunks row blocks: on the
    micro-kernel for a packed variant (LSTM B64 T20 I512 H1024: 26.6 -> 24.6 ms against
    OpenBLAS), on BLAS for the others.
    """
    if stepped is not None:
        return empty((n, x.shape[1], G), x), pack(W)
    PW = pack_if(W, packed)
    return input_projection(x, W, PW, G, gemm_chunks), PW


# ----------------------------------------------------------------------------
# the products over all steps of a backward


@njit(**JIT)
def _weight_grads_rows(x2, W, PWt, h2, dgx2, dgh2, dx2, dW, dR, db, packed):
    """The part of ``weight_grads`` that rows x2: (N, I), h2: (N, H), dgx2, dgh2: (N, G*H)
    make: writes dx2: (N, I) and dW: (I, G*H), dR: (H, G*H), db: (G*H,) float64 (zeros on
    entry), their sums over these rows. h2, dgh2 and dR None: no recurrent part (Dense).
    PWt: ``_dx_panels``; packed: True or None, see ``weight_grads``."""
    n, GH = dgx2.shape
    # the micro-kernel's copies of its products' rows: dgx2's (dx), x2.T's and h2.T's (dW,
    # dR; H <= G*H), one after another in one buffer (none for packed None: BLAS)
    work = product_work(n, max(GH, x2.shape[1]), 0, dgx2, packed)
    product(dgx2, W.T, PWt, dx2, 0, n, False, work)
    # dW and dR on the micro-kernel over the gate gradients packed once (one pack when
    # dgx2 is dgh2), faster than OpenBLAS (B64 T100 I256 H256: 39.8 -> 36.1 ms;
    # benchmarks/README.md, "Design notes", weight gradients after the loop). Where the
    # gate columns end past a whole panel, the columns left over would run in product's
    # scalar loop, a K = rows long one: BLAS.
    if packed is None or GH % (2 * lanes(dgx2)):
        matmul(x2.T, dgx2, dW)
        if h2 is not None:
            matmul(h2.T, dgh2, dR)
    else:
        Px = pack_serial(dgx2)
        xt = transposed(x2)  # product's rows are C-contiguous
        product(xt, dgx2, Px, dW, 0, xt.shape[0], False, work)
        if h2 is not None:
            Ph = Px if dgh2.ctypes.data == dgx2.ctypes.data else pack_serial(dgh2)
            ht = transposed(h2)
            product(ht, dgh2, Ph, dR, 0, ht.shape[0], False, work)
    # float64 accumulator: N float32 terms would otherwise lose digits
    for n in range(dgx2.shape[0]):
        for g in range(dgx2.shape[1]):
            db[g] += dgx2[n, g]


def _block(a, lo, hi):
    """a[lo:hi], or None for None (a Dense layer's missing recurrent part)."""


@overload(_block, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ol_block(a, lo, hi):
    if isinstance(a, types.NoneType):
        return lambda a, lo, hi: None
    return lambda a, lo, hi: a[lo:hi]


def _sum_into(a, partials, i):
    """a for row block 0, else partials[i - 1]; None for None."""


@overload(_sum_into, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ol_sum_into(a, partials, i):
    if isinstance(a, types.NoneType):
        return lambda a, partials, i: None
    return lambda a, partials, i: a if i == 0 else partials[i - 1]


@njit(parallel=True, **JIT)
def _weight_grads_parallel(chunks, x2, W, PWt, h2, dgx2, dgh2, dx2, dW, pW, dR, pR, db,
                           packed):
    """``_weight_grads_rows`` over ``chunks`` row blocks, one per Numba thread: block 0
    into dW, dR, db[0], block i > 0 into the partials pW[i - 1], pR[i - 1], db[i]."""
    N = x2.shape[0]
    for i in prange(chunks):
        lo, hi = i * N // chunks, (i + 1) * N // chunks
        _weight_grads_rows(x2[lo:hi], W, PWt, _block(h2, lo, hi), dgx2[lo:hi],
                           _block(dgh2, lo, hi), dx2[lo:hi], _sum_into(dW, pW, i),
                           _sum_into(dR, pR, i), db[i], packed)


def _recurrent_part(h, dgh, T, chunks):
    """h[:T], dgh as (T*B, .) rows, dR and its partials for ``weight_grads``; all None for
    h None."""


@overload(_recurrent_part, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ol_recurrent_part(h, dgh, T, chunks):
    # by type, not by a branch: a branch on ``h is None`` would make each of them Optional
    if isinstance(h, types.NoneType):
        return lambda h, dgh, T, chunks: (None, None, None, None)

    def arrays(h, dgh, T, chunks):
        N, H, GH = T * h.shape[1], h.shape[2], dgh.shape[2]
        dR = empty((H, GH), h)
        pR = empty((0 if chunks is None else chunks - 1, H, GH), h)
        return h[:T].reshape(N, H), dgh.reshape(N, GH), dR, pR
    return arrays


def _dx_panels(W, packed, chunks):
    """W.T packed for dx = dgates @ W.T on the micro-kernel (``pack``, or ``pack_serial``
    for chunks None), where the inputs are whole panels; for fewer, an empty pack (dx on
    BLAS: the columns left over would run in product's scalar loop, K = G*H long); None
    for ``packed`` None."""


@overload(_dx_panels, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ol_dx_panels(W, packed, chunks):
    if isinstance(packed, types.NoneType):
        return lambda W, packed, chunks: None
    pack_all = pack_serial if isinstance(chunks, types.NoneType) else pack

    def panels(W, packed, chunks):
        if W.shape[0] % (2 * lanes(W)):
            return empty((0, W.shape[1], 2 * lanes(W)), W)
        return pack_all(W.T)
    return panels


@njit(**JIT)
def weight_grads(x, W, h, dgx, dgh, chunks, packed):
    """dx and the weight gradients as GEMMs over all steps at once.

    x: (T, B, I) inputs   W: (I, G*H)   h: (T+1, B, H) states, h[t] enters step t
    dgx: (T, B, G*H) gradient of x @ W + b   dgh: (T, B, G*H) gradient of h @ R
    h and dgh None: no recurrent part (a Dense layer's dx, dW, db; dR None)
    chunks: row blocks of T*B, one per Numba thread, each with its own partial weight
    gradients (``product`` on that thread, or single-threaded BLAS calls); None: serial
    packed: True for dW and dR on ``product``'s micro-kernel where the gate columns are
    whole panels, None for BLAS (``plan.PACKED_MIN_MACS``); the argument's type decides,
    so that a call with None compiles without the micro-kernel
    Returns dx: (T, B, I), dW: (I, G*H), dR: (H, G*H), db: (G*H,).
    """
    T, B, I = x.shape
    GH = dgx.shape[2]
    N = T * B
    x2, dgx2 = x.reshape(N, I), dgx.reshape(N, GH)
    dx = empty((T, B, I), x)
    dx2 = dx.reshape(N, I)
    dW = empty((I, GH), x)
    db = np.zeros((1 if chunks is None else chunks, GH), np.float64)
    h2, dgh2, dR, pR = _recurrent_part(h, dgh, T, chunks)
    PWt = _dx_panels(W, packed, chunks)
    if chunks is None:
        _weight_grads_rows(x2, W, PWt, h2, dgx2, dgh2, dx2, dW, dR, db[0], packed)
    else:
        # block i > 0 sums into the partials [i - 1], added to block 0's afterwards in order
        pW = empty((chunks - 1, I, GH), x)
        _weight_grads_parallel(chunks, x2, W, PWt, h2, dgx2, dgh2, dx2, dW, pW, dR, pR, db,
                               packed)
        for i in range(1, chunks):
            add_into(dW, pW[i - 1])
            if h is not None:
                add_into(dR, pR[i - 1])
            add_into(db[:1], db[i:i + 1])
    return dx, dW, dR, db[0].astype(x.dtype)
