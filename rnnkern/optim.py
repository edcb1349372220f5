"""Optimisers that update a model's live parameter arrays in place: Adam and SGD.

    opt = Adam(model.parameters(), lr=1e-3, clip_norm=1.0)
    opt.step(grads)            # grads: the dict value_and_grad returns, same names

Clipping is by global norm over all gradients together, before the update (as
``torch.nn.utils.clip_grad_norm_`` followed by ``optimizer.step()``). The state
(moments, step count) is plain arrays: ``state_dict()`` / ``load_state_dict()``
carry it through checkpoints.
"""

from __future__ import annotations

import math
from typing import Any

from ._validate import array_module


def _positive(name: str, v: Any, allow_zero: bool = False) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or v < 0 or (v == 0 and not allow_zero):
        want = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise ValueError(f"{name}: expected {want}, got {v!r}")
    return float(v)


def global_norm(grads: dict[str, Any]) -> float:
    """sqrt of the sum of squares of every gradient entry."""
    return math.sqrt(sum(float((g * g).sum()) for g in grads.values()))


class Optimizer:
    """Shared bookkeeping: the parameters, gradient checks, clipping."""

    def __init__(self, params: dict[str, Any], lr: float, clip_norm: float | None) -> None:
        if not isinstance(params, dict) or not params:
            raise ValueError("params: expected a non-empty dict name -> array "
                             f"(model.parameters()), got {type(params).__name__}")
        self.params = params
        self.lr = _positive("lr", lr)
        self.clip_norm = None if clip_norm is None else _positive("clip_norm", clip_norm)
        self.t = 0

    def _check(self, grads: dict[str, Any]) -> None:
        if set(grads) != set(self.params):
            raise ValueError(f"grads: expected the names {sorted(self.params)}, "
                             f"got {sorted(grads)}")
        for k, p in self.params.items():
            g = grads[k]
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"grads[{k!r}]: expected shape {p.shape} and dtype {p.dtype}, "
                                 f"got shape {g.shape} and dtype {g.dtype}")
            array_module(param=p, grad=g)

    def _scale(self, grads: dict[str, Any]) -> float:
        """The factor that brings the global norm down to ``clip_norm`` (1 if under it)."""
        if self.clip_norm is None:
            return 1.0
        norm = global_norm(grads)
        return self.clip_norm / norm if norm > self.clip_norm else 1.0

    def step(self, grads: dict[str, Any]) -> None:
        """Update every parameter in place from ``grads`` (same names and shapes)."""
        self._check(grads)
        scale = self._scale(grads)
        self.t += 1
        for k, p in self.params.items():
            g = grads[k] * scale if scale != 1.0 else grads[k]
            self._update(k, p, g)

    def _update(self, name: str, p: Any, g: Any) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Step count and per-parameter buffers (arrays are the live ones, not copies)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba), PyTorch's update:

        m = b1 m + (1 - b1) g      v = b2 v + (1 - b2) g^2
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, params: dict[str, Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 clip_norm: float | None = None) -> None:
        super().__init__(params, lr, clip_norm)
        if (not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = _positive("eps", eps, allow_zero=True)
        self.m = {k: p * 0 for k, p in params.items()}
        self.v = {k: p * 0 for k, p in params.items()}

    def _update(self, name: str, p: Any, g: Any) -> None:
        b1, b2 = self.betas
        m, v = self.m[name], self.v[name]
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        xp = array_module(p=p)
        denom = xp.sqrt(v) / math.sqrt(1 - b2**self.t) + self.eps
        p -= (self.lr / (1 - b1**self.t)) * (m / denom)

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.params:
            self.m[k][...] = state["m"][k]
            self.v[k][...] = state["v"][k]
        self.t = int(state["t"])


class SGD(Optimizer):
    """Stochastic gradient descent with optional (heavy-ball, PyTorch-style) momentum:

        buf = momentum * buf + g      p -= lr * buf
    """

    def __init__(self, params: dict[str, Any], lr: float, momentum: float = 0.0,
                 clip_norm: float | None = None) -> None:
        super().__init__(params, lr, clip_norm)
        if not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
            raise ValueError(f"momentum: expected a number in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.buf = {k: p * 0 for k, p in params.items()} if momentum else {}

    def _update(self, name: str, p: Any, g: Any) -> None:
        if self.momentum:
            buf = self.buf[name]
            buf *= self.momentum
            buf += g
            g = buf
        p -= self.lr * g

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "buf": self.buf}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, b in self.buf.items():
            b[...] = state["buf"][k]
        self.t = int(state["t"])
