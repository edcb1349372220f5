"""The batch-inner schedule (``plan.VARIANTS``): the forward and backward kernels of the
three cells with every step's work laid out as (unit, batch row), so that it vectorises
over the batch when H is tiny (a row of H=3 units is shorter than one vector), and the
pieces they share. A forward leaves its cache in that layout, in one buffer, which this
schedule's backward reads as it is and ``*_cache_rows`` turns into the (T, B, K) arrays
of the rows schedules' caches.

Why the rows are padded and the work is on explicit vectors: with rows of B=16 elements,
loops over ``range(B)`` ran at a fixed cost each whatever B (LLVM's runtime overlap
checks, a vector body that wants 32 elements, the scalar remainder), and a step of the
LSTM made ~80 of them (~0.5 us per step at B=8 and at B=16; benchmarks/README.md,
"Design notes", the batch as the vector axis). Here every workspace is (rows, Bp) with Bp
a multiple of the vector width, and the products and the pointwise pass run on
``_vec.Vec`` values over whole vectors of batch rows. The states' padding lanes are kept
at zero (``commit``), so the other padding lanes hold activations of the biases alone,
finite, and every gradient's padding lanes are exact zeros; only the transposes into the
(T, B, .) results stay scalar.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._jit import JIT
from ._memory import empty, kept
from ._products import transposed
from ._vec import (
    lanes,
    vbcast,
    vfma,
    vload,
    vstore,
    vsum,
    vzero,
)
from .cells import (
    IDENTITY,
    activate,
    activation_grad,
    gru_step,
    gru_step_backward,
    lstm_step,
    lstm_step_backward,
)

# ----------------------------------------------------------------------------
# pieces of the forward kernels


@njit(**JIT)
def padded(B, like):
    """B rounded up to a whole number of vectors of like's dtype."""
    L = lanes(like)
    return (B + L - 1) // L * L


@njit(**JIT)
def stacked(W, R):
    """M: (I+H, G*H) = [W; R], the weights of z = [x[t]; h] (see ``preactivation``)."""
    I, H = W.shape[0], R.shape[0]
    M = np.empty((I + H, W.shape[1]), W.dtype)
    M[:I] = W
    M[I:] = R
    return M


@njit(**JIT)
def workspace(s0, rows, Bp):
    """(rows, Bp) zeros with s0: (B, H) transposed into its last H rows (the rows of a
    state, below those of the input in z = [x[t]; h])."""
    B, H = s0.shape
    z = np.zeros((rows, Bp), s0.dtype)
    transpose_in(s0, z[rows - H:])
    return z


@njit(**JIT)
def transpose_in(a, z):
    """z[k, n] = a[n, k] for a: (B, K), z: (K, Bp)."""
    B, K = a.shape
    for n in range(B):
        for k in range(K):
            z[k, n] = a[n, k]


@njit(**JIT)
def affine(M, z, k0, k1, bias, out):
    """out: (N, Bp) = bias[:N, None] + M[k0:k1].T @ z[k0:k1], one vector of batch rows
    at a time, its accumulator in a register: a step's pre-activations (M = [W; R],
    z = [x[t]; h]) and, backward, the gradients through them (M = R.T or W.T, z the
    gate gradients).

    M: (K, N)   z: (K, Bp)   bias: (>= N,), all C-contiguous; out must not overlap z
    """
    N = M.shape[1]
    Bp = z.shape[1]
    L = lanes(z)
    # raw loads and stores: shapes that do not fit would reach past the arrays
    assert 0 <= k0 <= k1 <= z.shape[0] <= M.shape[0] and bias.shape[0] >= N
    assert out.shape[0] == N and out.shape[1] == Bp and Bp % L == 0
    for g in range(N):
        for n0 in range(0, Bp, L):
            acc = vbcast(bias, g)
            for k in range(k0, k1):
                acc = vfma(vbcast(M, k * N + g), vload(z, k * Bp + n0), acc)
            vstore(out, g * Bp + n0, acc)


@njit(**JIT)
def vcopy(src, dst):
    """dst = src, two C-contiguous arrays of one shape whose size is a whole number of
    vectors."""
    for i in range(0, src.size, lanes(src)):
        vstore(dst, i, vload(src, i))


@njit(**JIT)
def commit(new, state, lengths, t, every):
    """state[j, n] = new[j, n] for the rows n that step t advances (t < lengths[n]);
    every: all of them. new, state: (H, Bp); the padding lanes n >= B stay zero (the
    whole-vector copy writes them, and a ReLU or identity RNN would otherwise grow them
    without bound: inf * 0 = NaN in the weight gradients)."""
    B = lengths.shape[0]
    if every:
        vcopy(new, state)
        for j in range(state.shape[0]):
            for n in range(B, state.shape[1]):
                state[j, n] = 0
        return
    for j in range(new.shape[0]):
        for n in range(B):
            if t < lengths[n]:
                state[j, n] = new[j, n]


@njit(**JIT)
def transpose_add(a, z):
    """z[k, n] += a[n, k] for a: (B, K), z: (K, Bp)."""
    B, K = a.shape
    for k in range(K):
        for n in range(B):
            z[k, n] += a[n, k]


@njit(**JIT)
def transpose_out(z, out):
    """out: (B, K) = z[:, :B].T for z: (K, Bp)."""
    B, K = out.shape
    for k in range(K):
        for n in range(B):
            out[n, k] = z[k, n]


@njit(**JIT)
def outputs(new, lengths, t, every, y):
    """y: (B, H) = this step's new state new: (H, Bp) transposed, zeros in the rows past
    their length."""
    transpose_out(new, y)
    if not every:
        for n in range(y.shape[0]):
            if t >= lengths[n]:
                y[n] = 0


@njit(**JIT)
def final(s, B):
    """(B, H) = s: (H, Bp), the state after the last step, in the rows' layout."""
    out = np.empty((B, s.shape[0]), s.dtype)
    transpose_out(s, out)
    return out


@njit(**JIT)
def carve(buf, o, n, K, Bp):
    """buf[o : o + n*K*Bp] as an (n, K, Bp) array, and the offset past it: the arrays of a
    batch-inner cache live in one buffer (each array a kernel returns cost a tenth of a
    forward at B16 T10 H3 to hand to Python)."""
    e = o + n * K * Bp
    return buf[o:e].reshape((n, K, Bp)), e


@njit(**JIT)
def rows(a, B):
    """(T, B, K) = a: (T, K, Bp) in the rows' layout of the other kernels' caches."""
    T, K = a.shape[0], a.shape[1]
    out = empty((T, B, K), a)
    for t in range(T):
        transpose_out(a[t], out[t])
    return out


# ----------------------------------------------------------------------------
# pieces of the backward kernels


@njit(**JIT)
def outer_sums(a, b, out):
    """out: (K, G) = sum over t and n of a[t, k, n] * b[t, g, n], for a: (>= T, K, Bp),
    b: (T, G, Bp): weight gradients over all steps (b's padding lanes are zeros)."""
    T, G, Bp = b.shape
    K = out.shape[0]
    L = lanes(b)
    assert a.shape[0] >= T and a.shape[1] == K and a.shape[2] == Bp and out.shape[1] == G
    for k in range(K):
        for g in range(G):
            acc = vzero(b)
            for t in range(T):
                ak, bg = (t * K + k) * Bp, (t * G + g) * Bp
                for n0 in range(0, Bp, L):
                    acc = vfma(vload(a, ak + n0), vload(b, bg + n0), acc)
            out[k, g] = vsum(acc)


@njit(**JIT)
def column_sums(b):
    """(G,) = the sums over t and n of b: (T, G, Bp) (bias gradients)."""
    T, G, Bp = b.shape
    L = lanes(b)
    out = np.empty(G, b.dtype)
    for g in range(G):
        acc = vzero(b)
        for t in range(T):
            for n0 in range(0, Bp, L):
                acc = acc + vload(b, (t * G + g) * Bp + n0)
        out[g] = vsum(acc)
    return out


@njit(**JIT)
def weight_grads(x, h, dgx, dgh):
    """dW: (I, G), dR: (H, G), db: (G,) from the gate gradients of every step.

    x: (T, B, I) inputs   h: (>= T, H, Bp) the states entering each step
    dgx, dgh: (T, G, Bp) gradients of x @ W + b and of h @ R (one array but for the GRU)
    """
    T, B, I = x.shape
    G, Bp = dgx.shape[1], dgx.shape[2]
    xb = np.zeros((T, I, Bp), x.dtype)
    for t in range(T):
        transpose_in(x[t], xb[t])
    dW = np.empty((I, G), x.dtype)
    outer_sums(xb, dgx, dW)
    dR = np.empty((h.shape[1], G), x.dtype)
    outer_sums(h, dgh, dR)
    return dW, dR, column_sums(dgx)


@njit(**JIT)
def input_grads(WT, dg, nobias, dxt, dx):
    """dx: (B, I) of one step = (W @ dg) transposed. WT: (G, I) W.T, contiguous
    dg: (G, Bp)   nobias: (>= I,) zeros   dxt: (I, Bp) workspace."""
    affine(WT, dg, 0, WT.shape[0], nobias, dxt)
    transpose_out(dxt, dx)


@njit(**JIT)
def zero_inactive(d, lengths, t):
    """d[:, n] = 0 for the rows n that step t leaves alone (t >= lengths[n])."""
    for n in range(lengths.shape[0]):
        if t >= lengths[n]:
            for j in range(d.shape[0]):
                d[j, n] = 0


@njit(**JIT)
def keep_inactive(new, old, lengths, t):
    """new[:, n] = old[:, n] for the rows n that step t leaves alone (t >= lengths[n])."""
    for n in range(lengths.shape[0]):
        if t >= lengths[n]:
            for j in range(new.shape[0]):
                new[j, n] = old[j, n]


# ----------------------------------------------------------------------------
# Elman RNN


#: the cache's names for ``_rnn_cache``'s arrays (and ``rnn_cache_rows``'), in their order
RNN_CACHE_NAMES = ("h", "a")


@njit(**JIT)
def _rnn_cache(buf, T, H, Bp):
    """The arrays of a batch-inner cache in its one buffer: h: (T+1, H, Bp) (h[t] enters step t),
    a: (T, H, Bp) post-activation."""
    h, o = carve(buf, 0, T + 1, H, Bp)
    a, o = carve(buf, o, T, H, Bp)
    return h, a


@njit(**JIT)
def rnn_cache_rows(buf, T, B, H):
    """A batch-inner cache as ``rnn.rnn_forward``'s h: (T+1, B, H), a: (T, B, H)."""
    h, a = _rnn_cache(buf, T, H, padded(B, buf))
    return rows(h, B), rows(a, B)


@njit(**JIT)
def rnn_forward(x, h0, W, R, b, code, lengths, keep):
    """batch-inner: ``rnn.rnn_forward`` with the batch as the innermost axis of every step's
    work (the pieces above), so that it vectorises over B when H is tiny. Same arguments (less
    fused, packed, chunks, gemm_chunks); returns y: (T, B, H), hT: (B, H) and the cache in
    one buffer (``_rnn_cache``, see ``lstm_forward``)."""
    T, B, I = x.shape
    H = R.shape[0]
    Bp = padded(B, x)
    HB, L = H * Bp, lanes(x)
    nk = kept(T, keep)
    buf = empty(((2 * nk + 1) * HB,), x)
    h, a = _rnn_cache(buf, nk, H, Bp)
    y = empty((T, B, H), x)
    M = stacked(W, R)
    xh = workspace(h0, I + H, Bp)  # (I+H, Bp): [x[t]; h]
    vcopy(xh[I:], h[0])
    shortest = lengths.min()
    for t in range(T):
        v = a[t % nk]
        transpose_in(x[t], xh)
        affine(M, xh, 0, I + H, b, v)
        if code != IDENTITY:
            for j in range(0, HB, L):
                vstore(v, j, activate(vload(v, j), code))
        every = t < shortest
        commit(v, xh[I:], lengths, t, every)
        vcopy(xh[I:], h[(t + 1) % (nk + 1)])
        outputs(v, lengths, t, every, y[t])
    return y, final(xh[I:], B), buf




@njit(**JIT)
def rnn_backward(dy, dhT, x, W, R, buf, code, lengths):
    """batch-inner backward, on ``rnn_forward``'s cache buffer, batch innermost as there.

    dy: (T, B, H)   dhT: (B, H)   x: (T, B, I)   W: (I, H)   R: (H, H)
    Returns dx: (T, B, I), dh0: (B, H), dW: (I, H), dR: (H, H), db: (H,).
    """
    T, B, H = dy.shape
    I = x.shape[2]
    Bp = padded(B, dy)
    HB, L = H * Bp, lanes(dy)
    h, a = _rnn_cache(buf, T, H, Bp)
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
        for j in range(0, HB, L):
            vstore(dat, j, activation_grad(vload(dh, j), vload(at, j), code))
        if not every:
            zero_inactive(dat, lengths, t)
        affine(RT, dat, 0, H, nobias, dh)
        if not every:
            keep_inactive(dh, dhs, lengths, t)
        input_grads(WT, dat, nobias, dxt, dx[t])
    dW, dR, db = weight_grads(x, h, da, da)
    return dx, final(dh, B), dW, dR, db


# ----------------------------------------------------------------------------
# LSTM


#: the cache's names for ``_lstm_cache``'s arrays (and ``lstm_cache_rows``'), in their order
LSTM_CACHE_NAMES = ("h", "c", "gates", "tanh_c")


@njit(**JIT)
def _lstm_cache(buf, T, H, Bp):
    """The arrays of a batch-inner cache in its one buffer: h, c: (T+1, H, Bp) (h[t], c[t] enter
    step t), gates: (T, 4H, Bp) post-activation, tanh_c: (T, H, Bp)."""
    h, o = carve(buf, 0, T + 1, H, Bp)
    c, o = carve(buf, o, T + 1, H, Bp)
    gates, o = carve(buf, o, T, 4 * H, Bp)
    tanh_c, o = carve(buf, o, T, H, Bp)
    return h, c, gates, tanh_c


@njit(**JIT)
def lstm_cache_rows(buf, T, B, H):
    """A batch-inner cache as ``lstm.lstm_forward``'s h, c: (T+1, B, H), gates: (T, B, 4H),
    tanh_c."""
    h, c, gates, tanh_c = _lstm_cache(buf, T, H, padded(B, buf))
    return rows(h, B), rows(c, B), rows(gates, B), rows(tanh_c, B)


@njit(**JIT)
def lstm_forward(x, h0, c0, W, R, b, lengths, keep):
    """batch-inner: ``lstm.lstm_forward`` with the batch as the innermost axis of every step's
    work (the pieces above), so that it vectorises over B when H is tiny. Same arguments (less
    fused, packed, chunks, gemm_chunks); returns y: (T, B, H), hT, cT: (B, H) and the cache
    in one buffer (``_lstm_cache``), each step's rows transposed and padded to
    Bp = ``padded(B)`` (``lstm_cache_rows`` turns it into the others' layout): a forward
    writes no more than y in rows. Without keep the buffer holds ``_memory.kept``'s rings."""
    T, B, I = x.shape
    H = R.shape[0]
    Bp = padded(B, x)
    HB, L = H * Bp, lanes(x)
    nk = kept(T, keep)
    buf = empty(((2 * (nk + 1) + 5 * nk) * HB,), x)
    h, c, gates, tanh_c = _lstm_cache(buf, nk, H, Bp)
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
            i, f, gg, o, cj, tcj, hj = lstm_step(vload(g, j), vload(g, HB + j),
                                                 vload(g, 2 * HB + j), vload(g, 3 * HB + j),
                                                 vload(cb, j))
            vstore(g, j, i)
            vstore(g, HB + j, f)
            vstore(g, 2 * HB + j, gg)
            vstore(g, 3 * HB + j, o)
            vstore(cn, j, cj)
            vstore(tc, j, tcj)
            vstore(hn, j, hj)
        every = t < shortest
        commit(cn, cb, lengths, t, every)
        commit(hn, xh[I:], lengths, t, every)
        vcopy(cb, c[(t + 1) % (nk + 1)])
        vcopy(xh[I:], h[(t + 1) % (nk + 1)])
        outputs(hn, lengths, t, every, y[t])
    return y, final(xh[I:], B), final(cb, B), buf


@njit(**JIT)
def lstm_backward(dy, dhT, dcT, x, W, R, buf, lengths):
    """batch-inner backward, on ``lstm_forward``'s cache buffer, batch innermost as there.

    dy: (T, B, H)   dhT, dcT: (B, H)   x: (T, B, I)   W: (I, 4H)   R: (H, 4H)
    Returns dx: (T, B, I), dh0, dc0: (B, H), dW: (I, 4H), dR: (H, 4H), db: (4H,).
    """
    T, B, H = dy.shape
    I = x.shape[2]
    Bp = padded(B, dy)
    HB, L = H * Bp, lanes(dy)
    h, c, gates, tanh_c = _lstm_cache(buf, T, H, Bp)
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
            di, df, dgg, do, dcp = lstm_step_backward(
                vload(dh, j), vload(dc, j), vload(g, j), vload(g, HB + j), vload(g, 2 * HB + j),
                vload(g, 3 * HB + j), vload(cp, j), vload(tc, j))
            vstore(dg, j, di)
            vstore(dg, HB + j, df)
            vstore(dg, 2 * HB + j, dgg)
            vstore(dg, 3 * HB + j, do)
            vstore(dc, j, dcp)
        if not every:
            zero_inactive(dg, lengths, t)
            keep_inactive(dc, dcs, lengths, t)
        affine(RT, dg, 0, 4 * H, nobias, dh)
        if not every:
            keep_inactive(dh, dhs, lengths, t)
        input_grads(WT, dg, nobias, dxt, dx[t])
    dW, dR, db = weight_grads(x, h, dgates, dgates)
    return dx, final(dh, B), final(dc, B), dW, dR, db


# ----------------------------------------------------------------------------
# GRU


#: the cache's names for ``_gru_cache``'s arrays (and ``gru_cache_rows``'), in their order
GRU_CACHE_NAMES = ("h", "gates", "hn")


@njit(**JIT)
def _gru_cache(buf, T, H, Bp):
    """The arrays of a batch-inner cache in its one buffer: h: (T+1, H, Bp) (h[t] enters step t),
    gates: (T, 3H, Bp) post-activation (r, z, n), hn: (T, H, Bp) h @ R_n + b_hn."""
    h, o = carve(buf, 0, T + 1, H, Bp)
    gates, o = carve(buf, o, T, 3 * H, Bp)
    hn, o = carve(buf, o, T, H, Bp)
    return h, gates, hn


@njit(**JIT)
def gru_cache_rows(buf, T, B, H):
    """A batch-inner cache as ``gru.gru_forward``'s h: (T+1, B, H), gates: (T, B, 3H),
    hn: (T, B, H)."""
    h, gates, hn = _gru_cache(buf, T, H, padded(B, buf))
    return rows(h, B), rows(gates, B), rows(hn, B)


@njit(**JIT)
def gru_forward(x, h0, W, R, b, b_hn, lengths, keep):
    """batch-inner: ``gru.gru_forward`` with the batch as the innermost axis of every step's
    work (the pieces above), so that it vectorises over B when H is tiny. Same arguments (less
    fused, packed, chunks, gemm_chunks); returns y: (T, B, H), hT: (B, H) and the cache in
    one buffer (``_gru_cache``, see ``lstm_forward``)."""
    T, B, I = x.shape
    H = R.shape[0]
    Bp = padded(B, x)
    HB, L = H * Bp, lanes(x)
    nk = kept(T, keep)
    buf = empty(((5 * nk + 1) * HB,), x)
    h, gates, hn = _gru_cache(buf, nk, H, Bp)
    y = empty((T, B, H), x)
    M = stacked(W, R)
    bh = np.zeros(3 * H, x.dtype)  # the bias inside r * (h @ R_n + b_hn)
    bh[2 * H:] = b_hn
    xh = workspace(h0, I + H, Bp)  # (I+H, Bp): [x[t]; h]
    hr = np.empty((3 * H, Bp), x.dtype)  # h @ R + bh
    new = np.empty((H, Bp), x.dtype)  # this step's h
    vcopy(xh[I:], h[0])
    shortest = lengths.min()
    for t in range(T):
        g, hnt = gates[t % nk], hn[t % nk]
        transpose_in(x[t], xh)
        affine(M, xh, 0, I, b, g)
        affine(M, xh, I, I + H, bh, hr)
        for j in range(0, HB, L):
            hnj = vload(hr, 2 * HB + j)
            r, z, n, hj = gru_step(vload(g, j) + vload(hr, j), vload(g, HB + j) + vload(hr, HB + j),
                                   vload(g, 2 * HB + j), hnj, vload(xh, I * Bp + j))
            vstore(g, j, r)
            vstore(g, HB + j, z)
            vstore(g, 2 * HB + j, n)
            vstore(hnt, j, hnj)
            vstore(new, j, hj)
        every = t < shortest
        commit(new, xh[I:], lengths, t, every)
        vcopy(xh[I:], h[(t + 1) % (nk + 1)])
        outputs(new, lengths, t, every, y[t])
    return y, final(xh[I:], B), buf



@njit(**JIT)
def gru_backward(dy, dhT, x, W, R, buf, lengths):
    """batch-inner backward, on ``gru_forward``'s cache buffer, batch innermost as there.

    dy: (T, B, H)   dhT: (B, H)   x: (T, B, I)   W: (I, 3H)   R: (H, 3H)
    Returns dx: (T, B, I), dh0: (B, H), dW: (I, 3H), dR: (H, 3H), db: (3H,), db_hn: (H,).
    """
    T, B, H = dy.shape
    I = x.shape[2]
    Bp = padded(B, dy)
    HB, L = H * Bp, lanes(dy)
    h, gates, hn = _gru_cache(buf, T, H, Bp)
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
            r = vload(g, j)
            dr, dz, dn, dhzj = gru_step_backward(vload(dh, j), r, vload(g, HB + j),
                                                 vload(g, 2 * HB + j), vload(hnt, j), vload(hp, j))
            vstore(gx, j, dr)
            vstore(gx, HB + j, dz)
            vstore(gx, 2 * HB + j, dn)
            vstore(gh, j, dr)
            vstore(gh, HB + j, dz)
            vstore(gh, 2 * HB + j, dn * r)
            vstore(dhz, j, dhzj)
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
