"""The plain products the kernels share: a product on BLAS or the kernels' own loops, the
fused path's recurrent product of one row or a block of rows, a += b, a blocked
transpose."""

from __future__ import annotations

import numpy as np
from numba import njit

from ._jit import JIT

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
    (products 1.5x faster than row by row at H=64); an odd last row goes alone.
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


#: rows of a and columns of a block of ``transposed``: each of the block's rows of the
#: result takes TRANSPOSE_ROWS consecutive elements, from that many rows of a whose lines
#: over the block's columns stay in L1 meanwhile. Square blocks of 32 put their 32 rows of
#: the result, a power-of-two row length apart, in one L1 set (2048x1024 float32: 14.1 ->
#: 1.5 ms; 1024x256 1.7 -> 0.16)
TRANSPOSE_ROWS = 8
TRANSPOSE_COLS = 64


@njit(**JIT)
def transposed(a):
    """a.T as a new C-contiguous (N, M) array, for a: (M, N), a block at a time: the plain
    copy walks one side with a stride of a whole row, and a power-of-two row length maps
    every element of that walk to a few cache sets (640x1024 float32: 2.1 -> 0.4 ms)."""
    M, N = a.shape
    out = np.empty((N, M), a.dtype)
    for i0 in range(0, M, TRANSPOSE_ROWS):
        i1 = min(M, i0 + TRANSPOSE_ROWS)
        for j0 in range(0, N, TRANSPOSE_COLS):
            for j in range(j0, min(N, j0 + TRANSPOSE_COLS)):
                for i in range(i0, i1):
                    out[j, i] = a[i, j]
    return out
