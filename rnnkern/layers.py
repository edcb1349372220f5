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

import contextlib
import contextvars
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import backends
from ._threads import one_pool
from ._validate import (
    GATES,
    PARAMS,
    _is_cupy,
    array_module,
    as_array,
    check_activation,
    check_array,
    check_bool,
    check_choice,
    check_ids,
    check_int,
    check_lengths,
    check_probability,
    with_layout_hint,
)
from .backends.numpy_ref import reversal_index, reverse_steps

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
    #: whether each output depends only on the steps up to it (False for a layer that
    #: reads backwards too: it cannot run in pieces, drive itself or generate)
    causal = True

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
        training = check_bool("training", training)
        return self._forward(*self.check_call(x, state, lengths), training)

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


def _own_generator(seed: int | np.random.Generator | None) -> np.random.Generator:
    """A layer's own generator for dropout masks: a child of ``seed``'s generator (which
    it does not advance, so the weights drawn after it stay the same)."""
    if isinstance(seed, np.random.Generator):
        return seed.spawn(1)[0]
    return np.random.default_rng(seed)


_TRAINING_GENERATOR: contextvars.ContextVar[np.random.Generator | None] = \
    contextvars.ContextVar("rnnkern_training_generator", default=None)


@contextlib.contextmanager
def drawing_from(rng: np.random.Generator) -> Iterator[None]:
    """Inside the block every dropout mask is drawn from ``rng`` (``fit`` passes the
    generator it shuffles with, so one seed fixes the whole run and a checkpoint of that
    generator resumes it exactly)."""
    token = _TRAINING_GENERATOR.set(rng)
    try:
        yield
    finally:
        _TRAINING_GENERATOR.reset(token)


def dropout_mask(shape: tuple[int, ...], p: float, dtype: np.dtype, xp: Any,
                 own: np.random.Generator) -> Any:
    """Inverted dropout's mask: 0 with probability ``p``, else 1 / (1 - p), of ``shape``;
    drawn on the host (the same mask on every backend) from the generator of
    ``drawing_from`` or else ``own``."""
    rng = _TRAINING_GENERATOR.get() or own
    keep = rng.random(shape, dtype=dtype) >= p
    return move(keep * dtype.type(1 / (1 - p)), xp)


class _Cell(Layer):
    """A recurrent layer over one of the backend's cells: one layer in one direction, or
    PyTorch's stack of ``num_layers`` layers, each in one or both directions.

    A stack's parameters are named as PyTorch names them, ``<name>_l<layer>`` and
    ``<name>_l<layer>_reverse`` (``W_l0``, ``R_l1_reverse``, ...); its state has
    PyTorch's layout: h: (num_layers * directions, B, H) (LSTM: (h, c), both so),
    entry ``layer * directions + direction``. The reverse direction reads each row
    backwards within its own length; layer l > 0 reads the previous layer's outputs,
    both directions concatenated, after dropout (training only).
    """

    cell: str
    activation = "tanh"
    #: how a two-way layer's directions combine: "concat" (T, B, 2H) or "sum" (T, B, H)
    merge = "concat"

    def __init__(self, in_features: int, hidden: int, *, num_layers: int = 1,
                 dropout: float = 0.0, bidirectional: bool = False,
                 backend: str | None = None, dtype: Any = "float32",
                 seed: int | None = None) -> None:
        super().__init__(backend, dtype)
        self.in_features = check_int("in_features", in_features, 1)
        self.hidden = check_int("hidden", hidden, 1)
        self.num_layers = check_int("num_layers", num_layers, 1)
        self.dropout = check_probability("dropout", dropout)
        self.bidirectional = check_bool("bidirectional", bidirectional)
        if self.dropout and self.num_layers == 1:
            warnings.warn(f"dropout={self.dropout} acts between stacked layers, so with "
                          f"num_layers=1 it does nothing (as in torch.nn)", stacklevel=3)
        self.directions = 2 if self.bidirectional else 1
        self.out_features = self.hidden * (self.directions if self.merge == "concat" else 1)
        self.causal = not self.bidirectional
        self.reset_parameters(seed)

    @property
    def _single(self) -> bool:
        """One layer, one direction: parameters ``W, R, b`` and state (B, H)."""
        return self.num_layers == 1 and self.directions == 1

    def _suffix(self, layer: int, direction: int) -> str:
        if self._single:
            return ""
        return f"_l{layer}" + ("_reverse" if direction else "")

    def _units(self) -> Iterator[tuple[int, int, str]]:
        """(layer, direction, parameter-name suffix), in the state's order."""
        for layer in range(self.num_layers):
            for d in range(self.directions):
                yield layer, d, self._suffix(layer, d)

    def _unit(self, suffix: str) -> dict[str, Any]:
        """One layer-direction's parameters under the kernels' names (W, R, b, b_hn)."""
        return {k: self._params[k + suffix] for k in PARAMS[self.cell]}

    def _init_host(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        # in PyTorch's order: every layer-direction draws W, R, then both biases
        k = 1.0 / np.sqrt(self.hidden)
        H = self.hidden
        GH = GATES[self.cell] * H
        out = {}
        for layer, _, sfx in self._units():
            inputs = self.in_features if layer == 0 else H * self.directions
            out["W" + sfx] = rng.uniform(-k, k, (inputs, GH))
            out["R" + sfx] = rng.uniform(-k, k, (H, GH))
            b_ih, b_hh = rng.uniform(-k, k, GH), rng.uniform(-k, k, GH)
            if self.cell == "gru":  # PyTorch's bias_hh for n sits inside r * (...): apart
                out["b" + sfx] = b_ih + np.concatenate([b_hh[: 2 * H], np.zeros(H)])
                out["b_hn" + sfx] = b_hh[2 * H :]
            else:
                out["b" + sfx] = b_ih + b_hh
        return out

    def reset_parameters(self, seed: int | np.random.Generator | None = None) -> None:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        self._dropout_rng = _own_generator(rng)
        super().reset_parameters(rng)

    def spec(self) -> dict[str, Any]:
        out = {"type": type(self).__name__, "in_features": self.in_features,
               "hidden": self.hidden}
        for name, default in (("num_layers", 1), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, name) != default:  # files of single layers stay as they were
                out[name] = getattr(self, name)
        return out

    # -- state ----------------------------------------------------------------
    def _check_h(self, name: str, h: Any, B: int, stacked: bool = False) -> Any:
        dims = (("B", B), ("H", self.hidden))
        if stacked:
            dims = (("num_layers * directions", self.num_layers * self.directions),) + dims
        return as_array(name, h, dims, self.dtype)

    def _check_unit_state(self, state: Any, B: int, name: str, stacked: bool = False) -> Any:
        """h: (B, H) (RNN, GRU) or (h, c), each (B, H) (LSTM); stacked: (L * D, B, H) each."""
        if self.cell != "lstm":
            return self._check_h(name, state, B, stacked)
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            lead = f"num_layers * directions={self.num_layers * self.directions}, " \
                if stacked else ""
            raise TypeError(f"{name}: expected (h, c), two arrays of shape ({lead}B={B}, "
                            f"H={self.hidden}), or None, got {type(state).__name__}")
        return (self._check_h(f"{name}[0]", state[0], B, stacked),
                self._check_h(f"{name}[1]", state[1], B, stacked))

    def check_state(self, state: State, B: int, name: str = "state") -> State:
        """None, or one layer-direction's state (see ``_check_unit_state``), stacked
        along a first axis of num_layers * directions for a stack."""
        if state is None:
            return None
        return self._check_unit_state(state, B, name, stacked=not self._single)

    def _split_state(self, state: State) -> list:
        """The stack's state -> one state per layer-direction (None: zeros)."""
        n = self.num_layers * self.directions
        if state is None:
            return [None] * n
        if self._single:
            return [state]
        if isinstance(state, tuple):  # (h, c)
            return [(state[0][k], state[1][k]) for k in range(n)]
        return [state[k] for k in range(n)]

    def _join_state(self, states: list, xp: Any) -> State:
        if self._single:
            return states[0]
        if isinstance(states[0], tuple):
            return (xp.stack([s[0] for s in states]), xp.stack([s[1] for s in states]))
        return xp.stack(states)

    # -- computing ------------------------------------------------------------
    def _run(self, p: dict[str, Any], x: Any, state: Any, lengths: Any,
             training: bool) -> tuple:
        """One layer-direction's kernels: x: (T, B, I), its state (h0, or (h0, c0)) or
        None, p: the kernels' parameters -> y: (T, B, H), final state, cache."""
        be = self._be
        if self.cell == "lstm":
            h0, c0 = (None, None) if state is None else state
            return be.lstm_forward(x, h0, c0, p["W"], p["R"], p["b"], lengths=lengths,
                                   training=training)
        if self.cell == "gru":
            return be.gru_forward(x, state, p["W"], p["R"], p["b"], p["b_hn"],
                                  lengths=lengths, training=training)
        return be.rnn_forward(x, state, p["W"], p["R"], p["b"], activation=self.activation,
                              lengths=lengths, training=training)

    def _back(self, dy: Any, dstate: Any, cache: Cache) -> tuple:
        """The backward of ``_run``: dy: (T, B, H) or None, the final state's gradient or
        None -> dx: (T, B, I), the initial state's gradient, grads under the kernels'
        names."""
        if self.cell == "lstm" and dstate is not None and \
                (not isinstance(dstate, (tuple, list)) or len(dstate) != 2):
            raise TypeError(f"dstate: expected (dhT, dcT), two (B, H) arrays or None, "
                            f"got {type(dstate).__name__}")
        return getattr(self._be, f"{self.cell}_backward")(dy, dstate, cache)

    def _forward(self, x: Any, state: State, lengths: Any, training: bool = True) -> tuple:
        """x: (T, B, I), state or None -> y: (T, B, out_features), state, cache."""
        if self._single:
            return self._run(self._params, x, state, lengths, training)
        xp = array_module(x=x)
        T, B = x.shape[:2]
        order = reversal_index(lengths, T, B, xp) if self.directions == 2 else None
        initial, finals, caches, masks = self._split_state(state), [], [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.directions):
                xd = reverse_steps(x, order, xp) if d else x
                y, s, c = self._run(self._unit(self._suffix(layer, d)), xd,
                                    initial[len(finals)], lengths, training)
                outs.append(reverse_steps(y, order, xp) if d else y)
                finals.append(s)
                caches.append(c)
            x = outs[0] if len(outs) == 1 else \
                xp.concatenate(outs, axis=2) if self.merge == "concat" else outs[0] + outs[1]
            mask = None
            if training and self.dropout and layer < self.num_layers - 1:
                mask = dropout_mask(x.shape, self.dropout, self.dtype, xp, self._dropout_rng)
                x = x * mask
            masks.append(mask)
        cache = (T, B, order, caches, masks) if training else None
        return x, self._join_state(finals, xp), cache

    def backward(self, dy: Any, dstate: State, cache: Cache) -> tuple:
        """dy: (T, B, out_features) or None, dstate: as the state or None -> dx: (T, B, I),
        dstate0 (as the state), grads by parameter name."""
        if self._single:
            return self._back(dy, dstate, cache)
        if cache is None:
            raise ValueError("cache: None, from a forward with training=False (an inference "
                             "pass keeps nothing for a backward); run it with training=True")
        T, B, order, caches, masks = cache
        xp = backend_xp(self._be)  # dy may be None
        if dy is not None:
            check_array("dy", dy, (("T", T), ("B", B), ("out_features", self.out_features)),
                        self.dtype, contiguous=False)
        dfinal = self._split_state(self.check_state(dstate, B, "dstate"))
        dinitial, grads = [None] * len(dfinal), {}
        H, D = self.hidden, self.directions
        for layer in reversed(range(self.num_layers)):
            if dy is not None and masks[layer] is not None:
                dy = dy * masks[layer]
            dx = None
            for d in range(D):
                k = layer * D + d
                dyd = dy
                if dy is not None and D == 2 and self.merge == "concat":
                    dyd = dy[:, :, d * H : (d + 1) * H]
                if dyd is not None:
                    dyd = reverse_steps(dyd, order, xp) if d else xp.ascontiguousarray(dyd)
                dxd, dinitial[k], g = self._back(dyd, dfinal[k], caches[k])
                if d:
                    dxd = reverse_steps(dxd, order, xp)
                dx = dxd if dx is None else dx + dxd
                sfx = self._suffix(layer, d)
                grads.update({name + sfx: v for name, v in g.items()})
            dy = dx
        return dy, self._join_state(dinitial, xp), grads


class RNN(_Cell):
    """Elman RNN: h_t = act(x_t @ W + h_{t-1} @ R + b); act: "tanh" | "relu" | "identity".

    Parameters: W: (I, H), R: (H, H), b: (H,). State: h: (B, H).
    ``num_layers``, ``dropout``, ``bidirectional``: the stack ``torch.nn.RNN`` builds
    (parameter names and state layout in ``_Cell``).
    """

    cell = "rnn"

    def __init__(self, in_features: int, hidden: int, activation: str = "tanh", *,
                 num_layers: int = 1, dropout: float = 0.0, bidirectional: bool = False,
                 backend: str | None = None, dtype: Any = "float32",
                 seed: int | None = None) -> None:
        self.activation = check_activation(activation)
        super().__init__(in_features, hidden, num_layers=num_layers, dropout=dropout,
                         bidirectional=bidirectional, backend=backend, dtype=dtype, seed=seed)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "activation": self.activation}


class LSTM(_Cell):
    """LSTM, gate order (i, f, g, o) as PyTorch.

    Parameters: W: (I, 4H), R: (H, 4H), b: (4H,). State: (h, c), each (B, H).
    ``num_layers``, ``dropout``, ``bidirectional``: the stack ``torch.nn.LSTM`` builds
    (parameter names and state layout in ``_Cell``).
    """

    cell = "lstm"


class GRU(_Cell):
    """GRU, gate order (r, z, n), PyTorch's formulation.

    Parameters: W: (I, 3H), R: (H, 3H), b: (3H,), b_hn: (H,). State: h: (B, H).
    ``num_layers``, ``dropout``, ``bidirectional``: the stack ``torch.nn.GRU`` builds
    (parameter names and state layout in ``_Cell``).
    """

    cell = "gru"


class Bidirectional(_Cell):
    """A cell read in both directions, as Keras' ``Bidirectional``: the forward direction
    is ``cell``'s weights (copied), the reverse a fresh draw (from ``seed``) that reads
    each row backwards within its own length, padding left at the end.

    merge: "concat" -> y: (T, B, 2H), [forward, backward] along features; "sum" -> (T, B, H).
    Parameters: the cell's under the names ``<name>_l0`` and ``<name>_l0_reverse``.
    State: (forward state, reverse state), each as the cell's; the reverse direction
    starts from its entry at step lengths[b] - 1 and ends at step 0.
    """

    def __init__(self, cell: _Cell, merge: str = "concat", *, seed: int | None = None) -> None:
        if not isinstance(cell, _Cell) or isinstance(cell, Bidirectional):
            raise TypeError(f"cell: expected an RNN, LSTM or GRU layer, "
                            f"got {type(cell).__name__}")
        if not cell._single:
            raise ValueError(f"cell: expected one layer in one direction, got num_layers="
                             f"{cell.num_layers}, bidirectional={cell.bidirectional}; a "
                             f"stack reads both directions with bidirectional=True")
        self.merge = check_choice("merge", merge, ("concat", "sum"))
        self.cell, self.activation = cell.cell, cell.activation
        self._inner = type(cell)
        super().__init__(cell.in_features, cell.hidden, bidirectional=True,
                         backend=cell.backend, dtype=cell.dtype, seed=seed)
        for k, v in cell.parameters().items():
            self._params[k + "_l0"][...] = v

    def check_state(self, state: State, B: int, name: str = "state") -> State:
        """(forward state, reverse state), each as one cell's, or None."""
        if state is None:
            return None
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"{name}: expected (forward state, reverse state), got "
                            f"{type(state).__name__}")
        return tuple(self._check_unit_state(s, B, f"{name}[{d}]") for d, s in enumerate(state))

    def _split_state(self, state: State) -> list:
        return [None, None] if state is None else list(state)

    def _join_state(self, states: list, xp: Any) -> State:
        return tuple(states)

    def spec(self) -> dict[str, Any]:
        cell = {"type": self._inner.__name__, "in_features": self.in_features,
                "hidden": self.hidden}
        if self.cell == "rnn":
            cell["activation"] = self.activation
        return {"type": "Bidirectional", "cell": cell, "merge": self.merge}


# ----------------------------------------------------------------------------
# Dense


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
        y, cache = self._be.dense_forward(x, self._params["W"], self._params["b"],
                                          self.activation, lengths, training)
        return y, None, cache

    def backward(self, dy: Any, dstate: State, cache: Cache) -> tuple:
        """dy: (T, B, out) -> dx: (T, B, in), None, grads {W, b}."""
        y = cache["y"]
        array_module(dy=dy, y=y)
        check_array("dy", dy, (("T", y.shape[0]), ("B", y.shape[1]), ("out", y.shape[2])),
                    y.dtype, contiguous=False)
        self.check_state(dstate, y.shape[1], "dstate")
        dx, grads = self._be.dense_backward(dy, cache)
        return dx, None, grads


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
# Dropout


class Dropout(Layer):
    """Inverted dropout: in training each feature of each step is zeroed with probability
    ``p`` and the rest scaled by 1 / (1 - p); an inference pass (``model(x)``,
    ``evaluate``, ``generate``) passes x through.

    Masks are drawn from the generator ``fit`` shuffles with (else the layer's own,
    from ``seed``) and kept in the cache, so the backward is exact for the mask drawn.
    Takes any number of features: x: (T, B, F) -> y: (T, B, F) (in a Sequential, F is
    the previous layer's ``out_features``). No parameters, no state.
    """

    contiguous_input = False

    def __init__(self, p: float, *, backend: str | None = None, dtype: Any = "float32",
                 seed: int | None = None) -> None:
        super().__init__(backend, dtype)
        self.p = check_probability("p", p)
        self.in_features = self.out_features = None  # type: ignore[assignment]
        self.reset_parameters(seed)

    def reset_parameters(self, seed: int | np.random.Generator | None = None) -> None:
        """A fresh mask generator from ``seed`` (no parameters to draw)."""
        self._rng = _own_generator(seed)

    def spec(self) -> dict[str, Any]:
        return {"type": "Dropout", "p": self.p}

    def _forward(self, x: Any, state: State, lengths: Any, training: bool = True) -> tuple:
        """x: (T, B, F) -> y: (T, B, F), None, cache (the mask, or None without one)."""
        if not training:
            return x, None, None
        if not self.p:
            return x, None, (x.shape, None)
        mask = dropout_mask(x.shape, self.p, self.dtype, array_module(x=x), self._rng)
        return x * mask, None, (x.shape, mask)

    def backward(self, dy: Any, dstate: State, cache: Cache) -> tuple:
        """dy: (T, B, F) -> dx: dy times the mask, None, no grads."""
        shape, mask = cache
        if dy is None:
            return None, None, {}
        check_array("dy", dy, tuple(zip(("T", "B", "F"), shape, strict=True)), self.dtype,
                    contiguous=False)
        return (dy if mask is None else dy * mask), None, {}


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
                raise TypeError(f"layers[{i}]: expected an RNN, LSTM, GRU, Bidirectional, "
                                f"Dense, Dropout or Embedding layer, got {type(layer).__name__}")
            if i and layer.tokens:
                raise ValueError(f"layers[{i}]: an Embedding takes integer ids, so it can "
                                 f"only be the first layer")
        features = None  # what flows between layers (Dropout takes any number of features)
        for i, layer in enumerate(layers):
            if None not in (features, layer.in_features) and features != layer.in_features:
                raise ValueError(f"layers[{i}]: in_features={layer.in_features} does not match "
                                 f"the previous layer's out_features={features}")
            features = features if layer.out_features is None else layer.out_features
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
        # Dropout has no parameters: it takes the dtype and backend of the others
        weighted = [la for la in self.layers if not isinstance(la, Dropout)] or self.layers
        for name in ("dtype", "backend"):
            kinds = {str(getattr(layer, name)) for layer in weighted}
            if len(kinds) > 1:
                raise ValueError(f"layers: mixed {name}s {sorted(kinds)}; pass {name}= to "
                                 f"Sequential or build every layer with the same {name}")
        for layer in self.layers:
            if isinstance(layer, Dropout):
                layer.dtype = weighted[0].dtype
                layer.to(weighted[0].backend)
        self.dtype, self.backend = weighted[0].dtype, weighted[0].backend
        self._be = weighted[0]._be
        self.in_features = next((la.in_features for la in self.layers
                                 if la.in_features is not None), None)
        # x reaches the first layer with a width unchanged (Dropout passes it through)
        lead = next((i for i, la in enumerate(self.layers) if la.in_features is not None), 0)
        self.contiguous_input = any(la.contiguous_input for la in self.layers[: lead + 1])
        self.tokens = self.layers[0].tokens
        self.out_features = features
        self.causal = all(layer.causal for layer in self.layers)
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
        if self.layers[0].in_features is None:  # a Dropout first: the next layer's width
            return Layer.check_input(self, name, x)
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
