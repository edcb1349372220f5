"""Device checks of the CuPy backend on top of rnnkern._validate."""

from __future__ import annotations

from ..._validate import Dims


def require_device(d: Dims) -> None:
    """Refuse host arrays: the CuPy backend computes on cupy arrays and never copies."""
    if d.xp.__name__ != "cupy":
        raise ValueError(
            "x: is a numpy (CPU) array but the 'cupy' backend computes on cupy (GPU) arrays; "
            "move the data with cupy.asarray(...) (rnnkern never copies between host and "
            "device silently)")
