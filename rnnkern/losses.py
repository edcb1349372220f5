"""Losses: ``(y, target, mask) -> (value, dy)``: the mean squared error and
cross-entropy built in; metrics: ``(y, target, mask) -> value`` (accuracy).

``mse`` is DESIGN.md's: the mean of the squared error over the selected steps
and all output features, ``sum(mask[t, b] * sum_f (y - target)^2) / (sum(mask) * F)``.
``cross_entropy`` takes logits ``y: (T, B, C)`` against class ids ``(T, B)`` or
probabilities ``(T, B, C)``; ``CrossEntropy(label_smoothing=0.1)`` is the same loss
with PyTorch's label smoothing. A user loss is any callable with the same signature;
``mask`` always reaches it as a resolved ``(T, B)`` array of the model's dtype (ones
where nothing was chosen).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ._validate import (
    array_module,
    check_array,
    check_choice,
    check_finite,
    check_ids,
    from_list,
)

LossFn = Callable[[Any, Any, Any], tuple[float, Any]]


def mse(y: Any, target: Any, mask: Any) -> tuple[float, Any]:
    """y, target: (T, B, F), mask: (T, B) weights -> (loss, dy: (T, B, F))."""
    xp = array_module(y=y, target=target, mask=mask)
    check_array("y", y, (("T", None), ("B", None), ("F", None)), contiguous=False)
    T, B, F = y.shape
    if getattr(target, "dtype", np.dtype(float)).kind in "iub":
        raise ValueError(f"target: mse takes values (T, B, F) of y's dtype, got integer class "
                         f"ids of dtype {target.dtype} (their loss is loss='cross_entropy')")
    check_array("target", target, (("T", T), ("B", B), ("F", F)), y.dtype, contiguous=False)
    check_array("mask", mask, (("T", T), ("B", B)), contiguous=False)
    n = mask.sum() * F
    if float(n) == 0:
        raise ValueError("mask: selects no step at all; the loss would be 0/0")
    err = (y - target) * mask[:, :, None]
    value = float(xp.sum(err * err) / n)
    return value, (2 / n) * err


def check_classes(name: str, target: Any, T: int, B: int, C: int, dtype: Any) -> Any:
    """A class target as the loss takes it: integer ids (T, B) in [0, C) (kept as given),
    or probabilities (T, B, C) of ``dtype`` (lists converted once)."""
    if isinstance(target, (list, tuple)):
        target = from_list(name, target, None)
    if hasattr(target, "dtype") and target.dtype.kind in "iub":
        return check_ids(name, target, C, (("T", T), ("B", B)))
    check_array(name, target, (("T", T), ("B", B), ("C", C)), None, contiguous=False)
    if target.dtype != dtype:
        raise ValueError(f"{name}: class probabilities must have the logits' dtype {dtype}, "
                         f"got {target.dtype} (integer class ids are (T, B))")
    return target


def _soft_targets(target: Any, C: int, smoothing: float, xp: Any, dtype: Any) -> Any:
    """q: (T, B, C), the distribution the loss compares softmax(y) with."""
    if target.ndim == 2:
        q = (xp.arange(C) == target[:, :, None]).astype(dtype)
    else:
        q = target
    return q if smoothing == 0 else (1 - smoothing) * q + smoothing / C


class CrossEntropy:
    """Softmax cross-entropy of logits, the mean over the steps the mask selects.

    y: (T, B, C) logits   target: (T, B) integer class ids, or (T, B, C) probabilities
    mask: (T, B) weights  ->  (loss, dy: (T, B, C))

    ``loss = sum_tb mask * -sum_c q log softmax(y)) / sum(mask)``, with q the one-hot of
    the id (or the given probabilities), smoothed to ``(1 - s) q + s / C`` with
    ``label_smoothing=s`` (PyTorch's definition). log-softmax is taken as
    ``y - max - log(sum(exp(y - max)))``, finite for any finite logits, and the
    gradient ``mask * (softmax(y) * sum_c q - q) / sum(mask)`` (``softmax - onehot``
    for ids) comes from the same exponentials.
    """

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing,
                                                               (int, float, np.floating)):
            raise TypeError(f"label_smoothing: expected a number in [0, 1), "
                            f"got {type(label_smoothing).__name__}")
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing: expected a number in [0, 1), "
                             f"got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def __repr__(self) -> str:
        return f"CrossEntropy(label_smoothing={self.label_smoothing})"

    def __call__(self, y: Any, target: Any, mask: Any) -> tuple[float, Any]:
        xp = array_module(y=y, target=target, mask=mask)
        check_array("y", y, (("T", None), ("B", None), ("C", None)), contiguous=False)
        T, B, C = y.shape
        target = check_classes("target", target, T, B, C, y.dtype)
        check_array("mask", mask, (("T", T), ("B", B)), contiguous=False)
        n = float(mask.sum())
        if n == 0:
            raise ValueError("mask: selects no step at all; the loss would be 0/0")
        z = y - y.max(axis=2, keepdims=True)
        e = xp.exp(z)
        s = e.sum(axis=2, keepdims=True)
        logp = z - xp.log(s)
        q = _soft_targets(target, C, self.label_smoothing, xp, y.dtype)
        w = mask.astype(y.dtype)[:, :, None]
        qsum = q.sum(axis=2, keepdims=True)
        value = float(-(w * q * logp).sum(dtype=np.float64) / n)
        dy = (w / y.dtype.type(n)) * (e / s * qsum - q)
        return value, dy


cross_entropy = CrossEntropy()


def accuracy(y: Any, target: Any, mask: Any) -> float:
    """The mask-weighted share of steps whose largest logit is the target class.

    y: (T, B, C)   target: (T, B) ids or (T, B, C) probabilities (their argmax)
    mask: (T, B) weights
    """
    array_module(y=y, target=target, mask=mask)
    T, B, C = y.shape
    target = check_classes("target", target, T, B, C, y.dtype)
    ids = target if target.ndim == 2 else target.argmax(axis=2)
    hit = y.argmax(axis=2) == ids
    return float((mask * hit).sum(dtype=np.float64) / mask.sum(dtype=np.float64))


LOSSES: dict[str, LossFn] = {"mse": mse, "cross_entropy": cross_entropy}
MetricFn = Callable[[Any, Any, Any], float]
METRICS: dict[str, MetricFn] = {"accuracy": accuracy}


def check_metrics(metrics: Any) -> tuple[str, ...]:
    """``metrics``: a tuple (or list) of names from ``METRICS``."""
    if isinstance(metrics, str) or not isinstance(metrics, (tuple, list)):
        raise TypeError(f"metrics: expected a tuple of names ({', '.join(map(repr, METRICS))}), "
                        f"got {type(metrics).__name__} {metrics!r}")
    for m in metrics:
        check_choice("metrics", m, tuple(METRICS))
    return tuple(metrics)


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
