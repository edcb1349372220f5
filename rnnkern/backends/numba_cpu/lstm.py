"""Numba LSTM kernels, mirroring ``numpy_ref.lstm_forward`` / ``lstm_backward``.

Gate order (i, f, g, o):  c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t).
Each kernel allocates everything before its time loop; a step is the recurrent
product (one BLAS call, or the fused per-row loop) and one pass per batch row,
serial or parallel over rows (see ``_common.VARIANTS``).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._common import (
    JIT,
    add_into,
    fast_tanh,
    row_times,
    row_times_t,
    sigmoid_of_sum,
    tanh_of_sum,
    weight_grads,
)


@njit(**JIT)
def _forward_row(t, n, fused, gates, rec, R, b, h, c, tanh_c, y, lengths):
    """Step t of batch row n.

    gates: (T, B, 4H) holds x @ W on entry, the post-activation (i, f, g, o) on exit
    rec: (B, 4H) h[t] @ R, computed here for row n when fused
    h, c: (T+1, B, H)   tanh_c, y: (T, B, H)   lengths: (B,)
    """
    H = h.shape[2]
    g, r = gates[t, n], rec[n]
    if fused:
        row_times(h[t, n], R, r)
    hp, cp, hn, cn, tc, yn = h[t, n], c[t, n], h[t + 1, n], c[t + 1, n], tanh_c[t, n], y[t, n]
    sigmoid_of_sum(g, r, b, 0, 2 * H)
    tanh_of_sum(g, r, b, 2 * H, 3 * H)
    sigmoid_of_sum(g, r, b, 3 * H, 4 * H)
    for j in range(H):
        cn[j] = g[H + j] * cp[j] + g[j] * g[2 * H + j]
    for j in range(H):
        tc[j] = fast_tanh(cn[j])
    for j in range(H):
        hn[j] = g[3 * H + j] * tc[j]
    if t < lengths[n]:
        yn[:] = hn
    else:
        cn[:] = cp
        hn[:] = hp
        yn[:] = 0


@njit(parallel=True, **JIT)
def _forward_rows_parallel(t, fused, gates, rec, R, b, h, c, tanh_c, y, lengths):
    for n in prange(gates.shape[1]):
        _forward_row(t, n, fused, gates, rec, R, b, h, c, tanh_c, y, lengths)


@njit(**JIT)
def lstm_forward(x, h0, c0, W, R, b, lengths, fused, parallel):
    """x: (T, B, I)   h0, c0: (B, H)   W: (I, 4H)   R: (H, 4H)   b: (4H,)   lengths: (B,)

    Returns y: (T, B, H), h, c: (T+1, B, H) (h[t], c[t] enter step t),
    gates: (T, B, 4H) post-activation, tanh_c: (T, B, H).
    """
    T, B, I = x.shape
    H = R.shape[0]
    gates = np.empty((T, B, 4 * H), x.dtype)
    np.dot(x.reshape(T * B, I), W, out=gates.reshape(T * B, 4 * H))
    h = np.empty((T + 1, B, H), x.dtype)
    c = np.empty((T + 1, B, H), x.dtype)
    h[0] = h0
    c[0] = c0
    tanh_c = np.empty((T, B, H), x.dtype)
    y = np.empty((T, B, H), x.dtype)
    rec = np.empty((B, 4 * H), x.dtype)
    for t in range(T):
        if not fused:
            np.dot(h[t], R, out=rec)
        if parallel:
            _forward_rows_parallel(t, fused, gates, rec, R, b, h, c, tanh_c, y, lengths)
        else:
            for n in range(B):
                _forward_row(t, n, fused, gates, rec, R, b, h, c, tanh_c, y, lengths)
    return y, h, c, gates, tanh_c


@njit(**JIT)
def _backward_row(t, n, fused, dy, dh, dc, dgates, dhr, gates, c, tanh_c, R, lengths):
    """Step t of batch row n, backwards.

    dh, dc: (B, H) gradients w.r.t. h[t+1], c[t+1] on entry; on exit dc is the one
    w.r.t. c[t] and dh holds what is carried past inactive rows, plus (fused) the
    recurrent part dgates[t, n] @ R.T.   dgates: (T, B, 4H)   dhr: (B, H) workspace
    """
    H = dh.shape[1]
    g, dg = gates[t, n], dgates[t, n]
    dyn, dhn, dcn, cp, tc = dy[t, n], dh[n], dc[n], c[t, n], tanh_c[t, n]
    active = t < lengths[n]
    zero, one = g.dtype.type(0), g.dtype.type(1)
    for j in range(H):
        i, f, gg, o = g[j], g[H + j], g[2 * H + j], g[3 * H + j]
        dh_new = dyn[j] + dhn[j] if active else zero
        dc_new = (dcn[j] if active else zero) + dh_new * o * (one - tc[j] * tc[j])
        dg[j] = dc_new * gg * i * (one - i)
        dg[H + j] = dc_new * cp[j] * f * (one - f)
        dg[2 * H + j] = dc_new * i * (one - gg * gg)
        dg[3 * H + j] = dh_new * tc[j] * o * (one - o)
        dcn[j] = dc_new * f if active else dcn[j]
        dhn[j] = zero if active else dhn[j]
    if fused:
        row_times_t(dg, R, dhr[n])
        for j in range(H):
            dhn[j] += dhr[n, j]


@njit(parallel=True, **JIT)
def _backward_rows_parallel(t, fused, dy, dh, dc, dgates, dhr, gates, c, tanh_c, R, lengths):
    for n in prange(dh.shape[0]):
        _backward_row(t, n, fused, dy, dh, dc, dgates, dhr, gates, c, tanh_c, R, lengths)


@njit(**JIT)
def lstm_backward(dy, dhT, dcT, x, W, R, h, c, gates, tanh_c, lengths, fused, parallel):
    """dy: (T, B, H)   dhT, dcT: (B, H)   the rest as ``lstm_forward`` returned them.

    Returns dx: (T, B, I), dh0, dc0: (B, H), dW: (I, 4H), dR: (H, 4H), db: (4H,),
    dgates: (T, B, 4H) pre-activation gradients.
    """
    T, B, H = dy.shape
    dh = dhT.copy()
    dc = dcT.copy()
    dgates = np.empty((T, B, 4 * H), dy.dtype)
    dhr = np.empty((B, H), dy.dtype)
    for t in range(T - 1, -1, -1):
        if parallel:
            _backward_rows_parallel(t, fused, dy, dh, dc, dgates, dhr, gates, c, tanh_c, R,
                                    lengths)
        else:
            for n in range(B):
                _backward_row(t, n, fused, dy, dh, dc, dgates, dhr, gates, c, tanh_c, R,
                              lengths)
        if not fused:
            np.dot(dgates[t], R.T, out=dhr)
            add_into(dh, dhr)
    dx, dW, dR, db = weight_grads(x, W, h, dgates, dgates)
    return dx, dh, dc, dW, dR, db, dgates
