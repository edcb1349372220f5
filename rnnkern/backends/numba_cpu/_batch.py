"""Pieces of the batch-inner forward and backward kernels: every step's work laid out as
(unit, batch row), so that it vectorises over the batch when H is tiny (a row of H=3
units is shorter than one vector).

Why the rows are padded and the work is on explicit vectors: with rows of B=16 elements,
loops over ``range(B)`` ran at a fixed ~5-10 ns each whatever B (LLVM's runtime overlap
checks, a vector body that wants 32 elements, the scalar remainder), and a step of the
LSTM made ~80 of them (~0.5 us per step at B=8 and at B=16, measured). Here every
workspace is (rows, Bp) with Bp a multiple of the vector width, and the products and the
pointwise pass run on ``_vec.Vec`` values over whole vectors of batch rows. The states'
padding lanes are kept at zero (``commit``), so the other padding lanes hold activations
of the biases alone, finite, and every gradient's padding lanes are exact zeros; only the
transposes into the (T, B, .) results stay scalar.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._common import JIT, empty
from ._vec import lanes, vbcast, vfma, vload, vstore, vsum, vzero


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
    batch-inner cache live in one buffer (each array a kernel returns costs ~0.3 us to hand to
    Python, a tenth of a forward at B16 T10 H3)."""
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
# backward


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
