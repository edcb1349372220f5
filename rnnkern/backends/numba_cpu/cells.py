"""The pointwise math of one step of each cell, forward and backward, written once for
every Numba schedule (rows, batch-inner, lone-row), as ``cupy_cuda/kernels/cells.cuh`` is
for every CUDA variant.

Each function takes scalars or ``_vec.Vec`` values alike (the activations of
``_activations`` take both) and returns values, so a schedule applies it to one unit or to
one vector of units, wherever its data lies. Names are those of ``numpy_ref``; inputs are
pre-activations, outputs post-activation, and every derivative is taken from an output
(``sigmoid' = s (1 - s)``, ``tanh' = 1 - t^2``), as the caches keep them.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from ._activations import fast_sigmoid, fast_tanh
from ._jit import FASTMATH
from ._vec import Vec, maximum, vfma, where_positive

#: inlined into each kernel (Numba's IR inlining, so that no call is left in a step's loop;
#: a call with vector arguments and results goes through memory), where it takes the
#: kernel's fastmath flags
CELL_JIT = {"inline": "always", "fastmath": FASTMATH, "error_model": "numpy"}

#: activations by code: the RNN's (``_validate.ACTIVATION_CODES``), then the Dense layer's
#: sigmoid (``dense.ACTIVATIONS``)
TANH, RELU, IDENTITY, SIGMOID = 0, 1, 2, 3


def one(v):
    """1 in v's element type (a Python 1 would make a float32 expression float64)."""


def zero(v):
    """0 in v's element type."""


def _constant(value):
    def ol(v):
        dtype = v.dtype if isinstance(v, Vec) else v
        if not isinstance(dtype, types.Float):
            return None
        c = np.float32(value) if dtype == types.float32 else np.float64(value)
        return lambda v: c
    return ol


overload(one, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})(_constant(1))
overload(zero, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})(_constant(0))


# ----------------------------------------------------------------------------
# Activations: the Elman RNN's step, h = act(x W + h R + b), and the Dense layer's


@njit(**CELL_JIT)
def activate(v, code):
    """act(v) by code; a NaN passes the ReLU, as in np.maximum."""
    if code == TANH:
        return fast_tanh(v)
    if code == RELU:
        return maximum(zero(v), v)  # zero first: a NaN in v comes out
    if code == SIGMOID:
        return fast_sigmoid(v)
    return v


@njit(**CELL_JIT)
def activation_grad(dh, a, code):
    """dL/dv from dh = dL/d act(v) (for the RNN, dy added) and the output a = act(v)."""
    if code == TANH:
        return dh * (one(a) - a * a)
    if code == RELU:
        return _relu_grad(dh, a)
    if code == SIGMOID:
        return dh * a * (one(a) - a)
    return dh


def _relu_grad(dh, a):
    """dh where a > 0, else 0."""


@overload(_relu_grad, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ol_relu_grad(dh, a):
    if isinstance(a, Vec):
        return lambda dh, a: where_positive(a, dh)
    return lambda dh, a: dh if a > 0 else zero(dh)


# ----------------------------------------------------------------------------
# LSTM, gates (i, f, g, o): c = f c_prev + i g,  h = o tanh(c)


@njit(**CELL_JIT)
def lstm_step(i, f, g, o, c_prev):
    """Pre-activations (i, f, g, o) and c_prev -> (i, f, g, o) activated, c, tanh(c), h."""
    i, f, g, o = fast_sigmoid(i), fast_sigmoid(f), fast_tanh(g), fast_sigmoid(o)
    # the one product that is fused written out: left to the optimiser, which of the two it
    # fuses changed with the caller a kernel was optimised in, and with it the bits of c
    c = vfma(f, c_prev, i * g)
    tanh_c = fast_tanh(c)
    return i, f, g, o, c, tanh_c, o * tanh_c


@njit(**CELL_JIT)
def lstm_step_backward(dh, dc, i, f, g, o, c_prev, tanh_c):
    """dh = dL/dh (dy added), dc = dL/dc from the step after, the forward's gates, c_prev
    and tanh(c) -> dL/d pre-activation of (i, f, g, o), and dL/dc_prev."""
    u = one(i)
    dc = dc + dh * o * (u - tanh_c * tanh_c)
    return (dc * g * i * (u - i), dc * c_prev * f * (u - f), dc * i * (u - g * g),
            dh * tanh_c * o * (u - o), dc * f)


# ----------------------------------------------------------------------------
# GRU, gates (r, z, n), PyTorch's form: n = tanh(x W_n + b_n + r (h R_n + b_hn)),
# h = (1 - z) n + z h_prev


@njit(**CELL_JIT)
def gru_step(r, z, xn, hn, h_prev):
    """Pre-activations r, z; xn = x W_n + b_n; hn = h_prev R_n + b_hn -> (r, z, n)
    activated and h."""
    r, z = fast_sigmoid(r), fast_sigmoid(z)
    n = fast_tanh(xn + r * hn)
    return r, z, n, vfma(one(z) - z, n, z * h_prev)  # which product is fused: see lstm_step


@njit(**CELL_JIT)
def gru_step_backward(dh, r, z, n, hn, h_prev):
    """dh = dL/dh (dy added), the forward's gates, hn and h_prev -> dL/d pre-activation of
    r, z and of x W_n + b_n (dn; that of hn is dn * r), and the part of dL/dh_prev that
    bypasses R (dh z)."""
    u = one(z)
    dn = dh * (u - z) * (u - n * n)
    return dn * hn * r * (u - r), dh * (h_prev - n) * z * (u - z), dn, dh * z

