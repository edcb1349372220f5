"""Numba Elman RNN kernels of the rows schedules (rows-fused, rows-packed,
rows-packed-stepped; ``plan.VARIANTS``), mirroring ``numpy_ref.rnn_forward`` /
``rnn_backward``: the forward of those schedules and the backward of every schedule but
batch-inner (lone-row's too); batch-inner's kernels are in ``batch_inner``, lone-row's
forward in ``lone_row``.

h_t = act(x_t @ W + h_{t-1} @ R + b), act by integer code: 0 tanh, 1 relu, 2 identity
(the branch sits outside each element loop so that the loop vectorises).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._jit import JIT, POINTWISE_JIT
from ._memory import empty, kept, states
from ._products import add_rows_product, transposed
from ._simd import input_part, pack_if, product, product_work
from ._vec import lanes, vload_upto, vstore_upto
from .cells import activate, activation_grad


@njit(**POINTWISE_JIT)
def _forward_rows(lo, hi, fused, stepped, code, x, W, PW, a, work, R, P, b, h, y, lengths):
    """Every step of batch rows lo <= n < hi.

    x: (T, B, I)   W: (I, H)   PW: W packed when stepped (see ``_simd.input_part``)
    a: (T, B, H) holds x @ W on entry (unless stepped) and the post-activation on exit
    h: (T+1, B, H)
    P: R packed for ``_simd.product``
    work: ``_simd.product_work`` of the products (packed: h[t]'s rows, then x[t]'s)
    y: (T, B, H)
    Without a cache (``_memory.kept``) h is a ring of 2, a stepped a one of 1.
    """
    H = h.shape[2]
    L = lanes(h)
    zero = a.dtype.type(0)
    nh, na = h.shape[0], a.shape[0]
    for t in range(y.shape[0]):
        s, gs = t % nh, t % na  # h[s] enters step t; gs: a's slot
        if stepped is not None:
            product(x[t], W, PW, a[gs], lo, hi, False, work[h.shape[1] * H:])
        if fused:
            add_rows_product(h[s], R, a[gs], lo, hi)
        else:
            product(h[s], R, P, a[gs], lo, hi, True, work)
        for n in range(lo, hi):
            an, h_prev, h_new, yn = a[gs, n], h[s, n], h[(t + 1) % nh, n], y[t, n]
            for j in range(0, H, L):  # a vector of units at a time; m of them in the last
                m = H - j
                vstore_upto(an, j, activate(vload_upto(an, j, m) + vload_upto(b, j, m), code), m)
            if t < lengths[n]:
                for j in range(H):
                    h_new[j] = an[j]
                    yn[j] = an[j]
            else:
                for j in range(H):
                    h_new[j] = h_prev[j]
                    yn[j] = zero


@njit(parallel=True, **JIT)
def _forward_parallel(chunks, fused, stepped, code, x, W, PW, a, work, R, P, b, h, y, lengths):
    B = a.shape[1]
    for i in prange(chunks):
        _forward_rows(i * B // chunks, (i + 1) * B // chunks, fused, stepped, code, x, W, PW,
                      a, work, R, P, b, h, y, lengths)


@njit(**JIT)
def rnn_forward(x, h0, W, R, b, code, lengths, fused, packed, chunks, stepped, gemm_chunks,
                keep):
    """x: (T, B, I)   h0: (B, H)   W: (I, H)   R: (H, H)   b: (H,)   lengths: (B,)
    fused, packed, chunks, stepped: the schedule's plan (``plan.Plan``; packed and stepped
    True or None, chunks None for one: see ``numba_cpu._par``); gemm_chunks: row
    blocks of the input projection (``_simd.input_part``); keep: the cache for a backward.

    Returns y: (T, B, H), h: (T+1, B, H) (h[t] enters step t), a: (T, B, H) post-activation,
    hT: (B, H) a copy of h[T]. Without keep h and a are the rings of ``_memory.kept``.
    """
    T, B, _ = x.shape
    H = R.shape[0]
    nk = kept(T, keep)
    a, PW = input_part(x, W, H, gemm_chunks, packed, stepped, nk)
    h = states(h0, nk)
    y = empty((T, B, H), x)
    # products' work: the copies of a block's rows of h[t] (and after them those of x[t]:
    # another block's thread may be in the other product)
    work = product_work(B, H + x.shape[2] if stepped is not None else H, H, x, packed)
    P = pack_if(R, packed)
    if chunks is not None:  # None: serial, and the parallel loop never compiled
        _forward_parallel(chunks, fused, stepped, code, x, W, PW, a, work, R, P, b, h, y,
                          lengths)
    else:
        _forward_rows(0, B, fused, stepped, code, x, W, PW, a, work, R, P, b, h, y, lengths)
    return y, h, a, h[T % (nk + 1)].copy()


@njit(**POINTWISE_JIT)
def _backward_rows(lo, hi, fused, code, dy, dh, da, work, a, R, RT, P, lengths):
    """Every step, from the last, of batch rows lo <= n < hi.

    dh: (B, H) gradient w.r.t. h[t+1] on entry; on exit what is carried past an
    inactive row, plus da[t, n] @ R.T.   da: (T, B, H)
    work: ``_simd.product_work`` of the product
    RT: (G*H, H) R.T as a C-contiguous copy when fused
    P: R.T packed for ``_simd.product``
    """
    H = dh.shape[1]
    L = lanes(dh)
    zero = a.dtype.type(0)
    for t in range(dy.shape[0] - 1, -1, -1):
        for n in range(lo, hi):
            an, dan, dyn, dhn = a[t, n], da[t, n], dy[t, n], dh[n]
            if t < lengths[n]:
                # derivative of the activation from its output a = act(v)
                for j in range(0, H, L):
                    m = H - j
                    vstore_upto(dan, j, activation_grad(
                        vload_upto(dyn, j, m) + vload_upto(dhn, j, m), vload_upto(an, j, m),
                        code), m)
                for j in range(H):
                    dhn[j] = zero
            else:
                for j in range(H):
                    dan[j] = zero
        if fused:
            add_rows_product(da[t], RT, dh, lo, hi)
        else:
            product(da[t], R.T, P, dh, lo, hi, True, work)


@njit(parallel=True, **JIT)
def _backward_parallel(chunks, fused, code, dy, dh, da, work, a, R, RT, P, lengths):
    B = dh.shape[0]
    for i in prange(chunks):
        _backward_rows(i * B // chunks, (i + 1) * B // chunks, fused, code, dy, dh, da,
                       work, a, R, RT, P, lengths)


@njit(**JIT)
def rnn_backward(dy, dhT, R, a, code, lengths, fused, packed, chunks):
    """dy: (T, B, H)   dhT: (B, H)   the rest as ``rnn_forward`` returned them.

    Returns dh0: (B, H), da: (T, B, H) pre-activation gradients (``weight_grads`` turns
    them into dx and the weight gradients).
    """
    T, B, H = dy.shape
    dh = dhT.copy()
    da = empty((T, B, H), dy)
    work = product_work(B, H, H, dy, packed)
    # the fused path's dgates @ R.T as a product with a contiguous copy of R.T, which
    # vectorises over H like the forward's product instead of reducing over G*H
    RT = transposed(R) if fused else np.empty((0, H), dy.dtype)
    P = pack_if(R.T, packed)
    if chunks is not None:  # None: serial, and the parallel loop never compiled
        _backward_parallel(chunks, fused, code, dy, dh, da, work, a, R, RT, P, lengths)
    else:
        _backward_rows(0, B, fused, code, dy, dh, da, work, a, R, RT, P, lengths)
    return dh, da


