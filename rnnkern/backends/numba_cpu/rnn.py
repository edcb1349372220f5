"""Numba Elman RNN kernels, mirroring ``numpy_ref.rnn_forward`` / ``rnn_backward``.

h_t = act(x_t @ W + h_{t-1} @ R + b), act by integer code: 0 tanh, 1 relu, 2 identity
(the branch sits outside each element loop so that the loop vectorises).
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
    JIT,
    add_rows_product,
    empty,
    fast_tanh,
    kept,
    states,
    transposed,
)
from ._simd import input_part, pack_if, product, product_work
from ._units import carry_state, end_step, prepare_units, store_vector, unit_block
from ._vec import lanes, maximum, vload, vstore, vzero_like, where_positive


@njit(**JIT)
def _forward_rows(lo, hi, fused, stepped, code, x, W, PW, a, work, R, P, b, h, y, lengths):
    """Every step of batch rows lo <= n < hi.

    x: (T, B, I)   W: (I, H)   PW: W packed when stepped (see ``_simd.input_part``)
    a: (T, B, H) holds x @ W on entry (unless stepped) and the post-activation on exit
    h: (T+1, B, H)
    P: R packed for ``_simd.product``
    work: ``_simd.product_work`` of the products (packed: h[t]'s rows, then x[t]'s)
    y: (T, B, H)
    Without a cache (``_common.kept``) h is a ring of 2, a stepped a one of 1.
    """
    H = h.shape[2]
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
            an, hp, hn, yn = a[gs, n], h[s, n], h[(t + 1) % nh, n], y[t, n]
            if code == 0:
                for j in range(H):
                    an[j] = fast_tanh(an[j] + b[j])
            elif code == 1:
                for j in range(H):
                    v = an[j] + b[j]
                    an[j] = zero if v < zero else v  # a NaN passes, as in np.maximum
            else:
                for j in range(H):
                    an[j] = an[j] + b[j]
            if t < lengths[n]:
                for j in range(H):
                    hn[j] = an[j]
                    yn[j] = an[j]
            else:
                for j in range(H):
                    hn[j] = hp[j]
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
    hT: (B, H) a copy of h[T]. Without keep h and a are the rings of ``_common.kept``.
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


#: W's and R's one gate in ``_units``' one slot
_SLOTS = np.zeros(1, np.int64)


@njit(**JIT)
def _activation(v, code):
    """act(v) of a ``Vec`` by code (see the module): a NaN passes the ReLU, as in
    np.maximum."""
    if code == 0:
        return fast_tanh(v)
    if code == 1:
        return maximum(vzero_like(v), v)
    return v


@njit(**JIT)
def rnn_forward_units(x, h0, W, R, b, code, lengths, in_step, keep):
    """lone-row: ``rnn_forward`` one row at a time, each step's pre-activations in registers a
    block of units at a time (``_units``: one slot of 8 vectors), then their activation.
    Same arguments (less the plan's) and returns; without keep the cache's arrays are
    empty.

    Work, flat, Hp = H rounded up to whole blocks: ring: (2, Hp) the row's h entering and
    leaving a step. With keep, a step's cache (the post-activation, its new h) goes from
    the registers into its rows, up to unit H.
    """
    T, B, I = x.shape
    H = R.shape[0]
    L = lanes(x)
    Q, bq, gx, U, BU, Hp = prepare_units(x, W, R, b.reshape(1, H), _SLOTS, _SLOTS, in_step)
    nk = T if keep else 0
    h = states(h0, nk)
    a = empty((nk, B, H), x)
    y, hT = empty((T, B, H), x), empty((B, H), x)
    ring = np.zeros(2 * Hp, x.dtype)
    hf, af = h.reshape(h.size), a.reshape(a.size)
    for n in range(B):
        for j in range(H):
            ring[j] = h0[n, j]
        for t in range(T):
            s, s1 = t % 2 * Hp, (t + 1) % 2 * Hp
            row = t * B + n
            for u in range(U):
                vs = unit_block(Q, bq, u, x, row * I, gx, row * Hp, ring, s)
                for i, v in enumerate(vs):
                    j = u * BU + i * L
                    w = _activation(v, code)
                    vstore(ring, s1 + j, w)
                    if keep:
                        store_vector(af, row * H, H, j, w)
                        store_vector(hf, (row + B) * H, H, j, w)
            active = t < lengths[n]
            end_step(ring, s, s1, y[t, n], active)
            if keep and not active:  # the state an inactive step carries
                carry_state(ring, s1, hf, (row + B) * H, H)
        carry_state(ring, T % 2 * Hp, hT[n], 0, H)
    return y, h, a, hT


#: the cache's names for ``_bi_cache``'s arrays (and ``cache_rows``'), in their order
CACHE_NAMES = ("h", "a")


@njit(**JIT)
def _bi_cache(buf, T, H, Bp):
    """The arrays of a batch-inner cache in its one buffer: h: (T+1, H, Bp) (h[t] enters step t),
    a: (T, H, Bp) post-activation."""
    h, o = carve(buf, 0, T + 1, H, Bp)
    a, o = carve(buf, o, T, H, Bp)
    return h, a


@njit(**JIT)
def cache_rows(buf, T, B, H):
    """A batch-inner cache as ``rnn_forward``'s h: (T+1, B, H), a: (T, B, H)."""
    h, a = _bi_cache(buf, T, H, padded(B, buf))
    return rows(h, B), rows(a, B)


@njit(**JIT)
def rnn_forward_bi(x, h0, W, R, b, code, lengths, keep):
    """batch-inner: ``rnn_forward`` with the batch as the innermost axis of every step's work
    (``_batch``), so that it vectorises over B when H is tiny. Same arguments (less
    fused, packed, chunks, gemm_chunks); returns y: (T, B, H), hT: (B, H) and the cache in
    one buffer (``_bi_cache``, see ``lstm_forward_bi``)."""
    T, B, I = x.shape
    H = R.shape[0]
    Bp = padded(B, x)
    HB, L = H * Bp, lanes(x)
    nk = kept(T, keep)
    buf = empty(((2 * nk + 1) * HB,), x)
    h, a = _bi_cache(buf, nk, H, Bp)
    y = empty((T, B, H), x)
    M = stacked(W, R)
    xh = workspace(h0, I + H, Bp)  # (I+H, Bp): [x[t]; h]
    vcopy(xh[I:], h[0])
    zero = x.dtype.type(0)
    shortest = lengths.min()
    for t in range(T):
        v = a[t % nk]
        transpose_in(x[t], xh)
        affine(M, xh, 0, I + H, b, v)
        if code == 0:
            for j in range(0, HB, L):
                vstore(v, j, fast_tanh(vload(v, j)))
        elif code == 1:
            for j in range(0, HB, L):
                vstore(v, j, maximum(zero, vload(v, j)))  # zero first: a NaN passes
        every = t < shortest
        commit(v, xh[I:], lengths, t, every)
        vcopy(xh[I:], h[(t + 1) % (nk + 1)])
        outputs(v, lengths, t, every, y[t])
    return y, final(xh[I:], B), buf


@njit(**JIT)
def _backward_rows(lo, hi, fused, code, dy, dh, da, work, a, R, RT, P, lengths):
    """Every step, from the last, of batch rows lo <= n < hi.

    dh: (B, H) gradient w.r.t. h[t+1] on entry; on exit what is carried past an
    inactive row, plus da[t, n] @ R.T.   da: (T, B, H)
    work: ``_simd.product_work`` of the product
    RT: (G*H, H) R.T as a C-contiguous copy when fused
    P: R.T packed for ``_simd.product``
    """
    H = dh.shape[1]
    zero, one = a.dtype.type(0), a.dtype.type(1)
    for t in range(dy.shape[0] - 1, -1, -1):
        for n in range(lo, hi):
            an, dan, dyn, dhn = a[t, n], da[t, n], dy[t, n], dh[n]
            if t < lengths[n]:
                # derivative of the activation from its output a = act(v)
                if code == 0:
                    for j in range(H):
                        dan[j] = (dyn[j] + dhn[j]) * (one - an[j] * an[j])
                elif code == 1:
                    for j in range(H):
                        dan[j] = dyn[j] + dhn[j] if an[j] > zero else zero
                else:
                    for j in range(H):
                        dan[j] = dyn[j] + dhn[j]
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


@njit(**JIT)
def rnn_backward_bi(dy, dhT, x, W, R, buf, code, lengths):
    """batch-inner backward, on ``rnn_forward_bi``'s cache buffer, batch innermost as there.

    dy: (T, B, H)   dhT: (B, H)   x: (T, B, I)   W: (I, H)   R: (H, H)
    Returns dx: (T, B, I), dh0: (B, H), dW: (I, H), dR: (H, H), db: (H,).
    """
    T, B, H = dy.shape
    I = x.shape[2]
    Bp = padded(B, dy)
    HB, L = H * Bp, lanes(dy)
    h, a = _bi_cache(buf, T, H, Bp)
    one = dy.dtype.type(1)
    dh = workspace(dhT, H, Bp)  # (H, Bp): gradient w.r.t. h[t+1], then h[t]
    dhs = np.empty((H, Bp), dy.dtype)  # dh kept for the rows a step leaves alone
    da = np.zeros((T, H, Bp), dy.dtype)  # pre-activation gradients
    dx = empty((T, B, I), dy)
    dxt = np.empty((I, Bp), dy.dtype)
    RT, WT = transposed(R), transposed(W)
    nobias = np.zeros(max(H, I), dy.dtype)
    shortest = lengths.min()
    for t in range(T - 1, -1, -1):
        at, dat = a[t], da[t]
        every = t < shortest
        if not every:
            vcopy(dh, dhs)
        transpose_add(dy[t], dh)
        # derivative of the activation from its output a = act(v)
        if code == 0:
            for j in range(0, HB, L):
                aj = vload(at, j)
                vstore(dat, j, vload(dh, j) * (one - aj * aj))
        elif code == 1:
            for j in range(0, HB, L):
                vstore(dat, j, where_positive(vload(at, j), vload(dh, j)))
        else:
            vcopy(dh, dat)
        if not every:
            zero_inactive(dat, lengths, t)
        affine(RT, dat, 0, H, nobias, dh)
        if not every:
            keep_inactive(dh, dhs, lengths, t)
        input_grads(WT, dat, nobias, dxt, dx[t])
    dW, dR, db = weight_grads(x, h, da, da)
    return dx, final(dh, B), dW, dR, db
