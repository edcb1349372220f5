"""Numba GRU kernels, mirroring ``numpy_ref.gru_forward`` / ``gru_backward``.

Gate order (r, z, n), PyTorch's formulation:
  r = s(x W_r + h R_r + b_r)   z = s(x W_z + h R_z + b_z)
  n = tanh(x W_n + b_n + r * (h R_n + b_hn))   h' = (1 - z) * n + z * h
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
    weight_grads,
)


@njit(**JIT)
def _forward_row(t, n, fused, gates, rec, R, b, b_hn, h, hn, y, lengths):
    """Step t of batch row n.

    gates: (T, B, 3H) holds x @ W on entry, the post-activation (r, z, n) on exit
    rec: (B, 3H) h[t] @ R, computed here for row n when fused   h: (T+1, B, H)
    hn: (T, B, H) receives h[t] @ R_n + b_hn, the part that r gates   y: (T, B, H)
    """
    H = h.shape[2]
    g, r = gates[t, n], rec[n]
    if fused:
        row_times(h[t, n], R, r)
    hp, hnew_row, hnn, yn = h[t, n], h[t + 1, n], hn[t, n], y[t, n]
    sigmoid_of_sum(g, r, b, 0, 2 * H)
    for j in range(H):
        hnn[j] = r[2 * H + j] + b_hn[j]
    for j in range(H):
        g[2 * H + j] = fast_tanh(g[2 * H + j] + b[2 * H + j] + g[j] * hnn[j])
    one = g.dtype.type(1)
    for j in range(H):
        z = g[H + j]
        hnew_row[j] = (one - z) * g[2 * H + j] + z * hp[j]
    if t < lengths[n]:
        yn[:] = hnew_row
    else:
        hnew_row[:] = hp
        yn[:] = 0


@njit(parallel=True, **JIT)
def _forward_rows_parallel(t, fused, gates, rec, R, b, b_hn, h, hn, y, lengths):
    for n in prange(gates.shape[1]):
        _forward_row(t, n, fused, gates, rec, R, b, b_hn, h, hn, y, lengths)


@njit(**JIT)
def gru_forward(x, h0, W, R, b, b_hn, lengths, fused, parallel):
    """x: (T, B, I)   h0: (B, H)   W: (I, 3H)   R: (H, 3H)   b: (3H,)   b_hn: (H,)

    Returns y: (T, B, H), h: (T+1, B, H) (h[t] enters step t),
    gates: (T, B, 3H) post-activation, hn: (T, B, H).
    """
    T, B, I = x.shape
    H = R.shape[0]
    gates = np.empty((T, B, 3 * H), x.dtype)
    np.dot(x.reshape(T * B, I), W, out=gates.reshape(T * B, 3 * H))
    h = np.empty((T + 1, B, H), x.dtype)
    h[0] = h0
    hn = np.empty((T, B, H), x.dtype)
    y = np.empty((T, B, H), x.dtype)
    rec = np.empty((B, 3 * H), x.dtype)
    for t in range(T):
        if not fused:
            np.dot(h[t], R, out=rec)
        if parallel:
            _forward_rows_parallel(t, fused, gates, rec, R, b, b_hn, h, hn, y, lengths)
        else:
            for n in range(B):
                _forward_row(t, n, fused, gates, rec, R, b, b_hn, h, hn, y, lengths)
    return y, h, gates, hn


@njit(**JIT)
def _backward_row(t, n, fused, dy, dh, dgx, dgh, dhr, gates, h, hn, R, lengths):
    """Step t of batch row n, backwards.

    dh: (B, H) gradient w.r.t. h[t+1] on entry, w.r.t. h[t] minus the recurrent part
    on exit (plus that part, dgh[t, n] @ R.T, when fused).
    dgx: (T, B, 3H) gradient of x @ W + b   dgh: (T, B, 3H) gradient of h @ R
    """
    H = dh.shape[1]
    g, dx_, dh_ = gates[t, n], dgx[t, n], dgh[t, n]
    dyn, dhn, hp, hnn = dy[t, n], dh[n], h[t, n], hn[t, n]
    active = t < lengths[n]
    zero, one = g.dtype.type(0), g.dtype.type(1)
    for j in range(H):
        rr, z, nn = g[j], g[H + j], g[2 * H + j]
        dh_new = dyn[j] + dhn[j] if active else zero
        dn = dh_new * (one - z) * (one - nn * nn)
        dr = dn * hnn[j] * rr * (one - rr)
        dz = dh_new * (hp[j] - nn) * z * (one - z)
        dx_[j], dx_[H + j], dx_[2 * H + j] = dr, dz, dn
        dh_[j], dh_[H + j], dh_[2 * H + j] = dr, dz, dn * rr
        dhn[j] = dh_new * z if active else dhn[j]
    if fused:
        row_times_t(dh_, R, dhr[n])
        for j in range(H):
            dhn[j] += dhr[n, j]


@njit(parallel=True, **JIT)
def _backward_rows_parallel(t, fused, dy, dh, dgx, dgh, dhr, gates, h, hn, R, lengths):
    for n in prange(dh.shape[0]):
        _backward_row(t, n, fused, dy, dh, dgx, dgh, dhr, gates, h, hn, R, lengths)


@njit(**JIT)
def gru_backward(dy, dhT, x, W, R, h, gates, hn, lengths, fused, parallel):
    """dy: (T, B, H)   dhT: (B, H)   the rest as ``gru_forward`` returned them.

    Returns dx: (T, B, I), dh0: (B, H), dW: (I, 3H), dR: (H, 3H), db: (3H,),
    db_hn: (H,), dgx, dgh: (T, B, 3H).
    """
    T, B, H = dy.shape
    dh = dhT.copy()
    dgx = np.empty((T, B, 3 * H), dy.dtype)
    dgh = np.empty((T, B, 3 * H), dy.dtype)
    dhr = np.empty((B, H), dy.dtype)
    for t in range(T - 1, -1, -1):
        if parallel:
            _backward_rows_parallel(t, fused, dy, dh, dgx, dgh, dhr, gates, h, hn, R, lengths)
        else:
            for n in range(B):
                _backward_row(t, n, fused, dy, dh, dgx, dgh, dhr, gates, h, hn, R, lengths)
        if not fused:
            np.dot(dgh[t], R.T, out=dhr)
            add_into(dh, dhr)
    dx, dW, dR, db = weight_grads(x, W, h, dgx, dgh)
    # b_hn sits inside r * (...), so its gradient is the candidate part of dgh
    db_hn = np.zeros(H, np.float64)
    for t in range(T):
        for n in range(B):
            for j in range(H):
                db_hn[j] += dgh[t, n, 2 * H + j]
    return dx, dh, dW, dR, db, db_hn.astype(dy.dtype), dgx, dgh
