"""The OpenBLAS behind the kernels' ``np.dot``, and how many threads it may use per call.

Numba's ``np.dot`` calls SciPy's BLAS (``scipy.linalg.cython_blas``), which is SciPy's own
OpenBLAS build. By default OpenBLAS splits every GEMM above ~2.6e5 multiply-adds over all
cores, and its worker threads spin after each call, against the kernel's own loops and,
on a machine whose cores are busy with anything else, against the other processes (a
kernel call could take 10-40x longer).

The kernels call BLAS only for the products over all steps (the input projection, the
weight gradients), and each call holds OpenBLAS to one thread around them where they are
big enough to be split into row blocks over Numba's threads instead (``numba_cpu``'s
``_blas_threads``). ``blas_threads`` applies that for the duration of the call and
restores the previous count when it ends, also on an exception. The count it changes is
that of SciPy's OpenBLAS, which is process-wide in the pthreads build SciPy ships
(``openblas_set_num_threads_local`` is per-thread only in OpenMP builds): another Python
thread calling SciPy's BLAS *during* a kernel call runs single-threaded too. NumPy's
separate OpenBLAS and the environment (``OPENBLAS_NUM_THREADS``) are untouched, and
kernels that make no BLAS call change nothing. Where the functions are missing (a BLAS
other than OpenBLAS), nothing is changed.
"""

from __future__ import annotations

import ctypes
import glob
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


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
