"""Argument checks shared by every backend and layer.

Everything public validates here before any kernel runs, so that a wrong shape
becomes a ``ValueError`` naming the argument (what was received, what was
expected) instead of a crash or an out-of-bounds access inside a compiled kernel.
A wrong *type* (not an array at all) is a ``TypeError``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

#: gates per cell: the G in W: (I, G*H)
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
RNN_ACTIVATIONS = ("tanh", "relu", "identity")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Dims(NamedTuple):
    """Sizes of one recurrent call, read off validated arguments."""

    T: int
    B: int
    I: int  # noqa: E741 - the contract's name for the input width
    H: int
    dtype: np.dtype
    xp: Any  # the array module: numpy or cupy


def _is_cupy(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def array_module(**arrays: Any) -> Any:
    """Return numpy or cupy for the given arrays; refuse a mix of both.

    None values are ignored. Raises ValueError naming the odd argument out, since
    rnnkern never copies between host and device behind the user's back.
    """
    kinds = {name: _is_cupy(a) for name, a in arrays.items() if a is not None}
    if not kinds:
        return np
    if len(set(kinds.values())) > 1:
        first = next(iter(kinds))
        odd = next(n for n, k in kinds.items() if k != kinds[first])

        def where(n: str) -> str:
            return "a cupy (GPU) array" if kinds[n] else "a numpy (CPU) array"

        raise ValueError(
            f"{odd}: is {where(odd)} but {first} is {where(first)}; put every array on "
            "the same device (rnnkern never copies between host and device silently)"
        )
    if any(kinds.values()):
        import cupy

        return cupy
    return np


def _spec(dims: tuple[tuple[str, int | None], ...]) -> str:
    parts = [label if want is None else f"{label}={want}" for label, want in dims]
    return "(" + ", ".join(parts) + ")" if len(parts) != 1 else "(" + parts[0] + ",)"


def check_array(
    name: str,
    a: Any,
    dims: tuple[tuple[str, int | None], ...],
    dtype: np.dtype | None = None,
    contiguous: bool = True,
) -> Any:
    """Check that ``a`` is a float32/float64 array of the shape ``dims`` describes.

    dims: one ``(label, size)`` per axis; ``size=None`` leaves that axis free
    (but still >= 1). dtype: the dtype ``a`` must share (that of ``x``), or None.
    """
    spec = _spec(dims)
    if not (hasattr(a, "shape") and hasattr(a, "dtype") and hasattr(a, "flags")):
        raise TypeError(f"{name}: expected an array of shape {spec}, got {type(a).__name__}")
    if a.ndim != len(dims):
        raise ValueError(
            f"{name}: expected a {len(dims)}-d array of shape {spec}, got shape {tuple(a.shape)}"
        )
    for (_, want), got in zip(dims, a.shape):
        if (want is not None and got != want) or got < 1:
            raise ValueError(
                f"{name}: expected shape {spec} (every size >= 1), got shape {tuple(a.shape)}"
            )
    if a.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise ValueError(
            f"{name}: dtype {a.dtype} does not match x's dtype {dtype}; "
            "every array of one call must share a dtype"
        )
    if contiguous and not a.flags.c_contiguous:
        raise ValueError(
            f"{name}: expected a C-contiguous array of shape {spec}, got a strided view; "
            "pass np.ascontiguousarray(...) (rnnkern never copies silently)"
        )
    return a


def check_lengths(lengths: Any, T: int, B: int, xp: Any) -> Any:
    """Validate ``lengths: (B,)`` integer with ``1 <= lengths[b] <= T``; None passes.

    Lists and tuples are accepted and converted once (to ``xp``'s int64).
    """
    if lengths is None:
        return None
    if isinstance(lengths, (list, tuple)):
        lengths = xp.asarray(lengths)
        if lengths.dtype.kind == "f":
            raise ValueError(
                f"lengths: expected integers of shape (B={B},), got floats {lengths.tolist()}"
            )
    if not (hasattr(lengths, "shape") and hasattr(lengths, "dtype")):
        raise TypeError(f"lengths: expected an integer array of shape (B={B},), "
                        f"got {type(lengths).__name__}")
    if lengths.dtype.kind not in "iu":
        raise ValueError(
            f"lengths: expected an integer array of shape (B={B},), got dtype {lengths.dtype}"
        )
    if lengths.shape != (B,):
        raise ValueError(f"lengths: expected shape (B={B},), got shape {tuple(lengths.shape)}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > T:
        raise ValueError(f"lengths: expected values in [1, T={T}], got values in [{lo}, {hi}]")
    return lengths


def check_activation(activation: Any) -> str:
    if activation not in RNN_ACTIVATIONS:
        raise ValueError(
            f"activation: expected one of {', '.join(map(repr, RNN_ACTIVATIONS))}, "
            f"got {activation!r}"
        )
    return activation


def check_forward(
    cell: str,
    x: Any,
    h0: Any,
    c0: Any,
    W: Any,
    R: Any,
    b: Any,
    b_hn: Any = None,
    lengths: Any = None,
    contiguous: bool = True,
) -> tuple[Dims, Any]:
    """Validate the arguments of ``<cell>_forward``; return ``(dims, lengths)``.

    x: (T, B, I)   W: (I, G*H)   R: (H, G*H)   b: (G*H,)   b_hn: (H,) GRU only
    h0, c0: (B, H) or None   lengths: (B,) int or None
    """
    G = GATES[cell]
    xp = array_module(x=x, h0=h0, c0=c0, W=W, R=R, b=b, b_hn=b_hn,
                      lengths=None if isinstance(lengths, (list, tuple)) else lengths)
    check_array("x", x, (("T", None), ("B", None), ("I", None)), contiguous=contiguous)
    T, B, I = x.shape
    dtype = x.dtype
    if not (hasattr(R, "shape") and getattr(R, "ndim", 0) == 2):
        check_array("R", R, (("H", None), ("G*H", None)), dtype, contiguous)
    H = R.shape[0]
    check_array("R", R, (("H", H), (f"{G}*H", G * H)), dtype, contiguous)
    check_array("W", W, (("I", I), (f"{G}*H", G * H)), dtype, contiguous)
    check_array("b", b, ((f"{G}*H", G * H),), dtype, contiguous)
    if cell == "gru":
        check_array("b_hn", b_hn, (("H", H),), dtype, contiguous)
    if h0 is not None:
        check_array("h0", h0, (("B", B), ("H", H)), dtype, contiguous)
    if c0 is not None:
        check_array("c0", c0, (("B", B), ("H", H)), dtype, contiguous)
    lengths = check_lengths(lengths, T, B, xp)
    return Dims(T, B, I, H, dtype, xp), lengths


def check_backward(d: Dims, contiguous: bool = True, **grads_in: Any) -> None:
    """Validate output gradients against the forward's sizes: dy: (T, B, H), the rest (B, H)."""
    xp = array_module(**grads_in)
    if grads_in and xp is not d.xp and any(v is not None for v in grads_in.values()):
        name = next(n for n, v in grads_in.items() if v is not None)
        raise ValueError(
            f"{name}: is on a different device than the forward pass's arrays; "
            "rnnkern never copies between host and device silently"
        )
    for name, a in grads_in.items():
        if a is None:
            continue
        dims = (("T", d.T), ("B", d.B), ("H", d.H)) if name == "dy" else (("B", d.B), ("H", d.H))
        check_array(name, a, dims, d.dtype, contiguous)
