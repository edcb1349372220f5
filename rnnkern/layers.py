"""Model layer: RNN, LSTM, GRU, Dense, Embedding and Sequential over any registered backend.

Every layer has a hand-written ``forward(x, state, lengths, training=True) -> (y, state,
cache)`` and ``backward(dy, dstate, cache) -> (dx, dstate0, grads)``; the recurrent ones
call the kernels of ``rnnkern.backends.get(backend)``, ``Dense`` is one GEMM and
a pointwise activation. ``training=False`` is an inference pass: the cache is None and
the kernels need not keep it (calling a layer, ``generate`` and ``evaluate`` do that).
There is no autograd: ``Sequential`` chains the layers forward and their backwards in
reverse.

Shapes (time-major, as the kernels): x: (T, B, I) -> y: (T, B, O), or integer ids
x: (T, B) for a model that starts with ``Embedding``. State of a
recurrent layer: ``h: (B, H)`` (RNN, GRU) or ``(h, c)`` (LSTM); of ``Dense``: None;
of a ``Sequential``: a tuple with one entry per layer.

Initialisation follows PyTorch: cells draw every weight from U(-1/sqrt(H), 1/sqrt(H))
and, since rnnkern keeps one bias where PyTorch keeps two, ``b`` is the sum of two
such draws (GRU: ``b_hn`` is PyTorch's ``bias_hh`` for n); Dense draws W and b from
U(-1/sqrt(in), 1/sqrt(in)), which is what ``torch.nn.Linear``'s Kaiming-uniform
init with a = sqrt(5) amounts to.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from . import backends
from ._threads import one_pool
from ._validate import (
    GATES,
    _is_cupy,
    array_module,
    as_array,
    check_activation,
    check_array,
    check_choice,
    check_ids,
    check_int,
    check_lengths,
    with_layout_hint,
)
from .backends.numpy_ref import active_mask

State = Any
Cache = Any
Grads = dict[str, Any]

DENSE_ACTIVATIONS = (None, "relu", "tanh", "sigmoid")


def check_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a NumPy dtype, float32 or float64 only."""
    try:
        dt = np.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}") from e
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype: expected 'float32' or 'float64', got {dtype!r}")
    return dt



def backend_xp(be: Any) -> Any:
    """The array module a backend computes with (numpy unless the backend says otherwise)."""
    return getattr(be, "xp", np)


def move(a: Any, xp: Any) -> Any:
    """``a`` on the device of array module ``xp`` (no copy when it is already there)."""
    if xp is np:
        return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a
    return xp.asarray(a)


class Layer:
    """Base of every layer: parameters, backend and dtype bookkeeping, calling."""

    in_features: int
    out_features: int

    #: whether x must be C-contiguous (the kernels need it; Dense does not)
    contiguous_input = True
    #: whether x holds integer ids (T, B) rather than features (T, B, in_features)
    tokens = False

    def __init__(self, backend: str | None, dtype: Any) -> None:
        self.dtype = check_dtype(dtype)
        if backend is not None and not isinstance(backend, str):
            raise TypeError(f"backend: expected a backend name (str) or None, "
                            f"got {type(backend).__name__}")
        self.backend = backends.default() if backend is None else backend
        self._be = backends.get(self.backend)
        self._params: dict[str, Any] = {}

    # -- parameters -----------------------------------------------------------
    def _init_host(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def reset_parameters(self, seed: int | np.random.Generator | None = None) -> None:
        """Draw fresh parameters (PyTorch's initialisation) from ``seed`` (an int or Generator)."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        host = self._init_host(rng)
        xp = backend_xp(self._be)
        if self._params:  # refill in place: optimisers hold the live arrays
            for k, v in host.items():
                self._params[k][...] = move(v.astype(self.dtype), xp)
        else:
            self._params = {k: move(v.astype(self.dtype), xp) for k, v in host.items()}

    def parameters(self) -> dict[str, Any]:
        """name -> live parameter array (an optimiser updates these in place)."""
        return dict(self._params)

    def load_parameters(self, params: dict[str, Any]) -> None:
        """Copy ``params`` (same names, shapes and dtype) into the live parameters."""
        _load_into(self.parameters(), params, backend_xp(self._be))

    def spec(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this layer (for save/load)."""
        raise NotImplementedError

    # -- devices --------------------------------------------------------------
    def to(self, backend: str) -> Layer:
        """Move the parameters to ``backend``; returns self.

        NumPy and Numba share host arrays (nothing is copied); to or from CuPy
        each array is copied once. An optimiser made before a device move keeps
        the old arrays: make it after ``to``.
        """
        be = backends.get(backend)
        xp = backend_xp(be)
        if xp is not backend_xp(self._be):
            self._params = {k: move(v, xp) for k, v in self._params.items()}
        self._be, self.backend = be, backend
        return self

    # -- computing ------------------------------------------------------------
    def check_data(self, name: str, a: Any) -> None:
        """Refuse data on another device than the parameters (never copied silently)."""
        if _is_cupy(a) != (backend_xp(self._be) is not np):
            where = "a cupy (GPU)" if _is_cupy(a) else "a numpy (CPU)"
            raise ValueError(f"{name}: is {where} array but the model is on backend "
                             f"{self.backend!r}; put the data on the model's device or move "
                             f"the model with .to(...) (rnnkern never copies silently)")

    def check_call(self, x: Any, state: State = None, lengths: Any = None,
                   name: str = "state") -> tuple[Any, State, Any]:
        """Validate one call's ``x: (T, B, in_features)`` (lists accepted), ``state``
        (named ``name`` in messages) and ``lengths``; returns them checked. A shape error
        that batch-first (or features-first) data would explain says so."""
        x_in = x
        try:
            x = self.check_input("x", x)
            T, B = x.shape[:2]
            xp = array_module(x=x, lengths=None if isinstance(lengths, (list, tuple))
                              else lengths)
            lengths = check_lengths(lengths, T, B, xp)
        except ValueError as e:
            raise with_layout_hint(e, x_in, None, lengths, self.in_features) from None
        return x, self.check_state(state, B, name), lengths

    def check_input(self, name: str, x: Any) -> Any:
        """``x: (T, B, in_features)`` of the layer's dtype and device (a list converted
        once), named ``name`` in messages; returns it checked."""
        x = as_array(name, x, (("T", None), ("B", None), ("in_features", self.in_features)),
                     self.dtype, self.contiguous_input)
        self.check_data(name, x)
        return x

    def check_state(self, state: State, B: int, name: str = "state") -> State:
        """``state`` as this layer takes it for a batch of B rows (None: zeros)."""
        if state is not None:
            raise ValueError(f"{name}: {type(self).__name__} has no state; expected None, "
                             f"got {type(state).__name__}")
        return None

    @one_pool
    def forward(self, x: Any, state: State = None, lengths: Any = None,
                training: bool = True) -> tuple:
        """x: (T, B, in_features), state, lengths: (B,) or None -> (y, state, cache),
        every argument validated first (see ``check_call``); ``training=False`` for
        inference: the cache is None (nothing is kept for a backward)."""
        if not isinstance(training, (bool, np.bool_)):
            raise TypeError(f"training: expected True or False, got {type(training).__name__}")
        return self._forward(*self.check_call(x, state, lengths), bool(training))

    def _forward(self, x: Any, state: State, lengths: Any, training: bool = True) -> tuple:
        """``forward`` on arguments already validated (the inner loops call this)."""
        raise NotImplementedError

    def backward(self, dy: Any, dstate: State, cache: Cache) -> tuple:
        raise NotImplementedError

    @one_pool
    def __call__(self, x: Any, lengths: Any = None, state: State = None,
                 return_state: bool = False) -> Any:
        """y: (T, B, O) for x: (T, B, I), time-major (batch-first data:
        ``data.from_batch_first``; a strided view is copied once); with ``return_state``
        also the final state. An inference pass (``forward`` with ``training=False``)."""
        y, state_out, _ = self.forward(x, state, lengths, training=False)
        return (y, state_out) if return_state else y

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "type")
        return f"{type(self).__name__}({args}, backend={self.backend!r}, dtype='{self.dtype}')"


def _load_into(live: dict[str, Any], params: dict[str, Any], xp: Any) -> None:
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict name -> array, got {type(params).__name__}")
    if set(params) != set(live):
        raise ValueError(f"params: expected the names {sorted(live)}, got {sorted(params)}")
    for k, dst in live.items():
        src = params[k]
        if not (hasattr(src, "shape") and hasattr(src, "dtype")):
            raise TypeError(f"params[{k!r}]: expected an array of shape {tuple(dst.shape)}, "
                            f"got {type(src).__name__}")
        if tuple(src.shape) != tuple(dst.shape) or src.dtype != dst.dtype:
            raise ValueError(
                f"params[{k!r}]: expected shape {tuple(dst.shape)} and dtype {dst.dtype}, "
                f"got shape {tuple(src.shape)} and dtype {src.dtype}")
    for k, dst in live.items():
        dst[...] = move(params[k], xp)


# ----------------------------------------------------------------------------
# recurrent cells


class _Cell(Layer):
    """A recurrent layer over one of the backend's cells."""

    cell: str

    def __init__(self, in_features: int, hidden: int, backend: str | None, dtype: Any,
                 seed: int | None) -> None:
        super().__init__(backend, dtype)
        self.in_features = check_int("in_features", in_features, 1)
        self.hidden = self.out_features = check_int("hidden", hidden, 1)
        self.reset_parameters(seed)

    def _init_host(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        k = 1.0 / np.sqrt(self.hidden)
        GH = GATES[self.cell] * self.hidden
        out = {"W": rng.uniform(-k, k, (self.in_features, GH)),
               "R": rng.uniform(-k, k, (self.hidden, GH))}
        b_ih, b_hh = rng.uniform(-k, k, GH), rng.uniform(-k, k, GH)
        if self.cell == "gru":  # PyTorch's bias_hh for n sits inside r * (...): keep it apart
            out["b"] = b_ih + np.concatenate([b_hh[: 2 * self.hidden],
                                              np.zeros(self.hidden)])
            out["b_hn"] = b_hh[2 * self.hidden :]
        else:
            out["b"] = b_ih + b_hh
        return out

    def spec(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "in_features": self.in_features,
                "hidden": self.hidden}

    def _check_h(self, name: str, h: Any, B: int) -> Any:
        return as_array(name, h, (("B", B), ("H", self.hidden)), self.dtype)

    def check_state(self, state: State, B: int, name: str = "state") -> State:
        """h: (B, H) (RNN, GRU) or None."""
        return None if state is None else self._check_h(name, state, B)


class RNN(_Cell):
    """Elman RNN: h_t = act(x_t @ W + h_{t-1} @ R + b); act: "tanh" | "relu" | "identity".

    Parameters: W: (I, H), R: (H, H), b: (H,). State: h: (B, H).
    """

    cell = "rnn"

    def __init__(self, in_features: int, hidden: int, activation: str = "tanh", *,
                 backend: str | None = None, dtype: Any = "float32",
                 seed: int | None = None) -> None:
        self.activation = check_activation(activation)
        super().__init__(in_features, hidden, backend, dtype, seed)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "activation": self.activation}

    def _forward(self, x: Any, state: State, lengths: Any, training: bool = True) -> tuple:
        """x: (T, B, I), state: h0 (B, H) or None -> y: (T, B, H), hT: (B, H), cache."""
        p = self._params
        return self._be.rnn_forward(x, state, p["W"], p["R"], p["b"],
                                    activation=self.activation, lengths=lengths,
                                    training=training)

    def backward(self, dy: Any, dstate: State, cache: Cache) -> tuple:
        """dy: (T, B, H) or None, dstate: dhT (B, H) or None -> dx, dh0, grads {W, R, b}."""
        return self._be.rnn_backward(dy, dstate, cache)


class LSTM(_Cell):
    """LSTM, gate order (i, f, g, o) as PyTorch.

    Parameters: W: (I, 4H), R: (H, 4H), b: (4H,). State: (h, c), each (B, H).
    """

    cell = "lstm"

    def __init__(self, in_features: int, hidden: int, *, backend: str | None = None,
                 dtype: Any = "float32", seed: int | None = None) -> None:
        super().__init__(in_features, hidden, backend, dtype, seed)

    def check_state(self, state: State, B: int, name: str = "state") -> State:
        """(h, c), each (B, H), or None."""
        if state is None:
            return None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{name}: expected (h, c), two arrays of shape (B={B}, "
                            f"H={self.hidden}), or None, got {type(state).__name__}")
        return (self._check_h(f"{name}[0]", state[0], B), self._check_h(f"{name}[1]", state[1], B))

    def _forward(self, x: Any, state: State, lengths: Any, training: bool = True) -> tuple:
        """x: (T, B, I), state: (h0, c0) or None -> y: (T, B, H), (hT, cT), cache."""
        h0, c0 = (None, None) if state is None else state
        p = self._params
        return self._be.lstm_forward(x, h0, c0, p["W"], p["R"], p["b"], lengths=lengths,
                                     training=training)

    def backward(self, dy: Any, dstate: State, cache: Cache) -> tuple:
        """dy: (T, B, H) or None, dstate: (dhT, dcT) or None -> dx, (dh0, dc0), grads."""
        if dstate is not None and (not isinstance(dstate, (tuple, list)) or len(dstate) != 2):
            raise TypeError(f"dstate: expected (dhT, dcT), two (B, H) arrays or None, "
                            f"got {type(dstate).__name__}")
        return self._be.lstm_backward(dy, dstate, cache)


class GRU(_Cell):
    """GRU, gate order (r, z, n), PyTorch's formulation.

    Parameters: W: (I, 3H), R: (H, 3H), b: (3H,), b_hn: (H,). State: h: (B, H).
    """

    cell = "gru"

    def __init__(self, in_features: int, hidden: int, *, backend: str | None = None,
                 dtype: Any = "float32", seed: int | None = None) -> None:
        super().__init__(in_features, hidden, backend, dtype, seed)

    def _forward(self, x: Any, state: State, lengths: Any, training: bool = True) -> tuple:
        """x: (T, B, I), state: h0 (B, H) or None -> y: (T, B, H), hT: (B, H), cache."""
        p = self._params
        return self._be.gru_forward(x, state, p["W"], p["R"], p["b"], p["b_hn"],
                                    lengths=lengths, training=training)

    def backward(self, dy: Any, dstate: State, cache: Cache) -> tuple:
        """dy: (T, B, H) or None, dstate: dhT (B, H) or None -> dx, dh0, grads."""
        return self._be.gru_backward(dy, dstate, cache)


# ----------------------------------------------------------------------------
# Dense


def _act(name: str | None, z: Any, xp: Any) -> Any:
    if name is None:
        return z
    if name == "relu":
        return xp.maximum(z, 0)
    if name == "tanh":
        return xp.tanh(z)
    return 0.5 * (1 + xp.tanh(0.5 * z))  # sigmoid without exp overflow


def _act_grad(name: str, a: Any) -> Any:
    """f'(z) written in terms of the output a = f(z)."""
    if name == "relu":
        return a > 0
    if name == "tanh":
        return 1 - a * a
    return a * (1 - a)


class Dense(Layer):
    """y = act(x @ W + b) at every step; act: None | "relu" | "tanh" | "sigmoid".

    Parameters: W: (in, out), b: (out,). With ``lengths`` the outputs of the
    padding steps are zero (as a cell's are) and nothing flows back through them.
    """

    def __init__(self, in_features: int, out_features: int, activation: str | None = None, *,
                 backend: str | None = None, dtype: Any = "float32",
                 seed: int | None = None) -> None:
        check_choice("activation", activation, DENSE_ACTIVATIONS)
        super().__init__(backend, dtype)
        self.activation = activation
        self.in_features = check_int("in_features", in_features, 1)
        self.out_features = check_int("out_features", out_features, 1)
        self.reset_parameters(seed)

    def _init_host(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        k = 1.0 / np.sqrt(self.in_features)
        return {"W": rng.uniform(-k, k, (self.in_features, self.out_features)),
                "b": rng.uniform(-k, k, self.out_features)}

    def spec(self) -> dict[str, Any]:
        return {"type": "Dense", "in_features": self.in_features,
                "out_features": self.out_features, "activation": self.activation}

    contiguous_input = False

    def _forward(self, x: Any, state: State, lengths: Any, training: bool = True) -> tuple:
        """x: (T, B, in) -> y: (T, B, out), None, cache (None unless training)."""
        W, b = self._params["W"], self._params["b"]
        xp = array_module(x=x, W=W)
        active = None if lengths is None else active_mask(lengths, x.shape[0], x.shape[1], xp)
        y = _act(self.activation, x @ W + b, xp)
        if active is not None:
            y = y * active
        return y, None, (x, y, active) if training else None

    def backward(self, dy: Any, dstate: State, cache: Cache) -> tuple:
        """dy: (T, B, out) -> dx: (T, B, in), None, grads {W, b}."""
        x, y, active = cache
        array_module(dy=dy, y=y)
        check_array("dy", dy, (("T", y.shape[0]), ("B", y.shape[1]), ("out", y.shape[2])),
                    y.dtype, contiguous=False)
        self.check_state(dstate, y.shape[1], "dstate")
        dz = dy if self.activation is None else dy * _act_grad(self.activation, y)
        if active is not None:
            dz = dz * active
        W = self._params["W"]
        dz2 = dz.reshape(-1, W.shape[1])
        grads = {"W": x.reshape(-1, W.shape[0]).T @ dz2, "b": dz2.sum(axis=0)}
        return dz @ W.T, None, grads


# ----------------------------------------------------------------------------
# Embedding


class Embedding(Layer):
    """A lookup table: integer ids (T, B) -> their rows of W, (T, B, dim).

    Parameters: W: (num_embeddings, dim), drawn from N(0, 1) as PyTorch's
    ``nn.Embedding``. The backward sums the rows of dy per id (an id seen k times
    gets the sum of k rows). It must be a model's first layer: a model that starts
    with it takes ids everywhere (``model(x)``, ``fit``, ``evaluate``, ``generate``).
    ``in_features`` is ``num_embeddings`` (the size of the id space).
    """

    tokens = True

    def __init__(self, num_embeddings: int, dim: int, *, backend: str | None = None,
                 dtype: Any = "float32", seed: int | None = None) -> None:
        super().__init__(backend, dtype)
        self.num_embeddings = self.in_features = check_int("num_embeddings", num_embeddings, 1)
        self.dim = self.out_features = check_int("dim", dim, 1)
        self.reset_parameters(seed)

    def _init_host(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"W": rng.standard_normal((self.num_embeddings, self.dim))}

    def spec(self) -> dict[str, Any]:
        return {"type": "Embedding", "num_embeddings": self.num_embeddings, "dim": self.dim}

    def check_input(self, name: str, x: Any) -> Any:
        """x: (T, B) integer ids in [0, num_embeddings), on the layer's device."""
        x = check_ids(name, x, self.num_embeddings, (("T", None), ("B", None)))
        self.check_data(name, x)
        return x

    def _forward(self, x: Any, state: State, lengths: Any, training: bool = True) -> tuple:
        """x: (T, B) ids -> y: (T, B, dim), None, cache (the ids; None unless training)."""
        y = self._be.embedding_forward(x, self._params["W"])
        return y, None, x if training else None

    def backward(self, dy: Any, dstate: State, cache: Cache) -> tuple:
        """dy: (T, B, dim) -> None (ids have no gradient), None, grads {W}."""
        ids = cache
        array_module(dy=dy, ids=ids)
        check_array("dy", dy, (("T", ids.shape[0]), ("B", ids.shape[1]), ("dim", self.dim)),
                    self.dtype, contiguous=False)
        self.check_state(dstate, ids.shape[1], "dstate")
        return None, None, {"W": self._be.embedding_backward(dy, ids, self.num_embeddings)}


# ----------------------------------------------------------------------------
# Sequential


class Sequential(Layer):
    """Layers applied one after another; parameters are named ``"<index>.<name>"``.

    ``backend``/``dtype`` given: every layer is moved/cast to it; None: the layers
    must already agree. ``seed`` given: every layer is re-initialised, in order,
    from one generator seeded with it (reproducible models in one argument).
    """

    def __init__(self, *layers: Layer, backend: str | None = None, dtype: Any = None,
                 seed: int | None = None) -> None:
        if not layers:
            raise ValueError("layers: expected at least one layer, got none")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer) or isinstance(layer, Sequential):
                raise TypeError(f"layers[{i}]: expected an RNN, LSTM, GRU, Dense or "
                                f"Embedding layer, got {type(layer).__name__}")
            if i and layer.tokens:
                raise ValueError(f"layers[{i}]: an Embedding takes integer ids, so it can "
                                 f"only be the first layer")
        for i, (a, b) in enumerate(zip(layers, layers[1:], strict=False)):
            if a.out_features != b.in_features:
                raise ValueError(f"layers[{i + 1}]: in_features={b.in_features} does not match "
                                 f"the previous layer's out_features={a.out_features}")
        self.layers = list(layers)
        if dtype is not None:
            dt = check_dtype(dtype)
            for layer in self.layers:
                if layer.dtype != dt:
                    layer._params = {k: v.astype(dt) for k, v in layer._params.items()}
                    layer.dtype = dt
        if backend is not None:
            for layer in self.layers:
                layer.to(backend)
        for name in ("dtype", "backend"):
            kinds = {str(getattr(layer, name)) for layer in self.layers}
            if len(kinds) > 1:
                raise ValueError(f"layers: mixed {name}s {sorted(kinds)}; pass {name}= to "
                                 f"Sequential or build every layer with the same {name}")
        self.dtype, self.backend = self.layers[0].dtype, self.layers[0].backend
        self._be = self.layers[0]._be
        self.in_features = self.layers[0].in_features
        self.contiguous_input = self.layers[0].contiguous_input
        self.tokens = self.layers[0].tokens
        self.out_features = self.layers[-1].out_features
        if seed is not None:
            self.reset_parameters(seed)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]

    def reset_parameters(self, seed: int | np.random.Generator | None = None) -> None:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        for layer in self.layers:
            layer.reset_parameters(rng)

    def parameters(self) -> dict[str, Any]:
        return {f"{i}.{k}": v for i, layer in enumerate(self.layers)
                for k, v in layer._params.items()}

    def spec(self) -> dict[str, Any]:
        return {"type": "Sequential", "layers": [layer.spec() for layer in self.layers]}

    def to(self, backend: str) -> Sequential:
        for layer in self.layers:
            layer.to(backend)
        self._be, self.backend = self.layers[0]._be, backend
        return self

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner},\n)"

    def check_input(self, name: str, x: Any) -> Any:
        """x as the first layer takes it: (T, B, in_features), or (T, B) ids after an
        Embedding."""
        return self.layers[0].check_input(name, x)

    def check_state(self, state: State, B: int, name: str = "state") -> State:
        """A tuple with one state per layer (None for Dense), or None."""
        if state is None:
            return None
        if not isinstance(state, (tuple, list)):
            raise TypeError(f"{name}: expected a tuple of {len(self.layers)} layer states "
                            f"(None for Dense), got {type(state).__name__}")
        if len(state) != len(self.layers):
            raise ValueError(f"{name}: expected a tuple of {len(self.layers)} layer states "
                             f"(None for Dense), got {len(state)} entries")
        return tuple(layer.check_state(s, B, f"{name}[{i}]")
                     for i, (layer, s) in enumerate(zip(self.layers, state)))

    def _forward(self, x: Any, state: State, lengths: Any, training: bool = True) -> tuple:
        """x: (T, B, I), state: tuple (one per layer) or None -> y, state tuple, caches
        (None unless training)."""
        states, caches = [], []
        for i, layer in enumerate(self.layers):
            x, s, c = layer._forward(x, None if state is None else state[i], lengths, training)
            states.append(s)
            caches.append(c)
        return x, tuple(states), caches if training else None

    def backward(self, dy: Any, dstate: State, cache: Cache) -> tuple:
        """dy: (T, B, O), dstate: tuple or None -> dx: (T, B, I), dstate0 tuple, grads."""
        if dstate is not None and (not isinstance(dstate, (tuple, list))
                                   or len(dstate) != len(self.layers)):
            raise TypeError(f"dstate: expected a tuple of {len(self.layers)} layer state "
                            f"gradients or None, got {type(dstate).__name__}")
        grads = {}
        dstates = [None] * len(self.layers)
        for i in reversed(range(len(self.layers))):
            dy, dstates[i], g = self.layers[i].backward(
                dy, None if dstate is None else dstate[i], cache[i])
            for k, v in g.items():
                grads[f"{i}.{k}"] = v
        return dy, tuple(dstates), grads
