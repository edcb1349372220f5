"""GRU on the GPU, gate order (r, z, n), PyTorch's form:
``n = tanh(x W_n + b_n + r (h R_n + b_hn))``, ``h' = (1 - z) n + z h``; mirrors numpy_ref."""

from __future__ import annotations

from typing import Any

from ..._validate import check_backward, check_forward, check_training
from ..numpy_ref import finish
from . import engine
from ._checks import require_device


def gru_forward(x: Any, h0: Any, W: Any, R: Any, b: Any, b_hn: Any, lengths: Any = None,
                training: bool = True, variant: str | None = None
                ) -> tuple[Any, Any, dict | None]:
    """GRU over a whole sequence.

    x: (T, B, I)   h0: (B, H) or None   W: (I, 3H)   R: (H, 3H)   b: (3H,)   b_hn: (H,)
    lengths: (B,) int or None
    variant: None (by shape) | "cublas-steps" | "fused-steps" | "persistent"
    Returns y: (T, B, H), hT: (B, H), cache (None unless training).
    """
    d, lengths = check_forward("gru", x, h0, None, W, R, b, b_hn, lengths=lengths)
    keep = check_training(training)
    require_device(d)
    y, cache = engine.forward("gru", d, lengths, x, h0, None, W, R, b, b_hn, variant=variant)
    return y, cache["h"][d.T].copy(), cache if keep else None


def gru_backward(dy: Any, dhT: Any, cache: dict, per_step: bool = False,
                 variant: str | None = None) -> tuple:
    """BPTT for ``gru_forward``.

    dy: (T, B, H) or None   dhT: (B, H) or None
    Returns dx: (T, B, I), dh0: (B, H), grads {W, R, b, b_hn} (+ steps).
    """
    check_backward(cache["dims"], dy=dy, dhT=dhT)
    dx, dh0, _, grads, steps = engine.backward(cache, dy, dhT, None, per_step, variant=variant)
    return finish(dx, dh0, grads, steps)
