"""Backend registry: ``get(name)`` returns a module implementing the kernel contract.

Every backend module exposes the same functions (see DESIGN.md, "Kernel layer"):
``rnn_forward/backward``, ``lstm_forward/backward``, ``gru_forward/backward`` and
``is_available()``. Backends are imported lazily so that a missing optional
dependency (CuPy, a GPU) only matters to whoever asks for that backend.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: name -> module path; later backends join by adding a line here
REGISTRY = {
    "numpy": "rnnkern.backends.numpy_ref",
    "numba": "rnnkern.backends.numba_cpu",
    "cupy": "rnnkern.backends.cupy_cuda",
}

_default: str | None = None


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(REGISTRY[name])
    except ImportError:
        return None


def available() -> list[str]:
    """Names of the backends usable here, in registry order."""
    out = []
    for name in REGISTRY:
        mod = _load(name)
        if mod is not None and mod.is_available():
            out.append(name)
    return out


def get(name: str | None = None) -> ModuleType:
    """The backend module called ``name`` ("numpy" | "numba" | "cupy"); None: the default."""
    if name is None:
        name = default()
    if name not in REGISTRY:
        raise ValueError(
            f"backend: expected one of {', '.join(map(repr, REGISTRY))}, got {name!r}")
    mod = _load(name)
    if mod is None or not mod.is_available():
        raise ValueError(
            f"backend: {name!r} is not available here "
            f"(available: {', '.join(available())})")
    return mod


def default() -> str:
    """The default backend: the one set by ``set_default``, else the fastest available CPU one."""
    if _default is not None:
        return _default
    return "numba" if "numba" in available() else "numpy"


def set_default(name: str | None) -> None:
    """Make ``name`` the backend that layers use when given ``backend=None`` (None: automatic)."""
    global _default
    if name is not None:
        get(name)
    _default = name
