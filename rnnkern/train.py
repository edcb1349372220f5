"""Training: ``value_and_grad``, ``evaluate`` and the ``fit`` loop.

    loss, grads = value_and_grad(model, x, target, mask=masks.from_step(4, T), feedback=4)
    history = fit(model, Adam(model.parameters(), lr=3e-3), x, target, epochs=50,
                  batch_size=32, validation=(x_val, t_val))

``fit`` is split into ``train_batch`` (one optimiser step) and ``train_epoch``
(one pass over shuffled mini-batches along B) so that longer-run features
(truncated BPTT, checkpoints, non-finite handling) slot in at their level.
Arguments are validated once at entry; the inner loops trust them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import losses
from ._validate import array_module
from .generate import backprop, check_inputs, run
from .layers import Layer, move
from .optim import Optimizer


def _value_and_grad(model: Layer, x: Any, target: Any, loss_fn: losses.LossFn, mask: Any,
                    lengths: Any, state: Any, feedback: int) -> tuple[float, dict]:
    y, _, tape = run(model, x, state, lengths, feedback, record=True)
    m = losses.resolve_mask(mask, lengths, x.shape[0], x.shape[1], model.dtype,
                            array_module(x=x))
    value, dy = loss_fn(y, target, m)
    grads, _ = backprop(model, dy, tape)
    return value, grads


def value_and_grad(model: Layer, x: Any, target: Any, loss: Any = "mse", mask: Any = None,
                   lengths: Any = None, state: Any = None, feedback: int = 0
                   ) -> tuple[float, dict[str, Any]]:
    """The loss and its gradient for every parameter (names as ``model.parameters()``).

    x: (T, B, I)   target: (T, B, O)   mask: (T, B) or (T, 1) or None (every true step)
    lengths: (B,) int or None   state: initial state (None: zeros)
    feedback: the last ``feedback`` inputs of each row are the model's own previous
    outputs, and the gradient flows back through that loop.
    """
    lengths = check_inputs(model, x, target, lengths, feedback)
    return _value_and_grad(model, x, target, losses.get(loss), mask, lengths, state, feedback)


def evaluate(model: Layer, x: Any, target: Any, loss: Any = "mse", mask: Any = None,
             lengths: Any = None, state: Any = None, feedback: int = 0) -> float:
    """The loss without gradients; ``feedback=n``: the model drives itself for the last
    ``n`` steps of each row (the validation phase of free-running training)."""
    lengths = check_inputs(model, x, target, lengths, feedback)
    y, _, _ = run(model, x, state, lengths, feedback, record=False)
    m = losses.resolve_mask(mask, lengths, x.shape[0], x.shape[1], model.dtype,
                            array_module(x=x))
    return losses.get(loss)(y, target, m)[0]


@dataclass
class Batch:
    """Training data sliced along B: x: (T, B, I), target: (T, B, O), mask: (T, B) weights."""

    x: Any
    target: Any
    mask: Any
    lengths: Any

    def take(self, idx: Any) -> Batch:
        xp = array_module(x=self.x)
        idx = move(idx, xp)
        return Batch(xp.take(self.x, idx, axis=1), xp.take(self.target, idx, axis=1),
                     xp.take(self.mask, idx, axis=1),
                     None if self.lengths is None else self.lengths[idx])


def train_batch(model: Layer, opt: Optimizer, batch: Batch, loss_fn: losses.LossFn,
                feedback: int) -> float:
    """One optimiser step on one batch; returns the batch's loss before the step."""
    value, grads = _value_and_grad(model, batch.x, batch.target, loss_fn, batch.mask,
                                   batch.lengths, None, feedback)
    opt.step(grads)
    return value


def train_epoch(model: Layer, opt: Optimizer, data: Batch, batch_size: int, order: np.ndarray,
                loss_fn: losses.LossFn, feedback: int) -> float:
    """One pass over ``data`` in mini-batches taken in ``order``; returns the mean
    batch loss weighted by rows."""
    total = 0.0
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        total += train_batch(model, opt, data.take(idx), loss_fn, feedback) * len(idx)
    return total / len(order)


def _positive_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    return int(v)


def _validation_set(validation: Any, model: Layer, mask: Any, feedback: int) -> Batch:
    """(x, target[, mask[, lengths]]) checked; a (T, 1) training mask serves it too."""
    if not isinstance(validation, (tuple, list)) or not 2 <= len(validation) <= 4:
        raise ValueError("validation: expected (x, target), (x, target, mask) or "
                         f"(x, target, mask, lengths), got {type(validation).__name__}")
    x, target, *rest = validation
    v_mask = rest[0] if rest else mask
    try:
        v_lengths = check_inputs(model, x, target, rest[1] if len(rest) > 1 else None, feedback)
    except ValueError as e:
        raise ValueError(f"validation: {e}") from e
    if not rest and mask is not None and mask.shape[1] != 1:
        raise ValueError("validation: the training mask is per row (T, B); pass the "
                         "validation mask as validation=(x, target, mask)")
    return Batch(x, target, v_mask, v_lengths)


def fit(model: Layer, opt: Optimizer, x: Any, target: Any, epochs: int, batch_size: int,
        mask: Any = None, lengths: Any = None, feedback: int = 0, validation: Any = None,
        shuffle: bool = True, seed: int = 0, progress: bool = True, loss: Any = "mse",
        val_feedback: int | None = None) -> dict[str, list[float]]:
    """Train ``model`` with ``opt`` for ``epochs`` passes of mini-batches along B.

    x: (T, B, I)   target: (T, B, O)   mask: (T, B) or (T, 1) or None   lengths: (B,)
    feedback: free-running training, the last n inputs fed back (see value_and_grad).
    validation: (x, target[, mask[, lengths]]), evaluated after every epoch with
    ``val_feedback`` (default: ``feedback``) steps driven by the model itself.
    shuffle: a new order every epoch from ``np.random.default_rng(seed)`` (the only
    randomness: same seed, same data, same model -> bit-identical history on CPU).
    progress: a tqdm bar over epochs showing the losses.

    Returns the history: {"loss": [...], "val_loss": [...] (with validation)}, one
    entry per epoch.
    """
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    if not isinstance(opt, Optimizer):
        raise ValueError(f"opt: expected an rnnkern optimiser (Adam, SGD), "
                         f"got {type(opt).__name__}")
    lengths = check_inputs(model, x, target, lengths, feedback)
    val_feedback = feedback if val_feedback is None else val_feedback
    loss_fn = losses.get(loss)
    xp = array_module(x=x)
    T, B = x.shape[:2]
    data = Batch(x, target, losses.resolve_mask(mask, lengths, T, B, model.dtype, xp), lengths)
    val = None if validation is None else _validation_set(validation, model, mask, val_feedback)
    rng = np.random.default_rng(seed)
    history: dict[str, list[float]] = {"loss": []}
    if val is not None:
        history["val_loss"] = []
    from tqdm import tqdm

    with tqdm(range(epochs), disable=not progress, unit="epoch") as bar:
        for _ in bar:
            order = rng.permutation(B) if shuffle else np.arange(B)
            history["loss"].append(train_epoch(model, opt, data, batch_size, order, loss_fn,
                                               feedback))
            shown = {"loss": f"{history['loss'][-1]:.4g}"}
            if val is not None:
                history["val_loss"].append(evaluate(model, val.x, val.target, loss_fn,
                                                    val.mask, val.lengths,
                                                    feedback=val_feedback))
                shown["val_loss"] = f"{history['val_loss'][-1]:.4g}"
            bar.set_postfix(shown)
    return history
