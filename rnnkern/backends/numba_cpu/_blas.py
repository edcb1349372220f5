"""The OpenBLAS behind the kernels' ``np.dot``, and how many threads it may use per call.

Numba's ``np.dot`` calls SciPy's BLAS (``scipy.linalg.cython_blas``), which is SciPy's own
OpenBLAS build. By default OpenBLAS splits every GEMM above ~2.6e5 multiply-adds over all
cores, and its worker threads spin after each call. Inside a time loop that issues one
mid-sized GEMM per step, those threads spin against the kernel's own pointwise pass and,
on a machine whose cores are busy with anything else, the call can take 10-40x longer
(measured: an LSTM call at T=9 B=16 H=32 I=32, 8 ms instead of 0.2 ms).

So each kernel call decides its BLAS thread count from its shape (``threads_for``): one
thread unless the per-step product is large enough for threads to pay, in which case
OpenBLAS keeps its own setting. ``blas_threads`` applies the choice for the duration of
the call and restores the previous count when it ends, also on an exception. The count
it changes is that of SciPy's OpenBLAS, which is process-wide in the pthreads build SciPy
ships (``openblas_set_num_threads_local`` is per-thread only in OpenMP builds): another
Python thread calling SciPy's BLAS *during* a kernel call runs single-threaded too.
NumPy's separate OpenBLAS and the environment (``OPENBLAS_NUM_THREADS``) are untouched,
and kernels that make no BLAS call (the fused ones at small sizes) change nothing.
Where the functions are missing (a BLAS other than OpenBLAS), nothing is changed.
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: multiply-adds of the per-step product from which OpenBLAS's threads pay on 2 cores
#: (measured: 64x256 @ 256x1024, 1.7e7, runs 1.3x faster on 2 threads; 32x64 @ 64x256,
#: 5.2e5, 1.4x slower)
THREADED_MIN_MACS = 1 << 22


def scipy_openblas() -> list[Any]:
    """ctypes handles of the OpenBLAS libraries SciPy ships (the one Numba's np.dot uses)."""
    import scipy

    root = os.path.dirname(os.path.dirname(scipy.__file__))
    return [ctypes.CDLL(p) for p in
            sorted(glob.glob(os.path.join(root, "scipy.libs", "*openblas*.so*")))]


def _thread_count_functions() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """(get, set) of SciPy's OpenBLAS thread count, or None without an OpenBLAS."""
    for lib in scipy_openblas():
        for prefix in ("scipy_openblas", "openblas"):
            get = getattr(lib, f"{prefix}_get_num_threads", None)
            set_ = getattr(lib, f"{prefix}_set_num_threads", None)
            if get is not None and set_ is not None:
                get.restype = ctypes.c_int
                return get, set_
    return None


_COUNT = _thread_count_functions()


def threads_for(step_macs: int) -> int:
    """0 (keep OpenBLAS's own setting) for a large per-step product, else 1."""
    return 0 if step_macs >= THREADED_MIN_MACS else 1


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Run the body with SciPy's OpenBLAS limited to ``n`` threads (``n == 0``: as it
    is), then restore the previous count."""
    if n == 0 or _COUNT is None:
        yield
        return
    get, set_ = _COUNT
    prev = get()
    if prev == n:
        yield
        return
    set_(n)
    try:
        yield
    finally:
        set_(prev)
