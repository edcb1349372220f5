"""One thread pool in charge: NumPy's BLAS held to one thread while a model runs on Numba.

A model on the numba backend computes its recurrent layers on Numba's thread pool, and its
Dense layers, losses and optimiser through NumPy, whose OpenBLAS starts a pool of its own
for every product above a small size. Those workers spin for a while after each call and
take the cores from Numba's threads, and Numba's take them from OpenBLAS's: the two pools
fight (measured: the long GRU workload of ``rnnkern bench train`` 24 ms a step with both,
3.4 ms with NumPy's BLAS on one thread). So every entry point of the model layer
(``fit``, ``value_and_grad``, ``evaluate``, ``generate``, calling a model) holds NumPy's
BLAS to one thread for as long as it runs, through threadpoolctl, and restores it after.

The BLAS that the kernels themselves call (SciPy's, behind Numba's ``np.dot``) is left to
``backends.numba_cpu._blas``, which picks its thread count per call by shape. Models on
other backends change nothing: the NumPy oracle has no other pool to fight, and CuPy's
arrays are not NumPy's.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_blas: list[Any] | None = None  # threadpoolctl's controllers of NumPy's BLAS
_depth = 0  # entry points running now (nested calls hold nothing more)


def _numpy_blas() -> list[Any]:
    """threadpoolctl's controllers of every BLAS but SciPy's own copy (the kernels')."""
    global _blas
    if _blas is None:
        import scipy

        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # a dependency left out by hand: only speed is lost
            _blas = []
            return _blas
        scipy_libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)),
                                  "scipy.libs")
        _blas = [c for c in ThreadpoolController().select(user_api="blas").lib_controllers
                 if not c.filepath.startswith(scipy_libs)]
    return _blas


#: multiply-adds of a product below which OpenBLAS runs one thread anyway (its
#: ``GEMM_MULTITHREAD_THRESHOLD`` times 65536): no hold is needed under it
SINGLE_THREAD_MACS = 1 << 18


def on_numba(model: Any) -> bool:
    """Whether any layer of ``model`` computes on the numba backend."""
    if getattr(model, "backend", None) == "numba":
        return True
    return any(on_numba(layer) for layer in getattr(model, "layers", ()))


def _widest(model: Any) -> int:
    """The largest in x out of the model's layers: a bound on its products' MACs per row."""
    own = (getattr(model, "in_features", 0) or 0) * (getattr(model, "out_features", 0) or 0)
    return max([own, *(_widest(layer) for layer in getattr(model, "layers", ()))])


def _small(model: Any, x: Any) -> bool:
    """Whether every product of ``model`` over ``x`` stays under ``SINGLE_THREAD_MACS``."""
    shape = getattr(x, "shape", None)
    if not shape or len(shape) < 2:
        return False
    return shape[0] * shape[1] * _widest(model) < SINGLE_THREAD_MACS


@contextmanager
def held(model: Any, x: Any = None) -> Iterator[None]:
    """Hold NumPy's BLAS to one thread while the body runs ``model`` on ``x`` (numba
    backend only; nested holds, and inputs too small for BLAS threads, change nothing:
    setting a thread count and back costs ~20 us, a tiny model's whole call)."""
    global _depth
    if _depth or not on_numba(model) or _small(model, x):
        _depth += 1
        try:
            yield
        finally:
            _depth -= 1
        return
    libs = _numpy_blas()
    before = [c.get_num_threads() for c in libs]
    _depth += 1
    try:
        for c, n in zip(libs, before):
            if n != 1:
                c.set_num_threads(1)
        yield
    finally:
        _depth -= 1
        for c, n in zip(libs, before):
            if n != 1:
                c.set_num_threads(n)


def one_pool(fn: F) -> F:
    """Decorate a model-layer entry point ``fn(model, x, ...)``: see ``held``."""

    @functools.wraps(fn)
    def wrapper(model: Any, *args: Any, **kwargs: Any) -> Any:
        with held(model, args[0] if args else None):
            return fn(model, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
