"""Loss masks: which steps of which rows count in the loss.

A mask is ``(T, B)`` (one flag per step and row) or ``(T, 1)`` (the same steps
for every row, so one mask serves batches of any size). The helpers return bool
NumPy arrays; the loss combines them with ``lengths`` so that padding never counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validate import check_int, check_lengths, from_list


def _steps(T: int, lengths: Any) -> tuple[np.ndarray, np.ndarray | None]:
    T = check_int("T", T, 1)
    if lengths is not None:
        if isinstance(lengths, (list, tuple)):
            lengths = from_list("lengths", lengths, None)
        if not hasattr(lengths, "shape"):
            raise TypeError(f"lengths: expected an integer array of shape (B,), "
                            f"got {type(lengths).__name__}")
        if len(lengths.shape) != 1:
            raise ValueError(f"lengths: expected shape (B,), got shape {tuple(lengths.shape)}")
        lengths = check_lengths(lengths, T, lengths.shape[0], np)
    return np.arange(T)[:, None], lengths


def all_steps(T: int, lengths: Any = None) -> np.ndarray:
    """Sequence-to-sequence: every step; with ``lengths: (B,)`` every true step.

    Returns (T, 1) bool, or (T, B) with lengths.
    """
    t, lengths = _steps(T, lengths)
    if lengths is None:
        return np.ones((T, 1), dtype=bool)
    return t < lengths[None, :]


def last_step(T: int, lengths: Any = None) -> np.ndarray:
    """Sequence-to-one: the last true step of each row (step T-1 without ``lengths``).

    Returns (T, 1) bool, or (T, B) with lengths.
    """
    t, lengths = _steps(T, lengths)
    if lengths is None:
        return t == T - 1
    return t == lengths[None, :] - 1


def from_step(k: int, T: int, lengths: Any = None) -> np.ndarray:
    """Warm up, then predict: every step ``t >= k`` (and ``t < lengths[b]``).

    Returns (T, 1) bool, or (T, B) with lengths.
    """
    t, lengths = _steps(T, lengths)
    k = check_int("k", k, 0, T - 1)
    if lengths is None:
        return t >= k
    return (t >= k) & (t < lengths[None, :])
