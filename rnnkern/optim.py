"""Optimisers that update a model's live parameter arrays in place: Adam and SGD.

    opt = Adam(model.parameters(), lr=1e-3, clip_norm=1.0)
    opt.step(grads)            # grads: the dict value_and_grad returns, same names

Clipping is by global norm over all gradients together, before the update (as
``torch.nn.utils.clip_grad_norm_`` followed by ``optimizer.step()``). The state
(moments, step count) is plain arrays: ``state_dict()`` / ``load_state_dict()``
carry it through checkpoints.

On host arrays of one float dtype (every CPU model) Adam's whole step, norm and clipping
included, is one compiled pass over flat buffers (``rnnkern._fused``): its moments live
in one buffer each, the gradients are gathered into one, and the parameters are updated
where they are, or through one flat copy when they are separate arrays. Elsewhere (CuPy,
mixed dtypes) and for SGD the update runs parameter by parameter with the array module.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

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
        self._flat = _Flat.of(params)

    def _zeros(self) -> dict[str, Any]:
        """A zero buffer per parameter: views into one flat buffer where the update is fused."""
        if self._flat is None:
            return {k: p * 0 for k, p in self.params.items()}
        return self._flat.views(np.zeros(self._flat.size, self._flat.dtype))

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

    def step(self, grads: dict[str, Any]) -> None:
        """Update every parameter in place from ``grads`` (same names and shapes).

        Raises ``NonFiniteError`` (nothing changed) when the gradients' global norm or
        an update is NaN or inf."""
        self._check(grads)
        if self._flat is not None and self._fused_step(grads):
            return
        norm = global_norm(grads)
        if not math.isfinite(norm):
            raise NonFiniteError(f"the gradient norm is {norm}")
        scale = self.clip_norm / norm if self.clip_norm is not None and norm > self.clip_norm \
            else 1.0
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

    def _fused_step(self, grads: dict[str, Any]) -> bool:
        """The whole step as one compiled pass over the flat buffers, where the optimiser
        has one; returns whether it did the step."""
        return False

    def _fused_status(self, norm: float, status: int) -> None:
        """Raise for a fused step that wrote nothing (``_fused``'s status), else count it."""
        from . import _fused

        if status == _fused.NONFINITE_NORM:
            raise NonFiniteError(f"the gradient norm is {norm}")
        if status != _fused.OK:
            raise NonFiniteError(f"opt: the update of {self._flat.names[status]!r} at step "
                                 f"{self.t + 1} is not finite (NaN or inf); parameters and "
                                 "optimiser state are unchanged")
        self.t += 1

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
        self.m = self._zeros()
        self.v = self._zeros()

    def _fused_step(self, grads: dict[str, Any]) -> bool:
        from . import _fused

        f = self._flat
        m, v = f.base_of(self.m), f.base_of(self.v)
        if m is None or v is None:  # the moments were replaced by other arrays
            return False
        g = f.gather(grads, f.grad)
        p = f.live if f.live is not None else f.gather(self.params, f.copy)
        norm, status = _fused.adam(p, g, m, v, self.lr, *self.betas, self.eps, self.t + 1,
                                   self.clip_norm or 0.0, f.starts, f.scratch)
        if status == _fused.OK and f.live is None:
            f.scatter(p, self.params)
        self._fused_status(norm, status)
        return True

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
        self.buf = self._zeros() if momentum else {}

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


class _Flat:
    """Where each parameter lies in flat (N,) buffers of one dtype, in the dict's order.

    names: the parameter names   starts: (n + 1,) int64 offsets   live: the parameters'
    own flat buffer when they are views into one, end to end (else None: ``copy`` holds
    them during a step)   grad: the gathered gradients   scratch: the new parameters while
    a fused update is checked.
    """

    def __init__(self, params: dict[str, np.ndarray]) -> None:
        self._seen: dict[int, tuple[tuple, np.ndarray | None]] = {}  # see ``base_of``
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.starts = np.cumsum([0] + [p.size for p in params.values()]).astype(np.int64)
        self.size = int(self.starts[-1])
        self.dtype = next(iter(params.values())).dtype
        self.live = self.base_of(params)
        self.grad = np.empty(self.size, self.dtype)
        self.scratch = np.empty(self.size, self.dtype)
        self.copy = None if self.live is not None else np.empty(self.size, self.dtype)

    @classmethod
    def of(cls, params: dict[str, Any]) -> _Flat | None:
        """The layout for ``params``, or None where the fused update does not apply (not
        NumPy arrays, not C-contiguous, or not all of one float dtype)."""
        ps = list(params.values())
        if not all(type(p) is np.ndarray and p.flags.c_contiguous for p in ps):
            return None
        if ps[0].dtype not in (np.float32, np.float64) or any(p.dtype != ps[0].dtype
                                                             for p in ps):
            return None
        return cls(params)

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """name -> the part of ``flat`` that holds it, in its shape."""
        return {k: flat[a:b].reshape(s) for k, s, a, b in
                zip(self.names, self.shapes, self.starts[:-1], self.starts[1:])}

    def base_of(self, arrays: dict[str, Any]) -> np.ndarray | None:
        """The flat buffer that ``arrays`` are views of in this layout, or None.

        Remembered per dict while it holds the same array objects (an ndarray's buffer and
        offset never change): the check reads every array's address, made twice a step it
        cost ~5% of the seed workload's whole ``fit`` step."""
        held = tuple(arrays[k] for k in self.names)
        seen = self._seen.get(id(arrays))
        if seen is not None and all(a is b for a, b in zip(seen[0], held)):
            return seen[1]
        base = self._base_of(held)
        if len(self._seen) >= 4:  # the parameters and two moments; replaced dicts go
            self._seen.clear()
        self._seen[id(arrays)] = (held, base)
        return base

    def _base_of(self, held: tuple) -> np.ndarray | None:
        first = held[0]
        base = first.base if isinstance(first.base, np.ndarray) else None
        if base is None or base.ndim != 1 or base.size != self.size or base.dtype != self.dtype \
                or not base.flags.c_contiguous:
            return None
        addr = base.ctypes.data
        for p, a in zip(held, self.starts[:-1]):
            if p.base is not base or p.ctypes.data != addr + int(a) * base.itemsize:
                return None
        return base

    def gather(self, arrays: dict[str, np.ndarray], out: np.ndarray) -> np.ndarray:
        """``arrays`` end to end in ``out``: (N,)."""
        return np.concatenate([arrays[k].reshape(-1) for k in self.names], out=out)

    def scatter(self, flat: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        for k, part in self.views(flat).items():
            arrays[k][...] = part
