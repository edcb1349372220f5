"""Losses: ``(y, target, mask) -> (value, dy)``, the mean squared error built in.

``mse`` is DESIGN.md's: the mean of the squared error over the selected steps
and all output features, ``sum(mask[t, b] * sum_f (y - target)^2) / (sum(mask) * F)``.
A user loss is any callable with the same signature; ``mask`` always reaches it as
a resolved ``(T, B)`` array of the model's dtype (ones where nothing was chosen).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._validate import array_module, check_array, check_choice, check_finite, from_list

LossFn = Callable[[Any, Any, Any], tuple[float, Any]]


def mse(y: Any, target: Any, mask: Any) -> tuple[float, Any]:
    """y, target: (T, B, F), mask: (T, B) weights -> (loss, dy: (T, B, F))."""
    xp = array_module(y=y, target=target, mask=mask)
    check_array("y", y, (("T", None), ("B", None), ("F", None)), contiguous=False)
    T, B, F = y.shape
    check_array("target", target, (("T", T), ("B", B), ("F", F)), y.dtype, contiguous=False)
    check_array("mask", mask, (("T", T), ("B", B)), contiguous=False)
    n = mask.sum() * F
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
    if not isinstance(loss, str):
        raise TypeError(f"loss: expected a name ({', '.join(map(repr, LOSSES))}) or a callable "
                        f"(y, target, mask) -> (value, dy), got {type(loss).__name__}")
    check_choice("loss", loss, tuple(LOSSES))
    return LOSSES[loss]


def apply(loss_fn: LossFn, y: Any, target: Any, mask: Any) -> tuple[float, Any]:
    """``loss_fn(y, target, mask)`` with its result checked: a user's callable must
    return a real number and dy of y's shape and dtype (a wrong dy would broadcast)."""
    out = loss_fn(y, target, mask)
    if not isinstance(out, tuple) or len(out) != 2:
        raise TypeError(f"loss: the callable must return (value, dy), got {type(out).__name__}")
    value, dy = out
    try:
        value = float(value)
    except (TypeError, ValueError) as e:
        raise TypeError(f"loss: the callable's value must be a real number, "
                        f"got {type(value).__name__}") from e
    array_module(y=y, dy=dy)
    check_array("loss", dy, tuple(zip(("T", "B", "F"), y.shape)), y.dtype, contiguous=False)
    return value, dy


def resolve_mask(mask: Any, lengths: Any, T: int, B: int, dtype: Any, xp: Any) -> Any:
    """The (T, B) weights a loss sees: ``mask`` ((T, B), (T, 1) or None: every step)
    broadcast over the batch, with the padding steps of ``lengths`` zeroed.

    mask: bool, integer or float weights >= 0 (a list is converted once); one that
    selects no step at all (after ``lengths``) is refused: the loss would be 0/0.
    """
    if mask is None:
        m = xp.ones((T, B), dtype)
    else:
        if isinstance(mask, (list, tuple)):
            mask = from_list("mask", mask, dtype)
        if not (hasattr(mask, "shape") and hasattr(mask, "dtype")):
            raise TypeError(f"mask: expected an array of shape (T={T}, B={B}) or (T={T}, 1), "
                            f"got {type(mask).__name__}")
        array_module(x=xp.empty(0), mask=mask)
        if tuple(mask.shape) not in ((T, B), (T, 1)):
            raise ValueError(f"mask: expected shape (T={T}, B={B}) or (T={T}, 1), "
                             f"got shape {tuple(mask.shape)}")
        if mask.dtype.kind not in "biuf":
            raise ValueError(f"mask: expected bool, integer or float weights, got dtype "
                             f"{mask.dtype}")
        check_finite("mask", mask)
        if bool((mask < 0).any()):
            raise ValueError(f"mask: expected weights >= 0, got a minimum of {mask.min()}")
        m = xp.broadcast_to(xp.asarray(mask, dtype=dtype), (T, B))
    if lengths is not None:
        m = m * (xp.arange(T)[:, None] < xp.asarray(lengths)[None, :])
    if not bool(m.any()):
        raise ValueError("mask: selects no step at all (after the padding of lengths is "
                         "left out); the loss would be 0/0")
    return m
