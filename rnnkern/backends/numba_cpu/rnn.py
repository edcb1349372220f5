"""Numba Elman RNN kernels, mirroring ``numpy_ref.rnn_forward`` / ``rnn_backward``.

h_t = act(x_t @ W + h_{t-1} @ R + b), act by integer code: 0 tanh, 1 relu, 2 identity
(the branch sits outside each element loop so that the loop vectorises).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._common import JIT, add_into, fast_tanh, row_times, row_times_t, weight_grads


@njit(**JIT)
def _forward_row(t, n, fused, code, a, rec, R, b, h, y, lengths):
    """Step t of batch row n.

    a: (T, B, H) holds x @ W on entry and the post-activation on exit
    rec: (B, H) h[t] @ R, computed here for row n when fused   h: (T+1, B, H)   y: (T, B, H)
    """
    H = h.shape[2]
    an, r = a[t, n], rec[n]
    if fused:
        row_times(h[t, n], R, r)
    zero = an.dtype.type(0)
    if code == 0:
        for j in range(H):
            an[j] = fast_tanh(an[j] + r[j] + b[j])
    elif code == 1:
        for j in range(H):
            v = an[j] + r[j] + b[j]
            an[j] = v if v > zero else zero
    else:
        for j in range(H):
            an[j] = an[j] + r[j] + b[j]
    hp, hn, yn = h[t, n], h[t + 1, n], y[t, n]
    if t < lengths[n]:
        hn[:] = an
        yn[:] = an
    else:
        hn[:] = hp
        yn[:] = zero


@njit(parallel=True, **JIT)
def _forward_rows_parallel(t, fused, code, a, rec, R, b, h, y, lengths):
    for n in prange(a.shape[1]):
        _forward_row(t, n, fused, code, a, rec, R, b, h, y, lengths)


@njit(**JIT)
def rnn_forward(x, h0, W, R, b, code, lengths, fused, parallel):
    """x: (T, B, I)   h0: (B, H)   W: (I, H)   R: (H, H)   b: (H,)   lengths: (B,)

    Returns y: (T, B, H), h: (T+1, B, H) (h[t] enters step t), a: (T, B, H) post-activation.
    """
    T, B, I = x.shape
    H = R.shape[0]
    a = np.empty((T, B, H), x.dtype)
    np.dot(x.reshape(T * B, I), W, out=a.reshape(T * B, H))
    h = np.empty((T + 1, B, H), x.dtype)
    h[0] = h0
    y = np.empty((T, B, H), x.dtype)
    rec = np.empty((B, H), x.dtype)
    for t in range(T):
        if not fused:
            np.dot(h[t], R, out=rec)
        if parallel:
            _forward_rows_parallel(t, fused, code, a, rec, R, b, h, y, lengths)
        else:
            for n in range(B):
                _forward_row(t, n, fused, code, a, rec, R, b, h, y, lengths)
    return y, h, a


@njit(**JIT)
def _backward_row(t, n, fused, code, dy, dh, da, dhr, a, R, lengths):
    """Step t of batch row n, backwards.

    dh: (B, H) gradient w.r.t. h[t+1] on entry; on exit what is carried past an
    inactive row, plus (fused) da[t, n] @ R.T.   da: (T, B, H)   dhr: (B, H) workspace
    """
    H = dh.shape[1]
    an, dan, dyn, dhn = a[t, n], da[t, n], dy[t, n], dh[n]
    zero, one = an.dtype.type(0), an.dtype.type(1)
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
        dhn[:] = zero
    else:
        dan[:] = zero
    if fused:
        row_times_t(dan, R, dhr[n])
        for j in range(H):
            dhn[j] += dhr[n, j]


@njit(parallel=True, **JIT)
def _backward_rows_parallel(t, fused, code, dy, dh, da, dhr, a, R, lengths):
    for n in prange(dh.shape[0]):
        _backward_row(t, n, fused, code, dy, dh, da, dhr, a, R, lengths)


@njit(**JIT)
def rnn_backward(dy, dhT, x, W, R, h, a, code, lengths, fused, parallel):
    """dy: (T, B, H)   dhT: (B, H)   the rest as ``rnn_forward`` returned them.

    Returns dx: (T, B, I), dh0: (B, H), dW: (I, H), dR: (H, H), db: (H,),
    da: (T, B, H) pre-activation gradients.
    """
    T, B, H = dy.shape
    dh = dhT.copy()
    da = np.empty((T, B, H), dy.dtype)
    dhr = np.empty((B, H), dy.dtype)
    for t in range(T - 1, -1, -1):
        if parallel:
            _backward_rows_parallel(t, fused, code, dy, dh, da, dhr, a, R, lengths)
        else:
            for n in range(B):
                _backward_row(t, n, fused, code, dy, dh, da, dhr, a, R, lengths)
        if not fused:
            np.dot(da[t], R.T, out=dhr)
            add_into(dh, dhr)
    dx, dW, dR, db = weight_grads(x, W, h, da, da)
    return dx, dh, dW, dR, db, da
