"""Numba LSTM kernels, mirroring ``numpy_ref.lstm_forward`` / ``lstm_backward``.

Gate order (i, f, g, o):  c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t).
Each kernel allocates everything before its time loop; a step is the recurrent
product (one GEMM, or the fused per-row loop) and one pass over a block of batch rows.
Batch rows never exchange data, forward or backward, so each block (the whole batch,
or one per Numba thread, see ``plan.VARIANTS``) runs every step in one call of
``_forward_rows``/``_backward_rows``, with no synchronisation between steps (a call
per step, with its dozen array arguments, cost ~0.1 us of a 0.5 us step at B1 H32).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._batch import (
    affine,
    carve,
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
    FASTMATH,
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
def _forward_rows(lo, hi, fused, stepped, x, W, PW, gates, work, R, P, b, h, c, tanh_c, y,
                  lengths):
    """Every step of batch rows lo <= n < hi.

    x: (T, B, I)   W: (I, 4H)   PW: W packed when stepped (see ``_simd.input_part``)
    gates: (T, B, 4H) holds x @ W on entry (unless stepped), the post-activation
    (i, f, g, o) on exit
    P: R packed for ``_simd.product``
    work: ``_simd.product_work`` of the products (packed: h[t]'s rows, then x[t]'s)
    h, c: (T+1, B, H)   tanh_c, y: (T, B, H)   lengths: (B,)
    Without a cache (``_common.kept``) h, c are rings of 2, tanh_c and a stepped gates of 1.
    """
    H = h.shape[2]
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
            # each gate block from offset 0 of its own loop: loops over range(lo, hi) of the row
            # ran 2.5x slower (H=256), calls on sliced views 2x slower (H=32)
            for k in range(2 * H):
                g[k] = fast_sigmoid(g[k] + b[k])
            for k in range(H):
                g[2 * H + k] = fast_tanh(g[2 * H + k] + b[2 * H + k])
            for k in range(H):
                g[3 * H + k] = fast_sigmoid(g[3 * H + k] + b[3 * H + k])
            # loops over few arrays each: LLVM vectorises a loop only after checking that its
            # arrays do not overlap, and gives up when a loop touches too many
            hp, cp, hn, cn = h[s, n], c[s, n], h[s1, n], c[s1, n]
            tc, yn = tanh_c[t % nc, n], y[t, n]
            for j in range(H):
                cn[j] = g[H + j] * cp[j] + g[j] * g[2 * H + j]
            for j in range(H):
                tc[j] = fast_tanh(cn[j])
            for j in range(H):
                hn[j] = g[3 * H + j] * tc[j]
            if t < lengths[n]:
                for j in range(H):
                    yn[j] = hn[j]
            else:
                for j in range(H):
                    cn[j] = cp[j]
                    hn[j] = hp[j]
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
    h[T], c[T]. Without keep the cache's arrays are the rings of ``_common.kept``.
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


#: the gate of W and of R in each of ``_units``' slots: i, f, g, o
_SLOTS = np.arange(4)


@njit(**JIT)
def lstm_forward_units(x, h0, c0, W, R, b, lengths, in_step, keep):
    """lone-row: ``lstm_forward`` one row at a time, each step's pre-activations in registers
    a block of units at a time (``_units``), then that block's activations and cell update
    on them. Same arguments (less the plan's) and returns; without keep the cache's
    arrays are empty, nothing of a step kept but the states.

    Work, flat, Hp = H rounded up to whole blocks (the units past H are the zero columns
    of ``pack_units``): ring: (2, 2, Hp) the row's (h, c) entering and leaving a step.
    With keep, a step's cache (gates, tanh(c), h, c) goes from the registers into its rows,
    up to unit H.
    """
    T, B, I = x.shape
    H = R.shape[0]
    L = lanes(x)
    Q, bq, gx, U, BU, Hp = prepare_units(x, W, R, b.reshape(4, H), _SLOTS, _SLOTS, in_step)
    nk = T if keep else 0
    h, c = states(h0, nk), states(c0, nk)
    gates, tanh_c = empty((nk, B, 4 * H), x), empty((nk, B, H), x)
    y, hT, cT = empty((T, B, H), x), empty((B, H), x), empty((B, H), x)
    ring = np.zeros(4 * Hp, x.dtype)
    hf, cf = h.reshape(h.size), c.reshape(c.size)
    gf, tf = gates.reshape(gates.size), tanh_c.reshape(tanh_c.size)
    for n in range(B):
        for j in range(H):
            ring[j], ring[Hp + j] = h0[n, j], c0[n, j]
        for t in range(T):
            s, s1 = t % 2 * 2 * Hp, (t + 1) % 2 * 2 * Hp  # h at s, c at s + Hp
            row = t * B + n
            so = (row + B) * H  # h[t + 1, n], c[t + 1, n] in hf, cf
            for u in range(U):
                i0, i1, f0, f1, g0, g1, o0, o1 = unit_block(Q, bq, u, x, row * I, gx,
                                                            row * 4 * Hp, ring, s)
                i0, i1, f0, f1 = fast_sigmoid(i0), fast_sigmoid(i1), fast_sigmoid(f0), \
                    fast_sigmoid(f1)
                g0, g1, o0, o1 = fast_tanh(g0), fast_tanh(g1), fast_sigmoid(o0), fast_sigmoid(o1)
                j = u * BU
                cn0 = f0 * vload(ring, s + Hp + j) + i0 * g0
                cn1 = f1 * vload(ring, s + Hp + j + L) + i1 * g1
                tc0, tc1 = fast_tanh(cn0), fast_tanh(cn1)
                hn0, hn1 = o0 * tc0, o1 * tc1
                vstore(ring, s1 + j, hn0)
                vstore(ring, s1 + j + L, hn1)
                vstore(ring, s1 + Hp + j, cn0)
                vstore(ring, s1 + Hp + j + L, cn1)
                if keep:
                    store_pairs(gf, row * 4 * H, H, j, ((i0, i1), (f0, f1), (g0, g1), (o0, o1)))
                    store_pairs(tf, row * H, H, j, ((tc0, tc1),))
                    store_pairs(hf, so, H, j, ((hn0, hn1),))
                    store_pairs(cf, so, H, j, ((cn0, cn1),))
            active = t < lengths[n]
            end_step(ring, s, s1, y[t, n], active)
            if keep and not active:  # the states an inactive step carries
                carry_state(ring, s1, hf, so, H)
                carry_state(ring, s1 + Hp, cf, so, H)
        carry_state(ring, T % 2 * 2 * Hp, hT[n], 0, H)
        carry_state(ring, T % 2 * 2 * Hp + Hp, cT[n], 0, H)
    return y, h, c, gates, tanh_c, hT, cT


#: the cache's names for ``_bi_cache``'s arrays (and ``cache_rows``'), in their order
CACHE_NAMES = ("h", "c", "gates", "tanh_c")


@njit(**JIT)
def _bi_cache(buf, T, H, Bp):
    """The arrays of a batch-inner cache in its one buffer: h, c: (T+1, H, Bp) (h[t], c[t] enter
    step t), gates: (T, 4H, Bp) post-activation, tanh_c: (T, H, Bp)."""
    h, o = carve(buf, 0, T + 1, H, Bp)
    c, o = carve(buf, o, T + 1, H, Bp)
    gates, o = carve(buf, o, T, 4 * H, Bp)
    tanh_c, o = carve(buf, o, T, H, Bp)
    return h, c, gates, tanh_c


@njit(**JIT)
def cache_rows(buf, T, B, H):
    """A batch-inner cache as ``lstm_forward``'s h, c: (T+1, B, H), gates: (T, B, 4H), tanh_c."""
    h, c, gates, tanh_c = _bi_cache(buf, T, H, padded(B, buf))
    return rows(h, B), rows(c, B), rows(gates, B), rows(tanh_c, B)


@njit(**JIT)
def lstm_forward_bi(x, h0, c0, W, R, b, lengths, keep):
    """batch-inner: ``lstm_forward`` with the batch as the innermost axis of every step's work
    (``_batch``), so that it vectorises over B when H is tiny. Same arguments (less
    fused, packed, chunks, gemm_chunks); returns y: (T, B, H), hT, cT: (B, H) and the cache
    in one buffer (``_bi_cache``), each step's rows transposed and padded to
    Bp = ``_batch.padded(B)`` (``cache_rows`` turns it into the others' layout): a forward
    writes no more than y in rows. Without keep the buffer holds ``_common.kept``'s rings."""
    T, B, I = x.shape
    H = R.shape[0]
    Bp = padded(B, x)
    HB, L = H * Bp, lanes(x)
    nk = kept(T, keep)
    buf = empty(((2 * (nk + 1) + 5 * nk) * HB,), x)
    h, c, gates, tanh_c = _bi_cache(buf, nk, H, Bp)
    y = empty((T, B, H), x)
    M = stacked(W, R)
    xh = workspace(h0, I + H, Bp)  # (I+H, Bp): [x[t]; h]
    cb = workspace(c0, H, Bp)  # (H, Bp): c
    cn = np.empty((H, Bp), x.dtype)  # this step's c and h
    hn = np.empty((H, Bp), x.dtype)
    vcopy(xh[I:], h[0])
    vcopy(cb, c[0])
    shortest = lengths.min()
    for t in range(T):
        g, tc = gates[t % nk], tanh_c[t % nk]
        transpose_in(x[t], xh)
        affine(M, xh, 0, I + H, b, g)
        for j in range(0, HB, L):
            i, f = fast_sigmoid(vload(g, j)), fast_sigmoid(vload(g, HB + j))
            gg, o = fast_tanh(vload(g, 2 * HB + j)), fast_sigmoid(vload(g, 3 * HB + j))
            vstore(g, j, i)
            vstore(g, HB + j, f)
            vstore(g, 2 * HB + j, gg)
            vstore(g, 3 * HB + j, o)
            cj = f * vload(cb, j) + i * gg
            tcj = fast_tanh(cj)
            vstore(cn, j, cj)
            vstore(tc, j, tcj)
            vstore(hn, j, o * tcj)
        every = t < shortest
        commit(cn, cb, lengths, t, every)
        commit(hn, xh[I:], lengths, t, every)
        vcopy(cb, c[(t + 1) % (nk + 1)])
        vcopy(xh[I:], h[(t + 1) % (nk + 1)])
        outputs(hn, lengths, t, every, y[t])
    return y, final(xh[I:], B), final(cb, B), buf


#: the backward's pointwise pass, without reassociation: it has no reduction to vectorise,
#: and with it LLVM regrouped the products of the o-gate's and the cell's gradients
#: differently in the function compiled on its own than in its callers' copies of it
#: (optimised again with them); a process that compiles runs the former, one that loads
#: the kernels from Numba's cache the latter, so the two gave different gradients
POINTWISE_JIT = {**JIT, "fastmath": FASTMATH - {"reassoc"}}


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
    one = gates.dtype.type(1)
    for t in range(dy.shape[0] - 1, -1, -1):
        for n in range(lo, hi):
            g, dg = gates[t, n], dgates[t, n]
            dhn, dcn = dh[n], dc[n]
            if t < lengths[n]:
                dyn, cp, tc = dy[t, n], c[t, n], tanh_c[t, n]
                # dhn becomes the gradient w.r.t. h[t+1] in full, dcn the one w.r.t. c[t+1];
                # short loops over few arrays vectorise (one loop over all of them ran 1.6x slower)
                for j in range(H):
                    dhn[j] += dyn[j]
                for j in range(H):
                    dcn[j] += dhn[j] * g[3 * H + j] * (one - tc[j] * tc[j])
                for j in range(H):
                    o = g[3 * H + j]
                    dg[3 * H + j] = dhn[j] * tc[j] * o * (one - o)
                for j in range(H):
                    i, gg = g[j], g[2 * H + j]
                    dg[j] = dcn[j] * gg * i * (one - i)
                    dg[2 * H + j] = dcn[j] * i * (one - gg * gg)
                for j in range(H):
                    f = g[H + j]
                    dg[H + j] = dcn[j] * cp[j] * f * (one - f)
                    dcn[j] *= f
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


@njit(**JIT)
def lstm_backward_bi(dy, dhT, dcT, x, W, R, buf, lengths):
    """batch-inner backward, on ``lstm_forward_bi``'s cache buffer, batch innermost as there.

    dy: (T, B, H)   dhT, dcT: (B, H)   x: (T, B, I)   W: (I, 4H)   R: (H, 4H)
    Returns dx: (T, B, I), dh0, dc0: (B, H), dW: (I, 4H), dR: (H, 4H), db: (4H,).
    """
    T, B, H = dy.shape
    I = x.shape[2]
    Bp = padded(B, dy)
    HB, L = H * Bp, lanes(dy)
    h, c, gates, tanh_c = _bi_cache(buf, T, H, Bp)
    one = dy.dtype.type(1)
    dh = workspace(dhT, H, Bp)  # (H, Bp): gradient w.r.t. h[t+1], then h[t]
    dc = workspace(dcT, H, Bp)  # (H, Bp): the same for c
    dhs = np.empty((H, Bp), dy.dtype)  # dh, dc kept for the rows a step leaves alone
    dcs = np.empty((H, Bp), dy.dtype)
    dgates = np.zeros((T, 4 * H, Bp), dy.dtype)  # pre-activation gradients
    dx = empty((T, B, I), dy)
    dxt = np.empty((I, Bp), dy.dtype)
    RT, WT = transposed(R), transposed(W)  # (4H, H), (4H, I): the products below take rows
    nobias = np.zeros(max(H, I), dy.dtype)
    shortest = lengths.min()
    for t in range(T - 1, -1, -1):
        g, dg, tc, cp = gates[t], dgates[t], tanh_c[t], c[t]
        every = t < shortest
        if not every:
            vcopy(dh, dhs)
            vcopy(dc, dcs)
        transpose_add(dy[t], dh)
        for j in range(0, HB, L):
            i, f = vload(g, j), vload(g, HB + j)
            gg, o = vload(g, 2 * HB + j), vload(g, 3 * HB + j)
            dhj, tcj = vload(dh, j), vload(tc, j)
            dcj = vload(dc, j) + dhj * o * (one - tcj * tcj)
            vstore(dg, j, dcj * gg * i * (one - i))
            vstore(dg, HB + j, dcj * vload(cp, j) * f * (one - f))
            vstore(dg, 2 * HB + j, dcj * i * (one - gg * gg))
            vstore(dg, 3 * HB + j, dhj * tcj * o * (one - o))
            vstore(dc, j, dcj * f)
        if not every:
            zero_inactive(dg, lengths, t)
            keep_inactive(dc, dcs, lengths, t)
        affine(RT, dg, 0, 4 * H, nobias, dh)
        if not every:
            keep_inactive(dh, dhs, lengths, t)
        input_grads(WT, dg, nobias, dxt, dx[t])
    dW, dR, db = weight_grads(x, h, dgates, dgates)
    return dx, final(dh, B), final(dc, B), dW, dR, db
