"""Fast activations of the Numba kernels, specialised per dtype at compile time.

float64 calls libm (``math.tanh``/``math.exp``), which keeps parity with the float64
oracle at round-off level. float32 uses a branch-free rational approximation of tanh
(Eigen's ``generic_fast_tanh_float``, max error a few ulp) that LLVM vectorises: there is
no SVML here, and a libm call per element would keep the pointwise pass scalar.
``sigmoid(v) = (1 + tanh(v / 2)) / 2``. Each takes a scalar or a ``_vec.Vec``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import types
from numba.extending import overload

from ._jit import FASTMATH
from ._vec import Vec, maximum, minimum, vexp_libm, vtanh_libm

_F = np.float32
_TANH_CLAMP = _F(7.90531110763549805)
_A1, _A3, _A5, _A7 = _F(4.89352455891786e-03), _F(6.37261928875436e-04), \
    _F(1.48572235717979e-05), _F(5.12229709037114e-08)
_A9, _A11, _A13 = _F(-8.60467152213735e-11), _F(2.00018790482477e-13), \
    _F(-2.76076847742355e-16)
_B0, _B2, _B4, _B6 = _F(4.89352518554385e-03), _F(2.26843463243900e-03), \
    _F(1.18534705686654e-04), _F(1.19825839466702e-06)
_HALF = _F(0.5)


def _tanh32(v):
    # odd rational p(v)/q(v^2) on the clamped input; tanh is +-1 in float32 beyond the clamp.
    # The clamp's bound comes first: a NaN v loses every comparison and so passes through,
    # where v first would have turned it into the bound (tanh(NaN) = 1, a diverged model
    # looking healthy)
    v = maximum(-_TANH_CLAMP, minimum(_TANH_CLAMP, v))
    v2 = v * v
    p = v2 * _A13 + _A11
    p = v2 * p + _A9
    p = v2 * p + _A7
    p = v2 * p + _A5
    p = v2 * p + _A3
    p = v2 * p + _A1
    q = v2 * _B6 + _B4
    q = v2 * q + _B2
    q = v2 * q + _B0
    return v * p / q


def fast_tanh(v):
    """tanh of a scalar or a ``Vec``: libm in float64, the vectorisable rational form in
    float32."""
    return math.tanh(v)


def fast_sigmoid(v):
    """The logistic function of a scalar or a ``Vec``, by the same per-dtype rule as
    ``fast_tanh``."""
    return 1.0 / (1.0 + math.exp(-v))


@overload(fast_tanh, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ol_tanh(v):
    if v == types.float32 or (isinstance(v, Vec) and v.dtype == types.float32):
        return _tanh32
    if isinstance(v, Vec):
        return lambda v: vtanh_libm(v)
    return lambda v: math.tanh(v)


@overload(fast_sigmoid, jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ol_sigmoid(v):
    if v == types.float32 or (isinstance(v, Vec) and v.dtype == types.float32):
        return lambda v: _HALF + _HALF * fast_tanh(_HALF * v)
    # exp(-v) overflows to inf for v < -709 and 1 / inf is the right 0
    if isinstance(v, Vec):
        return lambda v: 1.0 / (1.0 + vexp_libm(-v))
    return lambda v: 1.0 / (1.0 + math.exp(-v))
