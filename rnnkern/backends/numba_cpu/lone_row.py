"""The lone-row schedule (``plan.VARIANTS``): the forward kernels of the three cells for
a lone row (B = 1), each step's pre-activations in registers, unit block by unit block,
and the pieces they share. Its backward is a rows schedule's (``plan.PACKED_LONE_ROW_H``).

Why: with one row (the streaming shapes) a step is a product of a single row of H by R
and a few short pointwise passes, and every rows-packed step sent the gate
pre-activations through memory between them: the product wrote them, the activations
read them back, the cell update read them a third time, and those passes together took
longer than the product. Here a step makes, for each block of units in turn, all the
pre-activations of those units (every gate) as ``SLOT_VECTORS`` vector accumulators over
W and R packed once per call by unit blocks (``pack_units``): x[t] @ W in the step from
W's rows in the pack where I is small, else from one projection of all steps before the
loop (``input_units``), then h @ R. The cell's activations and state update work on
those registers: nothing of a step goes through memory but the new state (LSTM B1 T1000
I8 H32 forward 413 -> 312 us; benchmarks/README.md, "Design notes", a lone row in
registers).

The accumulators are 8 vectors, the most AVX2's 16 registers hold beside a broadcast and
the loads of Q (the row tiles of ``_simd`` keep 12 because they reuse each load of R for
6 rows; a lone row has nothing to reuse). A cell lays them out as ``slots`` (its gates,
a GRU's new-gate input and recurrent parts apart) of ``SLOT_VECTORS // slots`` vectors
each: an LSTM block is 2 vectors of units, 16 float32 units on AVX2.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._jit import JIT
from ._memory import empty, states
from ._simd import pack_serial, product, product_work
from ._vec import lanes, vbcast, vfma, vload, vstore, vstore_first
from .cells import activate, gru_step, lstm_step

#: vector accumulators of one unit block's pre-activations
SLOT_VECTORS = 8


@njit(**JIT)
def block_units(like, slots):
    """Units in one block of a cell with ``slots`` slots (``like``'s dtype sets the lanes)."""
    return SLOT_VECTORS // slots * lanes(like)


@njit(**JIT)
def pack_units(W, R, bias, wslot, rslot, in_step):
    """W, R and the biases by unit blocks, the order ``unit_block`` reads them.

    W: (I, G*H)   R: (H, G*H)   bias: (S, H) each slot's bias
    wslot, rslot: (S,) the gate of W, of R, that each slot sums (-1: none, zeros)
    in_step: W goes into Q, its I rows before R's (each step makes its own x[t] @ W),
    else into Wu (for ``input_projection`` of all steps before the loop)
    Returns Wu: (I, U*S*BU) or (I, 0), Q: (U, xi + H, S, BU) (xi = I or 0, as in_step),
    bq: (U, S, BU) with Wu[k, (u*S + s)*BU + j] or Q[u, k, s, j] = W[k, wslot[s]*H + unit],
    Q[u, xi + k, s, j] = R[k, rslot[s]*H + unit], bq[u, s, j] = bias[s, unit] for
    unit = u*BU + j, where BU = ``block_units`` and U = ceil(H / BU): the units past H are
    zero (their state stays zero, and no block reads it).
    """
    I, H = W.shape[0], R.shape[0]
    S = bias.shape[0]
    BU = block_units(W, S)
    U = (H + BU - 1) // BU
    xi = I if in_step else 0
    Wu = np.zeros((I, 0 if in_step else U * S * BU), W.dtype)
    Q = np.zeros((U, xi + H, S, BU), W.dtype)
    bq = np.zeros((U, S, BU), W.dtype)
    # rows outermost: W and R read along their rows, each block's units written in runs
    for s in range(S):
        for u in range(U):
            for j in range(min(BU, H - u * BU)):
                bq[u, s, j] = bias[s, u * BU + j]
    for k in range(I):
        for s in range(S):
            if wslot[s] >= 0:
                for u in range(U):
                    for j in range(min(BU, H - u * BU)):
                        w = W[k, wslot[s] * H + u * BU + j]
                        if in_step:
                            Q[u, k, s, j] = w
                        else:
                            Wu[k, (u * S + s) * BU + j] = w
    for k in range(H):
        for s in range(S):
            if rslot[s] >= 0:
                for u in range(U):
                    for j in range(min(BU, H - u * BU)):
                        Q[u, xi + k, s, j] = R[k, rslot[s] * H + u * BU + j]
    return Wu, Q, bq


@njit(**JIT)
def _fma8(e, Q, r, L, a0, a1, a2, a3, a4, a5, a6, a7):
    """a_v += e * Q.flat[r + v*L : r + (v+1)*L] for the 8 accumulators."""
    return (vfma(e, vload(Q, r), a0), vfma(e, vload(Q, r + L), a1),
            vfma(e, vload(Q, r + 2 * L), a2), vfma(e, vload(Q, r + 3 * L), a3),
            vfma(e, vload(Q, r + 4 * L), a4), vfma(e, vload(Q, r + 5 * L), a5),
            vfma(e, vload(Q, r + 6 * L), a6), vfma(e, vload(Q, r + 7 * L), a7))


@njit(**JIT)
def _start(bq, o, gx, go):
    """An accumulator's first value: the bias bq.flat[o:], plus gx.flat[go + o:] where the
    input part came from ``input_projection`` (gx not empty)."""
    v = vload(bq, o)
    return v + vload(gx, go + o) if gx.size else v


@njit(**JIT)
def unit_block(Q, bq, u, x, xo, gx, go, h, ho):
    """Block u's pre-activations for one row, as ``SLOT_VECTORS`` vectors in the order of
    Q's last two axes (slot by slot): bq[u] + x @ Q[u, :xi] + h @ Q[u, xi:] where the
    step makes its input part (xi = I), else bq[u] + gx's block u + h @ Q[u].

    Q, bq: ``pack_units``   x: the row's I inputs at x.flat[xo:]   gx: (T, B, U*S*BU) its
    x[t] @ Wu at gx.flat[go:], or empty   h: its states at h.flat[ho:] (C-contiguous)
    The inputs come first: they do not depend on the previous step, so the core can start
    on them while that step's last units are still being made.
    """
    K, L = Q.shape[1], lanes(x)
    W8 = SLOT_VECTORS * L
    xi = 0 if gx.size else x.shape[-1]
    o, q = u * W8, u * K * W8
    a0, a1, a2, a3 = _start(bq, o, gx, go), _start(bq, o + L, gx, go), \
        _start(bq, o + 2 * L, gx, go), _start(bq, o + 3 * L, gx, go)
    a4, a5, a6, a7 = _start(bq, o + 4 * L, gx, go), _start(bq, o + 5 * L, gx, go), \
        _start(bq, o + 6 * L, gx, go), _start(bq, o + 7 * L, gx, go)
    for k in range(xi):
        a0, a1, a2, a3, a4, a5, a6, a7 = _fma8(vbcast(x, xo + k), Q, q + k * W8, L,
                                               a0, a1, a2, a3, a4, a5, a6, a7)
    for k in range(xi, K):
        a0, a1, a2, a3, a4, a5, a6, a7 = _fma8(vbcast(h, ho + k - xi), Q, q + k * W8, L,
                                               a0, a1, a2, a3, a4, a5, a6, a7)
    return a0, a1, a2, a3, a4, a5, a6, a7


@njit(**JIT)
def end_step(ring, s, s1, yn, active):
    """After step t of one row, which entered with its states at ring[s:] and left its new
    ones at ring[s1:] (a ring slot each, h first, as long as |s1 - s|): yn = y[t, n], the
    new h of an active step; an inactive one (t >= lengths[n]) keeps the states it entered
    with and outputs zeros."""
    H = yn.shape[0]
    if active:
        for j in range(H):
            yn[j] = ring[s1 + j]
    else:
        for j in range(abs(s1 - s)):
            ring[s1 + j] = ring[s + j]
        for j in range(H):
            yn[j] = 0


@njit(**JIT)
def store_vector(a, o, H, k, v):
    """a.flat[o + k : o + H] = v's first H - k lanes: one vector of a unit block (units k
    onwards) into a cache row of H units, from the registers; nothing of a vector past H
    (the padded units, whose values are not the cell's). Copied from the work after each
    step instead, the cache cost a third of a step more at B1 H32."""
    if k + lanes(a) <= H:
        vstore(a, o + k, v)
    elif k < H:
        vstore_first(a, o + k, v, H - k)


@njit(**JIT)
def store_pairs(a, o, H, j, pairs):
    """``store_vector`` of a unit block's pair of vectors of each gate q (units j onwards)
    into a cache row with one block of H units per gate: the q-th pair at a.flat[o + q*H
    + j :]."""
    L = lanes(a)
    for q, (v0, v1) in enumerate(pairs):
        store_vector(a, o + q * H, H, j, v0)
        store_vector(a, o + q * H, H, j + L, v1)


@njit(**JIT)
def carry_state(ring, o, dst, do, H):
    """dst.flat[do : do + H] = ring[o : o + H]: a row's state from its padded work into the
    cache or the final state, where it was not stored from the registers (the states an
    inactive step carries, hT, cT)."""
    for j in range(H):
        dst[do + j] = ring[o + j]


@njit(**JIT)
def input_units(x, Wu):
    """gx for ``unit_block``: x: (T, B, I) @ Wu for every step, (T, B, U*S*BU), on the
    packed product, serially; empty where Wu is (the steps make their input part from Q).

    Serially, as one row's input part is small, and because a kernel that calls a
    parallel function (``pack``, ``_simd.input_projection``'s row blocks) and is compiled
    where that function came from Numba's cache could not be loaded from the cache itself
    in a process whose thread pool had not started: it crashed (reproduced with the lone-row
    LSTM: one process ran rows-packed, the next compiled lone-row, the third segfaulted at its first
    call; ``test_numba.test_lone_row_kernel_from_cache``)."""
    T, B, I = x.shape
    N, NG = T * B, Wu.shape[1]
    if NG == 0:
        return np.empty((0, 0, 0), x.dtype)
    gx = empty((T, B, NG), x)
    product(x.reshape(N, I), Wu, pack_serial(Wu), gx.reshape(N, NG), 0, N, False,
            product_work(N, I, NG, x, True))
    return gx


@njit(**JIT)
def prepare_units(x, W, R, bias, wslot, rslot, in_step):
    """A lone-row forward's set-up: ``pack_units`` (same arguments) and ``input_units``.

    x: (T, B, I)   Returns Q, bq, gx (``unit_block``'s arguments), U: blocks, BU: units
    per block, Hp = U * BU: H rounded up to whole blocks.
    """
    Wu, Q, bq = pack_units(W, R, bias, wslot, rslot, in_step)
    U, BU = Q.shape[0], Q.shape[3]
    return Q, bq, input_units(x, Wu), U, BU, U * BU


# ----------------------------------------------------------------------------
# Elman RNN


#: W's and R's one gate in the RNN's one slot
_RNN_SLOTS = np.zeros(1, np.int64)


@njit(**JIT)
def rnn_forward(x, h0, W, R, b, code, lengths, in_step, keep):
    """lone-row: ``rnn.rnn_forward`` one row at a time, each step's pre-activations in
    registers a block of units at a time (one slot of 8 vectors), then their activation.
    Same arguments (less the plan's) and returns; without keep the cache's arrays are
    empty.

    Work, flat, Hp = H rounded up to whole blocks: ring: (2, Hp) the row's h entering and
    leaving a step. With keep, a step's cache (the post-activation, its new h) goes from
    the registers into its rows, up to unit H.
    """
    T, B, I = x.shape
    H = R.shape[0]
    L = lanes(x)
    Q, bq, gx, U, BU, Hp = prepare_units(x, W, R, b.reshape(1, H), _RNN_SLOTS, _RNN_SLOTS,
                                         in_step)
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
                    w = activate(v, code)
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



# ----------------------------------------------------------------------------
# LSTM


#: the gate of W and of R in each of the LSTM's slots: i, f, g, o
_LSTM_SLOTS = np.arange(4)


@njit(**JIT)
def lstm_forward(x, h0, c0, W, R, b, lengths, in_step, keep):
    """lone-row: ``lstm.lstm_forward`` one row at a time, each step's pre-activations in
    registers a block of units at a time, then that block's activations and cell update
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
    Q, bq, gx, U, BU, Hp = prepare_units(x, W, R, b.reshape(4, H), _LSTM_SLOTS, _LSTM_SLOTS,
                                         in_step)
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
                j = u * BU
                i0, f0, g0, o0, c_0, tc0, h_0 = lstm_step(i0, f0, g0, o0, vload(ring, s + Hp + j))
                i1, f1, g1, o1, c_1, tc1, h_1 = lstm_step(i1, f1, g1, o1,
                                                          vload(ring, s + Hp + j + L))
                vstore(ring, s1 + j, h_0)
                vstore(ring, s1 + j + L, h_1)
                vstore(ring, s1 + Hp + j, c_0)
                vstore(ring, s1 + Hp + j + L, c_1)
                if keep:
                    store_pairs(gf, row * 4 * H, H, j, ((i0, i1), (f0, f1), (g0, g1), (o0, o1)))
                    store_pairs(tf, row * H, H, j, ((tc0, tc1),))
                    store_pairs(hf, so, H, j, ((h_0, h_1),))
                    store_pairs(cf, so, H, j, ((c_0, c_1),))
            active = t < lengths[n]
            end_step(ring, s, s1, y[t, n], active)
            if keep and not active:  # the states an inactive step carries
                carry_state(ring, s1, hf, so, H)
                carry_state(ring, s1 + Hp, cf, so, H)
        carry_state(ring, T % 2 * 2 * Hp, hT[n], 0, H)
        carry_state(ring, T % 2 * 2 * Hp + Hp, cT[n], 0, H)
    return y, h, c, gates, tanh_c, hT, cT



# ----------------------------------------------------------------------------
# GRU


#: the gate of W and of R in each of the GRU's slots: r, z, and n apart, its input part
#: (x W_n + b_n) in slot 2, its recurrent part (h R_n + b_hn, which r gates) in slot 3
_GRU_W_SLOTS = np.array([0, 1, 2, -1])
_GRU_R_SLOTS = np.array([0, 1, -1, 2])


@njit(**JIT)
def gru_forward(x, h0, W, R, b, b_hn, lengths, in_step, keep):
    """lone-row: ``gru.gru_forward`` one row at a time, each step's pre-activations in
    registers a block of units at a time (slot 2 of R and slot 3 of W are zeros, a quarter
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
    Q, bq, gx, U, BU, Hp = prepare_units(x, W, R, bias, _GRU_W_SLOTS, _GRU_R_SLOTS, in_step)
    nk = T if keep else 0
    h = states(h0, nk)
    gates, hn = empty((nk, B, 3 * H), x), empty((nk, B, H), x)
    y, hT = empty((T, B, H), x), empty((B, H), x)
    ring = np.zeros(2 * Hp, x.dtype)
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
                j = u * BU
                r0, z0, n0, h_0 = gru_step(r0, z0, nx0, nh0, vload(ring, s + j))
                r1, z1, n1, h_1 = gru_step(r1, z1, nx1, nh1, vload(ring, s + j + L))
                vstore(ring, s1 + j, h_0)
                vstore(ring, s1 + j + L, h_1)
                if keep:
                    store_pairs(gf, row * 3 * H, H, j, ((r0, r1), (z0, z1), (n0, n1)))
                    store_pairs(nf, row * H, H, j, ((nh0, nh1),))
                    store_pairs(hf, (row + B) * H, H, j, ((h_0, h_1),))
            active = t < lengths[n]
            end_step(ring, s, s1, y[t, n], active)
            if keep and not active:  # the state an inactive step carries
                carry_state(ring, s1, hf, (row + B) * H, H)
        carry_state(ring, T % 2 * Hp, hT[n], 0, H)
    return y, h, gates, hn, hT

