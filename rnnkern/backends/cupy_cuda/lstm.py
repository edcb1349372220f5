"""LSTM on the GPU, gate order (i, f, g, o): ``c' = f c + i g``, ``h' = o tanh(c')``;
mirrors numpy_ref."""

from __future__ import annotations

from typing import Any

from ..._validate import check_backward, check_forward, check_training
from ..numpy_ref import finish
from . import engine
from ._checks import require_device


def lstm_forward(x: Any, h0: Any, c0: Any, W: Any, R: Any, b: Any, lengths: Any = None,
                 training: bool = True, variant: str | None = None
                 ) -> tuple[Any, tuple[Any, Any], dict | None]:
    """LSTM over a whole sequence.

    x: (T, B, I)   h0, c0: (B, H) or None   W: (I, 4H)   R: (H, 4H)   b: (4H,)
    lengths: (B,) int or None
    variant: None (by shape) | "cublas-steps" | "fused-steps" | "persistent"
    Returns y: (T, B, H), (hT, cT): (B, H) each, cache (None unless training).
    """
    d, lengths = check_forward("lstm", x, h0, c0, W, R, b, lengths=lengths)
    keep = check_training(training)
    require_device(d)
    y, cache = engine.forward("lstm", d, lengths, x, h0, c0, W, R, b, variant=variant)
    return y, (cache["h"][d.T].copy(), cache["c"][d.T].copy()), cache if keep else None


def lstm_backward(dy: Any, dstate: tuple[Any, Any] | None, cache: dict, per_step: bool = False,
                  variant: str | None = None) -> tuple:
    """BPTT for ``lstm_forward``.

    dy: (T, B, H) or None   dstate: (dhT, dcT), each (B, H) or None
    Returns dx: (T, B, I), (dh0, dc0): (B, H) each, grads {W, R, b} (+ steps).
    """
    dhT, dcT = (None, None) if dstate is None else dstate
    check_backward(cache["dims"], dy=dy, dhT=dhT, dcT=dcT)
    dx, dh0, dc0, grads, steps = engine.backward(cache, dy, dhT, dcT, per_step, variant=variant)
    return finish(dx, (dh0, dc0), grads, steps)
