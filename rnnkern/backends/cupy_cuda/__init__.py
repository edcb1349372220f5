"""CuPy CUDA backend: the kernel contract of DESIGN.md on the GPU.

CUDA C kernels (``kernels/*.cu``, templated over float/double) are compiled with NVRTC
through ``cupy.RawModule``; cuBLAS (through CuPy) does the big GEMMs. Three kernel variants,
listed in ``VARIANTS``: "cublas-steps" (cuBLAS + one fused pointwise kernel per step),
"fused-steps" (for small shapes: one kernel per step doing the recurrent product and the
pointwise step, the loop replayed as a CUDA graph) and "persistent" (one cooperative launch
for the whole time loop, R on chip). Every function takes
``variant=None`` (chosen by shape, see ``variants.choose_variant``) or a variant's name.

CuPy is optional: this module imports without it, and ``is_available()`` is True only
when CuPy imports and a CUDA device answers. Arrays must all be CuPy arrays; NumPy input
raises ValueError instead of being copied to the device.

A forward with ``training=False`` returns None for its cache, but its kernels still write
every step's arrays (the Numba kernels keep one step's instead): doing the same here needs
the ``.cu`` step kernels to index a ring, left until a GPU can check and time it.
"""

from __future__ import annotations

from typing import Any

from ..numpy_ref import dense_backward, dense_forward
from .embedding import embedding_backward, embedding_forward
from .gru import gru_backward, gru_forward
from .lstm import lstm_backward, lstm_forward
from .rnn import rnn_backward, rnn_forward
from .variants import VARIANTS


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError:
        return None
    return cupy


xp = _import_cupy()  # the array module this backend computes with (None without CuPy)


def is_available() -> bool:
    """True when CuPy imports and at least one CUDA device answers."""
    if xp is None:
        return False
    try:
        return xp.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no driver, no device, or a driver too old for this CuPy
        return False


__all__ = ["VARIANTS", "dense_backward", "dense_forward", "embedding_backward",
           "embedding_forward", "gru_backward",
           "gru_forward", "is_available", "lstm_backward", "lstm_forward", "rnn_backward",
           "rnn_forward", "xp"]
