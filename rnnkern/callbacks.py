"""Callbacks of ``fit(..., callbacks=[...])``: code that runs at the end of every epoch.

A callback is a ``Callback`` (``on_epoch_end``, and ``on_train_end``; state that a
checkpoint carries through ``state()``/``load_state()``) or a plain callable
``f(epoch, history) -> bool | None``. ``epoch`` counts from 1; ``history`` is fit's
history so far (this epoch's ``loss`` and ``val_loss`` are its last entries).
Returning True stops training after this epoch.

    stop = rk.callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best=True)
    history = rk.fit(model, opt, x, t, epochs=200, batch_size=32,
                     validation=(x_val, t_val), callbacks=[stop])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ._validate import check_bool, check_choice, check_int
from .layers import Layer, move


class Callback:
    """Base class: every hook does nothing. ``model`` is the model being trained."""

    def on_epoch_end(self, epoch: int, history: dict[str, list], model: Layer) -> bool | None:
        """After epoch ``epoch`` (from 1) and its validation; True stops training."""
        return None

    def on_train_end(self, history: dict[str, list], model: Layer) -> None:
        """When training ends: its last epoch, or a stop."""

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What a checkpoint keeps: (JSON-able settings and counters, host arrays)."""
        return {}, {}

    def load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Restore what ``state()`` returned."""


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs in a row (Keras's ``EarlyStopping``).

    monitor: a history key, "val_loss" (needs ``validation=``) or "loss"
    mode: "min" (lower is better) or "max"
    restore_best: when training ends (stopped or not), copy back the parameters of the
    best epoch; a copy of them is kept on the host meanwhile.
    After ``fit``: ``best`` (the best value), ``best_epoch`` and ``stopped_epoch`` (0:
    it did not stop training).
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 mode: str = "min", restore_best: bool = False) -> None:
        if not isinstance(monitor, str):
            raise TypeError(f"monitor: expected a history key (str), got "
                            f"{type(monitor).__name__}")
        self.monitor = monitor
        self.patience = check_int("patience", patience, 0)
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) \
                or not math.isfinite(min_delta) or min_delta < 0:
            raise ValueError(f"min_delta: expected a finite number >= 0, got {min_delta!r}")
        self.min_delta = float(min_delta)
        self.mode = check_choice("mode", mode, ("min", "max"))
        self.restore_best = check_bool("restore_best", restore_best)
        self.best: float = math.inf if mode == "min" else -math.inf
        self.best_epoch = 0
        self.wait = 0
        self.stopped_epoch = 0
        self._best_params: dict[str, np.ndarray] = {}

    def _better(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch: int, history: dict[str, list], model: Layer) -> bool:
        if self.monitor not in history:
            raise ValueError(f"monitor: {self.monitor!r} is not in the history (keys "
                             f"{sorted(history)}); 'val_loss' needs fit(validation=...)")
        value = float(history[self.monitor][-1])
        if self._better(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self._best_params = {k: move(v, np).copy()
                                     for k, v in model.parameters().items()}
            return False
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, history: dict[str, list], model: Layer) -> None:
        if self.restore_best and self._best_params:
            model.load_parameters(self._best_params)

    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        meta = {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch}
        return meta, dict(self._best_params)

    def load_state(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self.best = float(meta["best"])
        self.best_epoch, self.wait = int(meta["best_epoch"]), int(meta["wait"])
        self.stopped_epoch = int(meta["stopped_epoch"])
        self._best_params = {k: np.array(v) for k, v in arrays.items()}


class _Plain(Callback):
    """A callable ``f(epoch, history) -> bool | None`` as a callback (no state)."""

    def __init__(self, fn: Callable[[int, dict[str, list]], Any]) -> None:
        self.fn = fn

    def on_epoch_end(self, epoch: int, history: dict[str, list], model: Layer) -> bool:
        return bool(self.fn(epoch, history))


def check_callbacks(callbacks: Any) -> list[Callback]:
    """``callbacks`` (None, or a list of callbacks and callables) as a list of Callbacks."""
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks: expected a list of callbacks, got "
                        f"{type(callbacks).__name__}")
    out = []
    for i, cb in enumerate(callbacks):
        if isinstance(cb, Callback):
            out.append(cb)
        elif callable(cb):
            out.append(_Plain(cb))
        else:
            raise TypeError(f"callbacks[{i}]: expected an rnnkern.callbacks.Callback or a "
                            f"callable (epoch, history) -> bool | None, got "
                            f"{type(cb).__name__}")
    return out
