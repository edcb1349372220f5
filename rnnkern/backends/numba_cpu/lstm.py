"""Numba LSTM kernels of the rows schedules (rows-fused, rows-packed,
rows-packed-stepped; ``plan.VARIANTS``), mirroring ``numpy_ref.lstm_forward`` /
``lstm_backward``: the forward of those schedules and the backward of every schedule but
batch-inner (lone-row's too); batch-inner's kernels are in ``batch_inner``, lone-row's
forward in ``lone_row``.

Gate order (i, f, g, o):  c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t).
Each kernel allocates everything before its time loop; a step is the recurrent
product (one GEMM, or the fused per-row loop) and one pass over a block of batch rows.
Batch rows never exchange data, forward or backward, so each block (the whole batch,
or one per Numba thread, see ``plan.VARIANTS``) runs every step in one call of
``_forward_rows``/``_backward_rows``, with no synchronisation between steps (a call
per step, with its dozen array arguments, cost a fifth of a step at B1 H32).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._jit import JIT, POINTWISE_JIT
from ._memory import empty, kept, states
from ._products import add_rows_product, transposed
from ._simd import input_part, pack_if, product, product_work
from ._vec import lanes, vload_upto, vstore_upto
from .cells import lstm_step, lstm_step_backward


@njit(**POINTWISE_JIT)
def _forward_rows(lo, hi, fused, stepped, x, W, PW, gates, work, R, P, b, h, c, tanh_c, y,
                  lengths):
    """Every step of batch rows lo <= n < hi.

    x: (T, B, I)   W: (I, 4H)   PW: W packed when stepped (see ``_simd.input_part``)
    gates: (T, B, 4H) holds x @ W on entry (unless stepped), the post-activation
    (i, f, g, o) on exit
    P: R packed for ``_simd.product``
    work: ``_simd.product_work`` of the products (packed: h[t]'s rows, then x[t]'s)
    h, c: (T+1, B, H)   tanh_c, y: (T, B, H)   lengths: (B,)
    Without a cache (``_memory.kept``) h, c are rings of 2, tanh_c and a stepped gates of 1.
    """
    H = h.shape[2]
    L = lanes(h)
    nh, ng, nc = h.shape[0], gates.shape[0], tanh_c.shape[0]
    for t in range(y.shape[0]):
        s, s1, gs = t % nh, (t + 1) % nh, t % ng  # h[s], c[s] enter step t; gs: gates' slot
        if stepped is not None:
            product(x[t], W, PW, gates[gs], lo, hi, False, work[h.shape[1] * H:])
        if fused:
            add_rows_product(h[s], R, gates[gs], lo, hi)
        else:
            product(h[s], R, P, gates[gs], lo, hi, True, work)
        for n in range(lo, hi):
            g = gates[gs, n]
            h_prev, c_prev, h_new, c_new = h[s, n], c[s, n], h[s1, n], c[s1, n]
            tc, yn = tanh_c[t % nc, n], y[t, n]
            for j in range(0, H, L):  # a vector of units at a time; m of them in the last
                m = H - j
                i, f, gg, o, cj, tcj, hj = lstm_step(
                    vload_upto(g, j, m) + vload_upto(b, j, m),
                    vload_upto(g, H + j, m) + vload_upto(b, H + j, m),
                    vload_upto(g, 2 * H + j, m) + vload_upto(b, 2 * H + j, m),
                    vload_upto(g, 3 * H + j, m) + vload_upto(b, 3 * H + j, m),
                    vload_upto(c_prev, j, m))
                vstore_upto(g, j, i, m)
                vstore_upto(g, H + j, f, m)
                vstore_upto(g, 2 * H + j, gg, m)
                vstore_upto(g, 3 * H + j, o, m)
                vstore_upto(c_new, j, cj, m)
                vstore_upto(tc, j, tcj, m)
                vstore_upto(h_new, j, hj, m)
            if t < lengths[n]:
                for j in range(H):
                    yn[j] = h_new[j]
            else:
                for j in range(H):
                    c_new[j] = c_prev[j]
                    h_new[j] = h_prev[j]
                    yn[j] = 0


@njit(parallel=True, **JIT)
def _forward_parallel(chunks, fused, stepped, x, W, PW, gates, work, R, P, b, h, c, tanh_c, y,
                      lengths):
    B = gates.shape[1]
    for i in prange(chunks):
        _forward_rows(i * B // chunks, (i + 1) * B // chunks, fused, stepped, x, W, PW, gates,
                      work, R, P, b, h, c, tanh_c, y, lengths)


@njit(**JIT)
def lstm_forward(x, h0, c0, W, R, b, lengths, fused, packed, chunks, stepped, gemm_chunks,
                 keep):
    """x: (T, B, I)   h0, c0: (B, H)   W: (I, 4H)   R: (H, 4H)   b: (4H,)   lengths: (B,)
    fused, packed, chunks, stepped: the schedule's plan (``plan.Plan``; packed and stepped
    True or None, chunks None for one: see ``numba_cpu._par``); gemm_chunks: row
    blocks of the input projection (``_simd.input_part``); keep: the cache for a backward.

    Returns y: (T, B, H), h, c: (T+1, B, H) (h[t], c[t] enter step t),
    gates: (T, B, 4H) post-activation, tanh_c: (T, B, H), hT, cT: (B, H) copies of
    h[T], c[T]. Without keep the cache's arrays are the rings of ``_memory.kept``.
    """
    T, B, _ = x.shape
    H = R.shape[0]
    nk = kept(T, keep)
    gates, PW = input_part(x, W, 4 * H, gemm_chunks, packed, stepped, nk)
    h, c = states(h0, nk), states(c0, nk)
    tanh_c = empty((nk, B, H), x)
    y = empty((T, B, H), x)
    # products' work: the copies of a block's rows of h[t] (and after them those of x[t]:
    # another block's thread may be in the other product)
    work = product_work(B, H + x.shape[2] if stepped is not None else H, 4 * H, x, packed)
    P = pack_if(R, packed)
    if chunks is not None:  # None: serial, and the parallel loop never compiled
        _forward_parallel(chunks, fused, stepped, x, W, PW, gates, work, R, P, b, h, c, tanh_c,
                          y, lengths)
    else:
        _forward_rows(0, B, fused, stepped, x, W, PW, gates, work, R, P, b, h, c, tanh_c, y,
                      lengths)
    return y, h, c, gates, tanh_c, h[T % (nk + 1)].copy(), c[T % (nk + 1)].copy()


@njit(**POINTWISE_JIT)
def _backward_rows(lo, hi, fused, dy, dh, dc, dgates, work, gates, c, tanh_c, R, RT, P,
                   lengths):
    """Every step, from the last, of batch rows lo <= n < hi.

    dh, dc: (B, H) gradients w.r.t. h[t+1], c[t+1] on entry; on exit dc is the one
    w.r.t. c[t] and dh holds what is carried past inactive rows, plus the
    recurrent part dgates[t, n] @ R.T.   dgates: (T, B, 4H) pre-activation gradients
    work: ``_simd.product_work`` of the product
    RT: (G*H, H) R.T as a C-contiguous copy when fused
    P: R.T packed for ``_simd.product``
    """
    H = dh.shape[1]
    L = lanes(dh)
    for t in range(dy.shape[0] - 1, -1, -1):
        for n in range(lo, hi):
            g, dg = gates[t, n], dgates[t, n]
            dhn, dcn = dh[n], dc[n]
            if t < lengths[n]:
                dyn, c_prev, tc = dy[t, n], c[t, n], tanh_c[t, n]
                for j in range(0, H, L):  # a vector of units at a time; m of them in the last
                    m = H - j
                    di, df, dgg, do, dcp = lstm_step_backward(
                        vload_upto(dyn, j, m) + vload_upto(dhn, j, m), vload_upto(dcn, j, m),
                        vload_upto(g, j, m), vload_upto(g, H + j, m),
                        vload_upto(g, 2 * H + j, m), vload_upto(g, 3 * H + j, m),
                        vload_upto(c_prev, j, m), vload_upto(tc, j, m))
                    vstore_upto(dg, j, di, m)
                    vstore_upto(dg, H + j, df, m)
                    vstore_upto(dg, 2 * H + j, dgg, m)
                    vstore_upto(dg, 3 * H + j, do, m)
                    vstore_upto(dcn, j, dcp, m)
                for j in range(H):
                    dhn[j] = 0
            else:
                for k in range(4 * H):
                    dg[k] = 0
        if fused:
            add_rows_product(dgates[t], RT, dh, lo, hi)
        else:
            product(dgates[t], R.T, P, dh, lo, hi, True, work)


@njit(parallel=True, **JIT)
def _backward_parallel(chunks, fused, dy, dh, dc, dgates, work, gates, c, tanh_c, R, RT, P,
                       lengths):
    B = dh.shape[0]
    for i in prange(chunks):
        _backward_rows(i * B // chunks, (i + 1) * B // chunks, fused, dy, dh, dc, dgates,
                       work, gates, c, tanh_c, R, RT, P, lengths)


@njit(**JIT)
def lstm_backward(dy, dhT, dcT, R, c, gates, tanh_c, lengths, fused, packed, chunks):
    """dy: (T, B, H)   dhT, dcT: (B, H)   the rest as ``lstm_forward`` returned them.

    Returns dh0, dc0: (B, H), dgates: (T, B, 4H) pre-activation gradients
    (``weight_grads`` turns them into dx and the weight gradients).
    """
    T, B, H = dy.shape
    dh = dhT.copy()
    dc = dcT.copy()
    dgates = empty((T, B, 4 * H), dy)
    work = product_work(B, 4 * H, H, dy, packed)
    # the fused path's dgates @ R.T as a product with a contiguous copy of R.T, which
    # vectorises over H like the forward's product instead of reducing over G*H
    RT = transposed(R) if fused else np.empty((0, H), dy.dtype)
    P = pack_if(R.T, packed)
    if chunks is not None:  # None: serial, and the parallel loop never compiled
        _backward_parallel(chunks, fused, dy, dh, dc, dgates, work, gates, c, tanh_c, R, RT, P,
                           lengths)
    else:
        _backward_rows(0, B, fused, dy, dh, dc, dgates, work, gates, c, tanh_c, R, RT, P,
                       lengths)
    return dh, dc, dgates


