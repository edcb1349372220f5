"""Elman RNN on the GPU: ``h_t = act(x_t @ W + h_{t-1} @ R + b)``; mirrors numpy_ref."""

from __future__ import annotations

from typing import Any

from ..._validate import check_activation, check_backward, check_forward, check_training
from ..numpy_ref import finish
from . import engine
from ._checks import require_device


def rnn_forward(x: Any, h0: Any, W: Any, R: Any, b: Any, activation: str = "tanh",
                lengths: Any = None, training: bool = True,
                variant: str | None = None) -> tuple[Any, Any, dict | None]:
    """Elman RNN over a whole sequence.

    x: (T, B, I) inputs   h0: (B, H) or None (zeros)   W: (I, H)   R: (H, H)   b: (H,)
    activation: "tanh" | "relu" | "identity"   lengths: (B,) int or None
    variant: None (by shape) | "cublas-steps" | "fused-steps" | "persistent"
    Returns y: (T, B, H) outputs, hT: (B, H) final state, cache (None unless training).
    """
    d, lengths = check_forward("rnn", x, h0, None, W, R, b, lengths=lengths)
    keep = check_training(training)
    require_device(d)
    check_activation(activation)
    y, cache = engine.forward("rnn", d, lengths, x, h0, None, W, R, b,
                              activation=activation, variant=variant)
    return y, cache["h"][d.T].copy(), cache if keep else None


def rnn_backward(dy: Any, dhT: Any, cache: dict, per_step: bool = False,
                 variant: str | None = None) -> tuple:
    """BPTT for ``rnn_forward``.

    dy: (T, B, H) or None   dhT: (B, H) or None
    Returns dx: (T, B, I), dh0: (B, H), grads {W, R, b} (+ steps with per_step).
    """
    check_backward(cache["dims"], dy=dy, dhT=dhT)
    dx, dh0, _, grads, steps = engine.backward(cache, dy, dhT, None, per_step, variant=variant)
    return finish(dx, dh0, grads, steps)
