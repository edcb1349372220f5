"""Numba GRU kernels of the rows schedules (rows-fused, rows-packed,
rows-packed-stepped; ``plan.VARIANTS``), mirroring ``numpy_ref.gru_forward`` /
``gru_backward``: the forward of those schedules and the backward of every schedule but
batch-inner (lone-row's too); batch-inner's kernels are in ``batch_inner``, lone-row's
forward in ``lone_row``.

Gate order (r, z, n), PyTorch's formulation:
  r = s(x W_r + h R_r + b_r)   z = s(x W_z + h R_z + b_z)
  n = tanh(x W_n + b_n + r * (h R_n + b_hn))   h' = (1 - z) * n + z * h
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._jit import JIT, POINTWISE_JIT
from ._memory import empty, kept, states
from ._products import add_rows_product, transposed
from ._simd import input_part, pack_if, product, product_work
from ._vec import lanes, vload_upto, vstore_upto
from .cells import gru_step, gru_step_backward


@njit(**POINTWISE_JIT)
def _forward_rows(lo, hi, fused, stepped, x, W, PW, gates, rec, work, R, P, b, b_hn, h, hn, y,
                  lengths):
    """Every step of batch rows lo <= n < hi.

    x: (T, B, I)   W: (I, 3H)   PW: W packed when stepped (see ``_simd.input_part``)
    gates: (T, B, 3H) holds x @ W on entry (unless stepped), the post-activation (r, z, n)
    on exit
    rec: (B, 3H) h[t] @ R, made here row by row when fused   h: (T+1, B, H)
    P: R packed for ``_simd.product``
    work: ``_simd.product_work`` of the products (packed: h[t]'s rows, then x[t]'s)
    hn: (T, B, H) receives h[t] @ R_n + b_hn, the part that r gates   y: (T, B, H)
    Without a cache (``_memory.kept``) h is a ring of 2, hn and a stepped gates of 1.
    """
    H = h.shape[2]
    L = lanes(h)
    nh, ng, nn = h.shape[0], gates.shape[0], hn.shape[0]
    for t in range(y.shape[0]):
        s, gs = t % nh, t % ng  # h[s] enters step t; gs: gates' slot
        if stepped is not None:
            product(x[t], W, PW, gates[gs], lo, hi, False, work[h.shape[1] * H:])
        if fused:
            rec[lo:hi] = 0
            add_rows_product(h[s], R, rec, lo, hi)
        else:
            product(h[s], R, P, rec, lo, hi, False, work)
        for n in range(lo, hi):
            g, rh = gates[gs, n], rec[n]  # rh: this row's h[t] @ R
            h_prev, h_new, hn_, yn = h[s, n], h[(t + 1) % nh, n], hn[t % nn, n], y[t, n]
            for j in range(0, H, L):  # a vector of units at a time; m of them in the last
                m = H - j
                hnj = vload_upto(rh, 2 * H + j, m) + vload_upto(b_hn, j, m)
                r, z, nj, hj = gru_step(
                    vload_upto(g, j, m) + vload_upto(rh, j, m) + vload_upto(b, j, m),
                    vload_upto(g, H + j, m) + vload_upto(rh, H + j, m) + vload_upto(b, H + j, m),
                    vload_upto(g, 2 * H + j, m) + vload_upto(b, 2 * H + j, m), hnj,
                    vload_upto(h_prev, j, m))
                vstore_upto(g, j, r, m)
                vstore_upto(g, H + j, z, m)
                vstore_upto(g, 2 * H + j, nj, m)
                vstore_upto(hn_, j, hnj, m)
                vstore_upto(h_new, j, hj, m)
            if t < lengths[n]:
                for j in range(H):
                    yn[j] = h_new[j]
            else:
                for j in range(H):
                    h_new[j] = h_prev[j]
                    yn[j] = 0


@njit(parallel=True, **JIT)
def _forward_parallel(chunks, fused, stepped, x, W, PW, gates, rec, work, R, P, b, b_hn, h, hn, y,
                      lengths):
    B = gates.shape[1]
    for i in prange(chunks):
        _forward_rows(i * B // chunks, (i + 1) * B // chunks, fused, stepped, x, W, PW, gates,
                      rec, work, R, P, b, b_hn, h, hn, y, lengths)


@njit(**JIT)
def gru_forward(x, h0, W, R, b, b_hn, lengths, fused, packed, chunks, stepped, gemm_chunks,
                keep):
    """x: (T, B, I)   h0: (B, H)   W: (I, 3H)   R: (H, 3H)   b: (3H,)   b_hn: (H,)
    fused, packed, chunks, stepped: the schedule's plan (``plan.Plan``; packed and stepped
    True or None, chunks None for one: see ``numba_cpu._par``); gemm_chunks: row
    blocks of the input projection (``_simd.input_part``); keep: the cache for a backward.

    Returns y: (T, B, H), h: (T+1, B, H) (h[t] enters step t),
    gates: (T, B, 3H) post-activation, hn: (T, B, H), hT: (B, H) a copy of h[T]. Without
    keep h, gates and hn are the rings of ``_memory.kept``.
    """
    T, B, _ = x.shape
    H = R.shape[0]
    nk = kept(T, keep)
    gates, PW = input_part(x, W, 3 * H, gemm_chunks, packed, stepped, nk)
    h = states(h0, nk)
    hn = empty((nk, B, H), x)
    y = empty((T, B, H), x)
    rec = np.empty((B, 3 * H), x.dtype)
    # products' work: the copies of a block's rows of h[t] (and after them those of x[t]:
    # another block's thread may be in the other product)
    work = product_work(B, H + x.shape[2] if stepped is not None else H, 3 * H, x, packed)
    P = pack_if(R, packed)
    if chunks is not None:  # None: serial, and the parallel loop never compiled
        _forward_parallel(chunks, fused, stepped, x, W, PW, gates, rec, work, R, P, b, b_hn, h, hn,
                          y, lengths)
    else:
        _forward_rows(0, B, fused, stepped, x, W, PW, gates, rec, work, R, P, b, b_hn, h, hn, y,
                      lengths)
    return y, h, gates, hn, h[T % (nk + 1)].copy()


@njit(**POINTWISE_JIT)
def _backward_rows(lo, hi, fused, dy, dh, dgx, dgh, work, gates, h, hn, R, RT, P, lengths):
    """Every step, from the last, of batch rows lo <= n < hi.

    dh: (B, H) gradient w.r.t. h[t+1] on entry, w.r.t. h[t] on exit (the recurrent
    part, dgh[t, n] @ R.T, added by the product).
    dgx: (T, B, 3H) gradient of x @ W + b   dgh: (T, B, 3H) gradient of h @ R
    work: ``_simd.product_work`` of the product
    RT: (G*H, H) R.T as a C-contiguous copy when fused
    P: R.T packed for ``_simd.product``
    """
    H = dh.shape[1]
    L = lanes(dh)
    for t in range(dy.shape[0] - 1, -1, -1):
        for n in range(lo, hi):
            g, dgx_, dgh_, dhn = gates[t, n], dgx[t, n], dgh[t, n], dh[n]
            if t < lengths[n]:
                dyn, h_prev, hn_ = dy[t, n], h[t, n], hn[t, n]
                for j in range(0, H, L):  # a vector of units at a time; m of them in the last
                    m = H - j
                    r = vload_upto(g, j, m)
                    dr, dz, dn, dhz = gru_step_backward(
                        vload_upto(dyn, j, m) + vload_upto(dhn, j, m), r,
                        vload_upto(g, H + j, m), vload_upto(g, 2 * H + j, m),
                        vload_upto(hn_, j, m), vload_upto(h_prev, j, m))
                    vstore_upto(dgx_, j, dr, m)
                    vstore_upto(dgx_, H + j, dz, m)
                    vstore_upto(dgx_, 2 * H + j, dn, m)
                    vstore_upto(dgh_, j, dr, m)
                    vstore_upto(dgh_, H + j, dz, m)
                    vstore_upto(dgh_, 2 * H + j, dn * r, m)
                    vstore_upto(dhn, j, dhz, m)
            else:
                for k in range(3 * H):
                    dgx_[k] = 0
                    dgh_[k] = 0
        if fused:
            add_rows_product(dgh[t], RT, dh, lo, hi)
        else:
            product(dgh[t], R.T, P, dh, lo, hi, True, work)


@njit(parallel=True, **JIT)
def _backward_parallel(chunks, fused, dy, dh, dgx, dgh, work, gates, h, hn, R, RT, P, lengths):
    B = dh.shape[0]
    for i in prange(chunks):
        _backward_rows(i * B // chunks, (i + 1) * B // chunks, fused, dy, dh, dgx, dgh,
                       work, gates, h, hn, R, RT, P, lengths)


@njit(**JIT)
def gru_backward(dy, dhT, R, h, gates, hn, lengths, fused, packed, chunks):
    """dy: (T, B, H)   dhT: (B, H)   the rest as ``gru_forward`` returned them.

    Returns dh0: (B, H), db_hn: (H,), dgx, dgh: (T, B, 3H) gradients of x @ W + b and of
    h @ R (``weight_grads`` turns them into dx and the weight gradients).
    """
    T, B, H = dy.shape
    dh = dhT.copy()
    dgx = empty((T, B, 3 * H), dy)
    dgh = empty((T, B, 3 * H), dy)
    work = product_work(B, 3 * H, H, dy, packed)
    # the fused path's dgates @ R.T as a product with a contiguous copy of R.T, which
    # vectorises over H like the forward's product instead of reducing over G*H
    RT = transposed(R) if fused else np.empty((0, H), dy.dtype)
    P = pack_if(R.T, packed)
    if chunks is not None:  # None: serial, and the parallel loop never compiled
        _backward_parallel(chunks, fused, dy, dh, dgx, dgh, work, gates, h, hn, R, RT, P,
                           lengths)
    else:
        _backward_rows(0, B, fused, dy, dh, dgx, dgh, work, gates, h, hn, R, RT, P, lengths)
    # b_hn sits inside r * (...), so its gradient is the candidate part of dgh
    db_hn = np.zeros(H, np.float64)
    for t in range(T):
        for n in range(B):
            for j in range(H):
                db_hn[j] += dgh[t, n, 2 * H + j]
    return dh, db_hn.astype(dy.dtype), dgx, dgh


