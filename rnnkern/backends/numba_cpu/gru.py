"""Numba GRU kernels, mirroring ``numpy_ref.gru_forward`` / ``gru_backward``.

Gate order (r, z, n), PyTorch's formulation:
  r = s(x W_r + h R_r + b_r)   z = s(x W_z + h R_z + b_z)
  n = tanh(x W_n + b_n + r * (h R_n + b_hn))   h' = (1 - z) * n + z * h
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._batch import (
    affine,
    carve,
    column_sums,
    commit,
    final,
    input_grads,
    keep_inactive,
    outputs,
    padded,
    rows,
    stacked,
    transpose_add,
    transpose_in,
    vcopy,
    weight_grads,
    workspace,
    zero_inactive,
)
from ._common import (
    JIT,
    add_rows_product,
    empty,
    fast_sigmoid,
    fast_tanh,
    kept,
    states,
    transposed,
)
from ._simd import input_part, pack_if, product, product_work
from ._units import carry_state, end_step, prepare_units, store_pairs, unit_block
from ._vec import lanes, vload, vstore


@njit(**JIT)
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
    Without a cache (``_common.kept``) h is a ring of 2, hn and a stepped gates of 1.
    """
    H = h.shape[2]
    one = gates.dtype.type(1)
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
            g, r = gates[gs, n], rec[n]
            hp, hnew, hnn, yn = h[s, n], h[(t + 1) % nh, n], hn[t % nn, n], y[t, n]
            for k in range(2 * H):
                g[k] = fast_sigmoid(g[k] + r[k] + b[k])
            for j in range(H):
                hnn[j] = r[2 * H + j] + b_hn[j]
            for j in range(H):
                g[2 * H + j] = fast_tanh(g[2 * H + j] + b[2 * H + j] + g[j] * hnn[j])
            for j in range(H):
                z = g[H + j]
                hnew[j] = (one - z) * g[2 * H + j] + z * hp[j]
            if t < lengths[n]:
                for j in range(H):
                    yn[j] = hnew[j]
            else:
                for j in range(H):
                    hnew[j] = hp[j]
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
    keep h, gates and hn are the rings of ``_common.kept``.
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


#: the gate of W and of R in each of ``_units``' slots: r, z, and n apart, its input part
#: (x W_n + b_n) in slot 2, its recurrent part (h R_n + b_hn, which r gates) in slot 3
_W_SLOTS = np.array([0, 1, 2, -1])
_R_SLOTS = np.array([0, 1, -1, 2])


@njit(**JIT)
def gru_forward_units(x, h0, W, R, b, b_hn, lengths, in_step, keep):
    """lone-row: ``gru_forward`` one row at a time, each step's pre-activations in registers a
    block of units at a time (``_units``; slot 2 of R and slot 3 of W are zeros, a quarter
    of the multiply-adds, for one code path with the other cells), then that block's
    activations and update on them. Same arguments (less the plan's) and returns; without
    keep the cache's arrays are empty.

    Work, flat, Hp = H rounded up to whole blocks: ring: (2, Hp) the row's h entering and
    leaving a step. With keep, a step's cache (gates, h R_n + b_hn, h) goes from the
    registers into its rows, up to unit H.
    """
    T, B, I = x.shape
    H = R.shape[0]
    L = lanes(x)
    bias = np.empty((4, H), x.dtype)
    bias[:3] = b.reshape(3, H)
    bias[3] = b_hn
    Q, bq, gx, U, BU, Hp = prepare_units(x, W, R, bias, _W_SLOTS, _R_SLOTS, in_step)
    nk = T if keep else 0
    h = states(h0, nk)
    gates, hn = empty((nk, B, 3 * H), x), empty((nk, B, H), x)
    y, hT = empty((T, B, H), x), empty((B, H), x)
    ring = np.zeros(2 * Hp, x.dtype)
    one = x.dtype.type(1)
    hf, gf, nf = h.reshape(h.size), gates.reshape(gates.size), hn.reshape(hn.size)
    for n in range(B):
        for j in range(H):
            ring[j] = h0[n, j]
        for t in range(T):
            s, s1 = t % 2 * Hp, (t + 1) % 2 * Hp
            row = t * B + n
            for u in range(U):
                r0, r1, z0, z1, nx0, nx1, nh0, nh1 = unit_block(Q, bq, u, x, row * I, gx,
                                                                row * 4 * Hp, ring, s)
                r0, r1, z0, z1 = fast_sigmoid(r0), fast_sigmoid(r1), fast_sigmoid(z0), \
                    fast_sigmoid(z1)
                n0, n1 = fast_tanh(nx0 + r0 * nh0), fast_tanh(nx1 + r1 * nh1)
                j = u * BU
                hn0 = (one - z0) * n0 + z0 * vload(ring, s + j)
                hn1 = (one - z1) * n1 + z1 * vload(ring, s + j + L)
                vstore(ring, s1 + j, hn0)
                vstore(ring, s1 + j + L, hn1)
                if keep:
                    store_pairs(gf, row * 3 * H, H, j, ((r0, r1), (z0, z1), (n0, n1)))
                    store_pairs(nf, row * H, H, j, ((nh0, nh1),))
                    store_pairs(hf, (row + B) * H, H, j, ((hn0, hn1),))
            active = t < lengths[n]
            end_step(ring, s, s1, y[t, n], active)
            if keep and not active:  # the state an inactive step carries
                carry_state(ring, s1, hf, (row + B) * H, H)
        carry_state(ring, T % 2 * Hp, hT[n], 0, H)
    return y, h, gates, hn, hT


#: the cache's names for ``_bi_cache``'s arrays (and ``cache_rows``'), in their order
CACHE_NAMES = ("h", "gates", "hn")


@njit(**JIT)
def _bi_cache(buf, T, H, Bp):
    """The arrays of a batch-inner cache in its one buffer: h: (T+1, H, Bp) (h[t] enters step t),
    gates: (T, 3H, Bp) post-activation (r, z, n), hn: (T, H, Bp) h @ R_n + b_hn."""
    h, o = carve(buf, 0, T + 1, H, Bp)
    gates, o = carve(buf, o, T, 3 * H, Bp)
    hn, o = carve(buf, o, T, H, Bp)
    return h, gates, hn


@njit(**JIT)
def cache_rows(buf, T, B, H):
    """A batch-inner cache as ``gru_forward``'s h: (T+1, B, H), gates: (T, B, 3H), hn: (T, B, H)."""
    h, gates, hn = _bi_cache(buf, T, H, padded(B, buf))
    return rows(h, B), rows(gates, B), rows(hn, B)


@njit(**JIT)
def gru_forward_bi(x, h0, W, R, b, b_hn, lengths, keep):
    """batch-inner: ``gru_forward`` with the batch as the innermost axis of every step's work
    (``_batch``), so that it vectorises over B when H is tiny. Same arguments (less
    fused, packed, chunks, gemm_chunks); returns y: (T, B, H), hT: (B, H) and the cache in
    one buffer (``_bi_cache``, see ``lstm_forward_bi``)."""
    T, B, I = x.shape
    H = R.shape[0]
    Bp = padded(B, x)
    HB, L = H * Bp, lanes(x)
    nk = kept(T, keep)
    buf = empty(((5 * nk + 1) * HB,), x)
    h, gates, hn = _bi_cache(buf, nk, H, Bp)
    y = empty((T, B, H), x)
    M = stacked(W, R)
    bh = np.zeros(3 * H, x.dtype)  # the bias inside r * (h @ R_n + b_hn)
    bh[2 * H:] = b_hn
    xh = workspace(h0, I + H, Bp)  # (I+H, Bp): [x[t]; h]
    hr = np.empty((3 * H, Bp), x.dtype)  # h @ R + bh
    new = np.empty((H, Bp), x.dtype)  # this step's h
    vcopy(xh[I:], h[0])
    one = x.dtype.type(1)
    shortest = lengths.min()
    for t in range(T):
        g, hnt = gates[t % nk], hn[t % nk]
        transpose_in(x[t], xh)
        affine(M, xh, 0, I, b, g)
        affine(M, xh, I, I + H, bh, hr)
        for j in range(0, HB, L):
            r = fast_sigmoid(vload(g, j) + vload(hr, j))
            z = fast_sigmoid(vload(g, HB + j) + vload(hr, HB + j))
            hnj = vload(hr, 2 * HB + j)
            n = fast_tanh(vload(g, 2 * HB + j) + r * hnj)
            vstore(g, j, r)
            vstore(g, HB + j, z)
            vstore(g, 2 * HB + j, n)
            vstore(hnt, j, hnj)
            vstore(new, j, (one - z) * n + z * vload(xh, I * Bp + j))
        every = t < shortest
        commit(new, xh[I:], lengths, t, every)
        vcopy(xh[I:], h[(t + 1) % (nk + 1)])
        outputs(new, lengths, t, every, y[t])
    return y, final(xh[I:], B), buf


@njit(**JIT)
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
    one = gates.dtype.type(1)
    for t in range(dy.shape[0] - 1, -1, -1):
        for n in range(lo, hi):
            g, dgx_, dgh_, dhn = gates[t, n], dgx[t, n], dgh[t, n], dh[n]
            if t < lengths[n]:
                dyn, hp, hnn = dy[t, n], h[t, n], hn[t, n]
                for j in range(H):
                    rr, z, nn = g[j], g[H + j], g[2 * H + j]
                    dh_new = dyn[j] + dhn[j]
                    dn = dh_new * (one - z) * (one - nn * nn)
                    dr = dn * hnn[j] * rr * (one - rr)
                    dz = dh_new * (hp[j] - nn) * z * (one - z)
                    dgx_[j], dgx_[H + j], dgx_[2 * H + j] = dr, dz, dn
                    dgh_[j], dgh_[H + j], dgh_[2 * H + j] = dr, dz, dn * rr
                    dhn[j] = dh_new * z
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


@njit(**JIT)
def gru_backward_bi(dy, dhT, x, W, R, buf, lengths):
    """batch-inner backward, on ``gru_forward_bi``'s cache buffer, batch innermost as there.

    dy: (T, B, H)   dhT: (B, H)   x: (T, B, I)   W: (I, 3H)   R: (H, 3H)
    Returns dx: (T, B, I), dh0: (B, H), dW: (I, 3H), dR: (H, 3H), db: (3H,), db_hn: (H,).
    """
    T, B, H = dy.shape
    I = x.shape[2]
    Bp = padded(B, dy)
    HB, L = H * Bp, lanes(dy)
    h, gates, hn = _bi_cache(buf, T, H, Bp)
    one = dy.dtype.type(1)
    dh = workspace(dhT, H, Bp)  # (H, Bp): gradient w.r.t. h[t+1], then h[t]
    dhs = np.empty((H, Bp), dy.dtype)  # dh kept for the rows a step leaves alone
    dhz = np.empty((H, Bp), dy.dtype)  # the part of dh[t] through z * h[t]
    dgx = np.zeros((T, 3 * H, Bp), dy.dtype)  # gradients of x @ W + b
    dgh = np.zeros((T, 3 * H, Bp), dy.dtype)  # gradients of h @ R (+ b_hn)
    dx = empty((T, B, I), dy)
    dxt = np.empty((I, Bp), dy.dtype)
    RT, WT = transposed(R), transposed(W)
    nobias = np.zeros(max(H, I), dy.dtype)
    shortest = lengths.min()
    for t in range(T - 1, -1, -1):
        g, gx, gh, hnt, hp = gates[t], dgx[t], dgh[t], hn[t], h[t]
        every = t < shortest
        if not every:
            vcopy(dh, dhs)
        transpose_add(dy[t], dh)
        for j in range(0, HB, L):
            r, z, n = vload(g, j), vload(g, HB + j), vload(g, 2 * HB + j)
            dhj = vload(dh, j)
            dn = dhj * (one - z) * (one - n * n)
            dr = dn * vload(hnt, j) * r * (one - r)
            dz = dhj * (vload(hp, j) - n) * z * (one - z)
            vstore(gx, j, dr)
            vstore(gx, HB + j, dz)
            vstore(gx, 2 * HB + j, dn)
            vstore(gh, j, dr)
            vstore(gh, HB + j, dz)
            vstore(gh, 2 * HB + j, dn * r)
            vstore(dhz, j, dhj * z)
        if not every:
            zero_inactive(gx, lengths, t)
            zero_inactive(gh, lengths, t)
        affine(RT, gh, 0, 3 * H, nobias, dh)
        for j in range(0, HB, L):
            vstore(dh, j, vload(dh, j) + vload(dhz, j))
        if not every:
            keep_inactive(dh, dhs, lengths, t)
        input_grads(WT, gx, nobias, dxt, dx[t])
    dW, dR, db = weight_grads(x, h, dgx, dgh)
    # b_hn sits inside r * (h @ R_n + b_hn): its gradient is the n block's of dgh
    return dx, final(dh, B), dW, dR, db, column_sums(dgh)[2 * H:].copy()
