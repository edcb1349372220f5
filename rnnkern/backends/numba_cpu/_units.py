"""A lone row's step with its pre-activations in registers, unit block by unit block (lone-row).

Why: with one row (B = 1, the streaming shapes) a step is a product of a single row of
H by R and a few short pointwise passes, and every rows-packed step sent the gate pre-activations
through memory between them: the product wrote them, the activations read them back,
the cell update read them a third time. At B1 T1000 I8 H32 the LSTM forward spent 0.18
us a step in the product (512 vector multiply-adds, ~0.1 us at this core's rate), 0.08 in
the activations and 0.14 in the rest (the input projection over all steps, the cell
update), measured on one Zen 4 core with AVX2. Here a step makes, for each block of
units in turn, all the pre-activations of those units (every gate) as ``SLOT_VECTORS``
vector accumulators over W and R packed once per call by unit blocks (``pack_units``):
x[t] @ W in the step from W's rows in the pack where I is small, else from one
projection of all steps before the loop (``input_units``), then h @ R. The cell's
activations and state update work on those registers: nothing of a step goes through
memory but the new state. The same forward took 0.32 against rows-packed's 0.43 ms (LSTM B1 T1000
I8 H32; benchmarks/README.md has the rest).

The accumulators are 8 vectors, the most AVX2's 16 registers hold beside a broadcast and
the loads of Q (the row tiles of ``_simd`` keep 12 because they reuse each load of R for
6 rows; a lone row has nothing to reuse). A cell lays them out as ``slots`` (its gates,
a GRU's new-gate input and recurrent parts apart) of ``SLOT_VECTORS // slots`` vectors
each: an LSTM block is 2 vectors of units, 16 float32 units on AVX2.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._common import JIT, empty
from ._simd import _pack_serial, product, product_work
from ._vec import lanes, vbcast, vfma, vload, vstore, vstore_first

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
    step instead, the cache cost a third of a step more at B1 H32 (LSTM 0.08 us of 0.40,
    GRU 0.15 of 0.33, RNN 0.06 of 0.16)."""
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
    product(x.reshape(N, I), Wu, _pack_serial(Wu), gx.reshape(N, NG), 0, N, False,
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
