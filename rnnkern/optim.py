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

from ._validate import array_module, check_array, check_writable


class NonFiniteError(FloatingPointError):
    """A NaN or inf loss, gradient or parameter update; nothing was changed."""


def _positive(name: str, v: Any, allow_zero: bool = False) -> float:
    want = "a finite number >= 0" if allow_zero else "a finite number > 0"
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
        raise TypeError(f"{name}: expected {want}, got {type(v).__name__}")
    v = float(v)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}: expected {want}, got {v!r}")
    return v


def _fraction(name: str, v: Any) -> float:
    """A number in [0, 1) (a beta or a momentum)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
        raise TypeError(f"{name}: expected a number in [0, 1), got {type(v).__name__}")
    if not 0 <= float(v) < 1:
        raise ValueError(f"{name}: expected a number in [0, 1), got {v!r}")
    return float(v)


def global_norm(grads: dict[str, Any]) -> float:
    """sqrt of the sum of squares of every gradient entry (accumulated in float64)."""
    total = 0.0
    for g in grads.values():
        xp = array_module(g=g)
        total += float(xp.sum(xp.square(g, dtype=xp.float64)))
    return math.sqrt(total)


class Optimizer:
    """Shared bookkeeping: the parameters, gradient checks, clipping, the update.

    An update is computed in full, checked to be finite and only then written
    into the parameters and buffers: a NaN or inf update raises ``NonFiniteError``
    and leaves parameters, buffers and the step count as they were.
    """

    def __init__(self, params: dict[str, Any], lr: float, clip_norm: float | None) -> None:
        if not isinstance(params, dict):
            raise TypeError("params: expected a non-empty dict name -> array "
                            f"(model.parameters()), got {type(params).__name__}")
        if not params:
            raise ValueError("params: expected a non-empty dict name -> array "
                             "(model.parameters()), got an empty dict")
        for k, p in params.items():
            check_array(f"params[{k!r}]", p, tuple((f"d{i}", None) for i in
                                                   range(getattr(p, "ndim", 0))))
            check_writable(f"params[{k!r}]", p)
        self.params = params
        self.lr = _positive("lr", lr)
        self.clip_norm = None if clip_norm is None else _positive("clip_norm", clip_norm)
        self.t = 0

    def _check(self, grads: dict[str, Any]) -> None:
        if not isinstance(grads, dict):
            raise TypeError(f"grads: expected a dict name -> array, got {type(grads).__name__}")
        if set(grads) != set(self.params):
            raise ValueError(f"grads: expected the names {sorted(self.params)}, "
                             f"got {sorted(grads)}")
        for k, p in self.params.items():
            g = grads[k]
            if not (hasattr(g, "shape") and hasattr(g, "dtype")):
                raise TypeError(f"grads[{k!r}]: expected an array of shape {p.shape}, "
                                f"got {type(g).__name__}")
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
        t = self.t + 1
        writes = []  # (live array, new value), written once all are known to be finite
        for k, p in self.params.items():
            g = grads[k] * scale if scale != 1.0 else grads[k]
            for dst, new in self._update(k, p, g, t):
                xp = array_module(new=new)
                if not bool(xp.isfinite(new).all()):
                    raise NonFiniteError(f"opt: the update of {k!r} at step {t} is not finite "
                                         "(NaN or inf); parameters and optimiser state are "
                                         "unchanged")
                writes.append((dst, new))
        for dst, new in writes:
            dst[...] = new
        self.t = t

    def _update(self, name: str, p: Any, g: Any, t: int) -> list[tuple[Any, Any]]:
        """The new values of ``p`` and its buffers at step ``t``: [(array, new value)]."""
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, Any]:
        """The settings that define the update (what a checkpoint must match to resume)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Step count and per-parameter buffers (arrays are the live ones, not copies)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy a ``state_dict()`` (same names and shapes) into this optimiser."""
        own = self.state_dict()
        if not isinstance(state, dict) or set(state) != set(own):
            raise ValueError(f"state: expected the keys {sorted(own)}, got "
                             f"{sorted(state) if isinstance(state, dict) else type(state)}")
        for key, bufs in own.items():
            if key == "t":
                continue
            if not isinstance(state[key], dict) or set(state[key]) != set(bufs):
                raise ValueError(f"state[{key!r}]: expected the names {sorted(bufs)}")
            for k, b in bufs.items():
                src = state[key][k]
                if tuple(getattr(src, "shape", ())) != tuple(b.shape):
                    raise ValueError(f"state[{key!r}][{k!r}]: expected shape {tuple(b.shape)}, "
                                     f"got {getattr(src, 'shape', type(src).__name__)}")
        for key, bufs in own.items():
            for k, b in ({} if key == "t" else bufs).items():
                b[...] = state[key][k]
        self.t = int(state["t"])


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba), PyTorch's update:

        m = b1 m + (1 - b1) g      v = b2 v + (1 - b2) g^2
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, params: dict[str, Any], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 clip_norm: float | None = None) -> None:
        super().__init__(params, lr, clip_norm)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        self.betas = (_fraction("betas[0]", betas[0]), _fraction("betas[1]", betas[1]))
        self.eps = _positive("eps", eps, allow_zero=True)
        self.m = {k: p * 0 for k, p in params.items()}
        self.v = {k: p * 0 for k, p in params.items()}

    def _update(self, name: str, p: Any, g: Any, t: int) -> list[tuple[Any, Any]]:
        b1, b2 = self.betas
        m = b1 * self.m[name] + (1 - b1) * g
        v = b2 * self.v[name] + (1 - b2) * (g * g)
        xp = array_module(p=p)
        denom = xp.sqrt(v) / math.sqrt(1 - b2**t) + self.eps
        return [(self.m[name], m), (self.v[name], v),
                (p, p - (self.lr / (1 - b1**t)) * (m / denom))]

    def hyperparameters(self) -> dict[str, Any]:
        return {"type": "Adam", "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
                "clip_norm": self.clip_norm}

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "m": self.m, "v": self.v}


class SGD(Optimizer):
    """Stochastic gradient descent with optional (heavy-ball, PyTorch-style) momentum:

        buf = momentum * buf + g      p -= lr * buf
    """

    def __init__(self, params: dict[str, Any], lr: float, momentum: float = 0.0,
                 clip_norm: float | None = None) -> None:
        super().__init__(params, lr, clip_norm)
        self.momentum = _fraction("momentum", momentum)
        self.buf = {k: p * 0 for k, p in params.items()} if momentum else {}

    def _update(self, name: str, p: Any, g: Any, t: int) -> list[tuple[Any, Any]]:
        if not self.momentum:
            return [(p, p - self.lr * g)]
        buf = self.momentum * self.buf[name] + g
        return [(self.buf[name], buf), (p, p - self.lr * buf)]

    def hyperparameters(self) -> dict[str, Any]:
        return {"type": "SGD", "lr": self.lr, "momentum": self.momentum,
                "clip_norm": self.clip_norm}

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "buf": self.buf}


#: hyperparameters()["type"] -> the class, for rebuilding a saved optimiser
OPTIMIZERS: dict[str, type[Optimizer]] = {"Adam": Adam, "SGD": SGD}


def from_hyperparameters(params: dict[str, Any], hp: dict[str, Any]) -> Optimizer:
    """A new optimiser over ``params`` with the settings ``hyperparameters()`` returned
    (its state fresh: ``load_state_dict`` fills it)."""
    if not isinstance(hp, dict) or hp.get("type") not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected hyperparameters of one of "
                         f"{', '.join(OPTIMIZERS)}, got {hp!r}")
    kwargs = {k: v for k, v in hp.items() if k != "type"}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return OPTIMIZERS[hp["type"]](params, **kwargs)
