"""Layout helpers: rnnkern is time-major, ``(T, B, F)``; data often is not.

- ``from_batch_first`` / ``to_batch_first``: (B, T, F), the PyTorch ``batch_first``
  and Keras layout;
- ``from_flux`` / ``to_flux``: (F, T, B), the layout of Flux.jl's recurrent
  layers (features first, column-major thinking);
- ``from_sequences`` / ``to_sequences``: a list of variable-length sequences,
  each (T_b, F) or (T_b,), padded into (T, B, F) plus ``lengths: (B,)``;
- ``last_step``: each row's output at its last true step, (B, F), the
  sequence-to-one reading of an output (``y[-1]`` is zero for rows shorter than T).

Every ``from_`` returns a new C-contiguous array (the layout the kernels need);
the dtype is kept unless ``dtype`` is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._validate import array_module, check_lengths, from_list
from .layers import check_dtype


def _rank3(name: str, a: Any, spec: str) -> Any:
    """``a`` as a 3-d array of real numbers (a nested list is converted once)."""
    if isinstance(a, (list, tuple)):
        a = from_list(name, a, None)
    if not (hasattr(a, "ndim") and hasattr(a, "dtype")):
        raise TypeError(f"{name}: expected an array of shape {spec}, got {type(a).__name__}")
    if a.ndim != 3:
        raise ValueError(f"{name}: expected a 3-d array of shape {spec}, "
                         f"got shape {tuple(a.shape)}")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"{name}: expected real numbers, got dtype {a.dtype}")
    return a


def _contiguous(a: Any, dtype: Any) -> Any:
    return array_module(a=a).ascontiguousarray(a, dtype=None if dtype is None
                                               else check_dtype(dtype))


def from_batch_first(x: Any, dtype: Any = None) -> Any:
    """x: (B, T, F) -> (T, B, F) C-contiguous."""
    return _contiguous(_rank3("x", x, "(B, T, F)").transpose(1, 0, 2), dtype)


def to_batch_first(y: Any) -> Any:
    """y: (T, B, F) -> (B, T, F) C-contiguous."""
    return _contiguous(_rank3("y", y, "(T, B, F)").transpose(1, 0, 2), None)


def from_flux(x: Any, dtype: Any = None) -> Any:
    """x: (F, T, B), Flux's recurrent layout -> (T, B, F) C-contiguous."""
    return _contiguous(_rank3("x", x, "(F, T, B)").transpose(1, 2, 0), dtype)


def to_flux(y: Any) -> Any:
    """y: (T, B, F) -> (F, T, B) C-contiguous."""
    return _contiguous(_rank3("y", y, "(T, B, F)").transpose(2, 0, 1), None)


def from_sequences(seqs: Sequence[Any], dtype: Any = "float32", pad: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A list of B sequences, each (T_b, F) or (T_b,) (F = 1) -> (x, lengths).

    x: (T, B, F) with T = max T_b, rows padded with ``pad`` after their end;
    lengths: (B,) int64 true lengths (pass both to the model, the loss and fit).
    """
    if isinstance(seqs, (np.ndarray, str)) or not isinstance(seqs, Sequence):
        raise TypeError("seqs: expected a non-empty list of sequences (T_b, F) or (T_b,), "
                        f"got {type(seqs).__name__}")
    if not seqs:
        raise ValueError("seqs: expected a non-empty list of sequences (T_b, F) or (T_b,), "
                         "got an empty list")
    dtype = check_dtype(dtype)
    if isinstance(pad, bool) or not isinstance(pad, (int, float, np.integer, np.floating)):
        raise TypeError(f"pad: expected a number, got {type(pad).__name__}")
    arrays = []
    for b, seq in enumerate(seqs):
        a = from_list(f"seqs[{b}]", seq, None) if isinstance(seq, (list, tuple)) else seq
        if not (hasattr(a, "ndim") and hasattr(a, "dtype")):
            raise TypeError(f"seqs[{b}]: expected an array (T_b, F) or (T_b,), "
                            f"got {type(seq).__name__}")
        if a.dtype.kind not in "biuf":
            raise ValueError(f"seqs[{b}]: expected real numbers, got dtype {a.dtype}")
        arrays.append(np.asarray(a))
    arrays = [a[:, None] if a.ndim == 1 else a for a in arrays]
    F = arrays[0].shape[1] if arrays[0].ndim == 2 else None
    for b, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] != F:
            raise ValueError(f"seqs[{b}]: expected shape (T_b >= 1, F={F}) or (T_b,), "
                             f"got shape {np.shape(seqs[b])}")
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    x = np.full((int(lengths.max()), len(arrays), F), pad, dtype=dtype)  # type: ignore[arg-type]
    for b, a in enumerate(arrays):
        x[: len(a), b] = a
    return x, lengths


def to_sequences(y: Any, lengths: Any = None) -> list[Any]:
    """y: (T, B, F) and lengths: (B,) -> a list of B arrays (lengths[b], F), copies."""
    _rank3("y", y, "(T, B, F)")
    T, B = y.shape[:2]
    lengths = check_lengths(lengths, T, B, array_module(y=y))
    return [y[: T if lengths is None else int(lengths[b]), b].copy() for b in range(B)]


def last_step(y: Any, lengths: Any = None) -> Any:
    """y: (T, B, F) and lengths: (B,) or None -> (B, F), row b's output at its last true
    step ``lengths[b] - 1`` (step T-1 for every row without ``lengths``), a copy.

    Outputs past a row's end are zero, so ``y[-1]`` reads zeros for the rows shorter
    than T; this is the value a sequence-to-one model predicts (and a ``(B, O)`` target
    of ``fit``/``evaluate``/``value_and_grad`` is compared with).
    """
    _rank3("y", y, "(T, B, F)")
    T, B = y.shape[:2]
    xp = array_module(y=y, lengths=None if isinstance(lengths, (list, tuple)) else lengths)
    lengths = check_lengths(lengths, T, B, xp)
    if lengths is None:
        return y[T - 1].copy()
    return y[xp.asarray(lengths) - 1, xp.arange(B)]
