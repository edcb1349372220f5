"""The optimiser's update as one compiled pass over every parameter (host arrays).

An Adam step in NumPy makes about ten passes over every parameter, with a temporary each,
plus two more for the global norm; for a small model its ~100 calls cost more than the
model's own forward and backward. ``adam`` does the norm, the clipping, the finiteness
check and the update of all parameters in one call, over flat buffers:

    g: (N,)  every gradient, end to end in the optimiser's order (``gather``)
    p: (N,)  the parameters, the same way (the live arrays, or a copy written back)
    m, v: (N,)  Adam's moments
    new_p: (N,)  scratch for the new parameters while every update is checked

Serial on purpose: the same bits on any thread count, and the update is memory-bound.
Every loop is free of branches and of calls that would keep LLVM from vectorising it; the
sums run in a fixed order, so the bits do not depend on the vector width either.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from ._compiling import announce

JIT = {"cache": True, "nogil": True, "error_model": "numpy"}

announce()

#: what ``adam`` returns besides the norm: every update written, or why nothing was
OK, NONFINITE_NORM = -1, -2


#: independent partial sums of the norm, added at the end: one running sum waits on the
#: latency of each float64 add
_PARTIALS = 16


@njit(**JIT)
def _sum_squares(g):
    partial = np.zeros(_PARTIALS)
    n = g.size // _PARTIALS * _PARTIALS
    for i in range(0, n, _PARTIALS):
        for j in range(_PARTIALS):
            partial[j] += float(g[i + j]) * float(g[i + j])
    total = 0.0
    for j in range(_PARTIALS):
        total += partial[j]
    for i in range(n, g.size):
        total += float(g[i]) * float(g[i])
    return total


@njit(inline="always")
def _moments(g, m, v, scale, b1, b2):
    """One element's new (m, v), in float64."""
    g = g * scale
    return b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g


@njit(inline="always")
def _adam_one(p, g, m, v, scale, lr_t, b1, b2, eps, bc2):
    """One element's new (m, v, p), in float64."""
    m, v = _moments(g, m, v, scale, b1, b2)
    return m, v, p - lr_t * (m / (math.sqrt(v) / bc2 + eps))


@njit(**JIT)
def adam(p, g, m, v, lr, b1, b2, eps, t, clip, starts, new_p):
    """Adam at step ``t`` with global-norm clipping to ``clip`` (0: none), in place.

    starts: (n + 1,) int64, where each parameter begins in the flat buffers (and N).
    Returns (the gradients' global norm, status): status is OK when every update was
    written, NONFINITE_NORM when the norm is NaN or inf, else the index of the first
    parameter whose update is not finite in p's dtype; then nothing is written.
    The first pass makes every new value (the square root and division: most of the
    cost) and keeps the parameters' in new_p; the second, once all are finite, writes them
    with the moments made again (the same bits: the same operations in the same order).
    """
    norm = math.sqrt(_sum_squares(g))
    if not math.isfinite(norm):
        return norm, NONFINITE_NORM
    scale = clip / norm if clip > 0 and norm > clip else 1.0
    lr_t = lr / (1 - b1**t)
    bc2 = math.sqrt(1 - b2**t)
    fmax = np.finfo(p.dtype).max
    ok = True
    for i in range(p.size):  # all updates checked before any is written
        mi, vi, new_p[i] = _adam_one(float(p[i]), float(g[i]), float(m[i]), float(v[i]),
                                     scale, lr_t, b1, b2, eps, bc2)
        ok &= (abs(mi) <= fmax) & (vi <= fmax) & (abs(float(new_p[i])) <= fmax)
    if not ok:
        return norm, _first_nonfinite(p, g, m, v, scale, lr_t, b1, b2, eps, bc2, starts)
    for i in range(p.size):
        m[i], v[i] = _moments(float(g[i]), float(m[i]), float(v[i]), scale, b1, b2)
        p[i] = new_p[i]
    return norm, OK


@njit(**JIT)
def _first_nonfinite(p, g, m, v, scale, lr_t, b1, b2, eps, bc2, starts):
    """The index of the first parameter with an update that is not finite in p's dtype."""
    fmax = np.finfo(p.dtype).max
    k = 0
    for i in range(p.size):
        while i >= starts[k + 1]:
            k += 1
        mi, vi, pi = _adam_one(float(p[i]), float(g[i]), float(m[i]), float(v[i]),
                               scale, lr_t, b1, b2, eps, bc2)
        if not (abs(mi) <= fmax and vi <= fmax and abs(pi) <= fmax):
            return k
    return k  # not reached: the caller found one
