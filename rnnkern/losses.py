"""Losses: ``(y, target, mask) -> (value, dy)``, the mean squared error built in.

``mse`` is DESIGN.md's: the mean of the squared error over the selected steps
and all output features, ``sum(mask[t, b] * sum_f (y - target)^2) / (sum(mask) * F)``.
A user loss is any callable with the same signature; ``mask`` always reaches it as
a resolved ``(T, B)`` array of the model's dtype (ones where nothing was chosen).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._validate import array_module

LossFn = Callable[[Any, Any, Any], tuple[float, Any]]


def mse(y: Any, target: Any, mask: Any) -> tuple[float, Any]:
    """y, target: (T, B, F), mask: (T, B) weights -> (loss, dy: (T, B, F))."""
    xp = array_module(y=y, target=target, mask=mask)
    n = mask.sum() * y.shape[2]
    if float(n) == 0:
        raise ValueError("mask: selects no step at all; the loss would be 0/0")
    err = (y - target) * mask[:, :, None]
    value = float(xp.sum(err * err) / n)
    return value, (2 / n) * err


LOSSES: dict[str, LossFn] = {"mse": mse}


def get(loss: str | LossFn) -> LossFn:
    """The loss function for a name ("mse") or a callable."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {', '.join(map(repr, LOSSES))} or a callable "
                         f"(y, target, mask) -> (value, dy), got {loss!r}")
    return LOSSES[loss]


def resolve_mask(mask: Any, lengths: Any, T: int, B: int, dtype: Any, xp: Any) -> Any:
    """The (T, B) weights a loss sees: ``mask`` ((T, B), (T, 1) or None: every step)
    broadcast over the batch, with the padding steps of ``lengths`` zeroed."""
    if mask is None:
        m = xp.ones((T, B), dtype)
    else:
        shape = tuple(getattr(mask, "shape", ()))
        if shape not in ((T, B), (T, 1)):
            raise ValueError(f"mask: expected shape (T={T}, B={B}) or (T={T}, 1), "
                             f"got {shape if shape else type(mask).__name__}")
        m = xp.broadcast_to(xp.asarray(mask, dtype=dtype), (T, B))
    if lengths is not None:
        m = m * (xp.arange(T)[:, None] < xp.asarray(lengths)[None, :])
    return m
