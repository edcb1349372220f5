"""Argument checks shared by every backend and layer.

Everything public validates here before any kernel runs, so that a wrong shape
becomes a ``ValueError`` naming the argument (what was received, what was
expected) instead of a crash or an out-of-bounds access inside a compiled kernel.
A wrong *type* (not an array at all) is a ``TypeError``.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

#: gates per cell: the G in W: (I, G*H)
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
#: parameter names per cell, in the order of the kernels' signatures
PARAMS = {"rnn": ("W", "R", "b"), "lstm": ("W", "R", "b"), "gru": ("W", "R", "b", "b_hn")}
#: how messages name the gate axis of W, R and b
GATE_LABELS = {1: "1*H", 3: "3*H", 4: "4*H"}
RNN_ACTIVATIONS = ("tanh", "relu", "identity")
#: RNN activation -> the integer code the compiled kernels branch on (the Numba kernels
#: and the ``Activation`` enum of the CUDA kernels' common.cuh use the same numbers)
ACTIVATION_CODES = {name: code for code, name in enumerate(RNN_ACTIVATIONS)}
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Dims(NamedTuple):
    """Sizes of one recurrent call, read off validated arguments."""

    T: int
    B: int
    I: int  # noqa: E741 - the contract's name for the input width
    H: int
    dtype: np.dtype
    xp: Any  # the array module: numpy or cupy


def _is_cupy(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def array_module(**arrays: Any) -> Any:
    """Return numpy or cupy for the given arrays; refuse a mix of both.

    None values are ignored. Raises ValueError naming the odd argument out, since
    rnnkern never copies between host and device behind the user's back.
    """
    # fast path (every call of every kernel goes through here): all host arrays
    if all(a is None or type(a) is np.ndarray for a in arrays.values()):
        return np
    kinds = {name: _is_cupy(a) for name, a in arrays.items() if a is not None}
    if len(set(kinds.values())) > 1:
        first = next(iter(kinds))
        odd = next(n for n, k in kinds.items() if k != kinds[first])

        def where(n: str) -> str:
            return "a cupy (GPU) array" if kinds[n] else "a numpy (CPU) array"

        raise ValueError(
            f"{odd}: is {where(odd)} but {first} is {where(first)}; put every array on "
            "the same device (rnnkern never copies between host and device silently)"
        )
    if any(kinds.values()):
        import cupy

        return cupy
    return np


def _spec(dims: tuple[tuple[str, int | None], ...]) -> str:
    parts = [label if want is None else f"{label}={want}" for label, want in dims]
    return "(" + ", ".join(parts) + ")" if len(parts) != 1 else "(" + parts[0] + ",)"


def check_array(
    name: str,
    a: Any,
    dims: tuple[tuple[str, int | None], ...],
    dtype: np.dtype | None = None,
    contiguous: bool = True,
) -> Any:
    """Check that ``a`` is a float32/float64 array of the shape ``dims`` describes.

    dims: one ``(label, size)`` per axis; ``size=None`` leaves that axis free
    (but still >= 1). dtype: the dtype ``a`` must share (that of ``x``), or None.
    The messages are built only on failure: this runs before every kernel call.
    """
    shape = getattr(a, "shape", None)
    if shape is None or not (hasattr(a, "dtype") and hasattr(a, "flags")):
        raise TypeError(f"{name}: expected an array of shape {_spec(dims)}, "
                        f"got {type(a).__name__}")
    if len(shape) != len(dims):
        raise ValueError(f"{name}: expected a {len(dims)}-d array of shape {_spec(dims)}, "
                         f"got shape {tuple(shape)}")
    for (_, want), got in zip(dims, shape):
        if (want is not None and got != want) or got < 1:
            raise ValueError(f"{name}: expected shape {_spec(dims)} (every size >= 1), "
                             f"got shape {tuple(shape)}")
    if a.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name}: expected dtype float32 or float64, got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise ValueError(
            f"{name}: dtype {a.dtype} does not match x's dtype {dtype}; "
            "every array of one call must share a dtype"
        )
    if contiguous and not a.flags.c_contiguous:
        raise ValueError(
            f"{name}: expected a C-contiguous array of shape {_spec(dims)}, got a strided "
            "view; pass np.ascontiguousarray(...) (rnnkern never copies silently)"
        )
    return a


def check_lengths(lengths: Any, T: int, B: int, xp: Any) -> Any:
    """Validate ``lengths: (B,)`` integer with ``1 <= lengths[b] <= T``; None passes.

    Lists and tuples are accepted and converted once (to ``xp``'s int64).
    """
    if lengths is None:
        return None
    if isinstance(lengths, (list, tuple)):
        lengths = xp.asarray(lengths)
        if lengths.dtype.kind == "f":
            raise ValueError(
                f"lengths: expected integers of shape (B={B},), got floats {lengths.tolist()}"
            )
    if not (hasattr(lengths, "shape") and hasattr(lengths, "dtype")):
        raise TypeError(f"lengths: expected an integer array of shape (B={B},), "
                        f"got {type(lengths).__name__}")
    if lengths.dtype.kind not in "iu":
        raise ValueError(
            f"lengths: expected an integer array of shape (B={B},), got dtype {lengths.dtype}"
        )
    if lengths.shape != (B,):
        raise ValueError(f"lengths: expected shape (B={B},), got shape {tuple(lengths.shape)}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > T:
        raise ValueError(f"lengths: expected values in [1, T={T}], got values in [{lo}, {hi}]")
    return lengths


def check_activation(activation: Any) -> str:
    if activation not in RNN_ACTIVATIONS:
        raise ValueError(
            f"activation: expected one of {', '.join(map(repr, RNN_ACTIVATIONS))}, "
            f"got {activation!r}"
        )
    return activation


def _plain(a: Any, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """True when ``a`` is a C-contiguous host array of exactly this shape and dtype."""
    return (type(a) is np.ndarray and a.shape == shape and a.dtype == dtype
            and a.flags.c_contiguous)


@functools.lru_cache(maxsize=256)
def _host_dims(T: int, B: int, I: int, H: int, dtype: np.dtype) -> Dims:  # noqa: E741
    return Dims(T, B, I, H, dtype, np)  # remembered: a NamedTuple costs ~0.25 us to build


def _plain_forward(cell: str, G: int, x: Any, h0: Any, c0: Any, W: Any, R: Any, b: Any,
                   b_hn: Any) -> Dims | None:
    """Dims when every array of a forward call is plain and right, else None.

    Only a fast yes (one expression, calls only for the optional arrays: this runs before
    every kernel call and took a fifth of a whole call at the smallest shapes); anything
    else goes through the full checks, which alone build the error messages.
    """
    nd = np.ndarray
    if not (type(x) is nd and x.ndim == 3 and type(R) is nd and R.ndim == 2):
        return None
    T, B, I = x.shape
    H = R.shape[0]
    GH = G * H
    dt = x.dtype
    ok = (T >= 1 and B >= 1 and I >= 1 and H >= 1
          and (dt == FLOAT_DTYPES[0] or dt == FLOAT_DTYPES[1]) and x.flags.c_contiguous
          and R.shape == (H, GH) and R.dtype == dt and R.flags.c_contiguous
          and type(W) is nd and W.shape == (I, GH) and W.dtype == dt and W.flags.c_contiguous
          and type(b) is nd and b.shape == (GH,) and b.dtype == dt and b.flags.c_contiguous
          and (cell != "gru" or _plain(b_hn, (H,), dt))
          and (h0 is None or _plain(h0, (B, H), dt)) and (c0 is None or _plain(c0, (B, H), dt)))
    return _host_dims(T, B, I, H, dt) if ok else None


def check_forward(
    cell: str,
    x: Any,
    h0: Any,
    c0: Any,
    W: Any,
    R: Any,
    b: Any,
    b_hn: Any = None,
    lengths: Any = None,
    contiguous: bool = True,
) -> tuple[Dims, Any]:
    """Validate the arguments of ``<cell>_forward``; return ``(dims, lengths)``.

    x: (T, B, I)   W: (I, G*H)   R: (H, G*H)   b: (G*H,)   b_hn: (H,) GRU only
    h0, c0: (B, H) or None   lengths: (B,) int or None
    """
    G = GATES[cell]
    # the common case, in a few microseconds: every array plain, on the host and right
    if contiguous and (lengths is None or type(lengths) in (np.ndarray, list, tuple)):
        d = _plain_forward(cell, G, x, h0, c0, W, R, b, b_hn)
        if d is not None:
            return d, check_lengths(lengths, d.T, d.B, np)
    xp = array_module(x=x, h0=h0, c0=c0, W=W, R=R, b=b, b_hn=b_hn,
                      lengths=None if isinstance(lengths, (list, tuple)) else lengths)
    check_array("x", x, (("T", None), ("B", None), ("I", None)), contiguous=contiguous)
    T, B, I = x.shape
    dtype = x.dtype
    if not (hasattr(R, "shape") and getattr(R, "ndim", 0) == 2):
        check_array("R", R, (("H", None), ("G*H", None)), dtype, contiguous)
    H = R.shape[0]
    GH = GATE_LABELS[G]
    check_array("R", R, (("H", H), (GH, G * H)), dtype, contiguous)
    check_array("W", W, (("I", I), (GH, G * H)), dtype, contiguous)
    check_array("b", b, ((GH, G * H),), dtype, contiguous)
    if cell == "gru":
        check_array("b_hn", b_hn, (("H", H),), dtype, contiguous)
    if h0 is not None:
        check_array("h0", h0, (("B", B), ("H", H)), dtype, contiguous)
    if c0 is not None:
        check_array("c0", c0, (("B", B), ("H", H)), dtype, contiguous)
    lengths = check_lengths(lengths, T, B, xp)
    return Dims(T, B, I, H, dtype, xp), lengths


def check_training(training: Any) -> bool:
    """``training`` of a forward: True keeps the cache for a backward, False (inference)
    returns None in its place."""
    if not isinstance(training, (bool, np.bool_)):
        raise ValueError(f"training: expected True or False, got {type(training).__name__} "
                         f"{training!r}")
    return bool(training)


def check_backward(d: Dims, contiguous: bool = True, **grads_in: Any) -> None:
    """Validate output gradients against the forward's sizes: dy: (T, B, H), the rest (B, H)."""
    if d.xp is np and contiguous and all(  # the common case, fast: plain and right
            a is None or _plain(a, (d.T, d.B, d.H) if n == "dy" else (d.B, d.H), d.dtype)
            for n, a in grads_in.items()):
        return
    xp = array_module(**grads_in)
    if grads_in and xp is not d.xp and any(v is not None for v in grads_in.values()):
        name = next(n for n, v in grads_in.items() if v is not None)
        raise ValueError(
            f"{name}: is on a different device than the forward pass's arrays; "
            "rnnkern never copies between host and device silently"
        )
    for name, a in grads_in.items():
        if a is None:
            continue
        dims = (("T", d.T), ("B", d.B), ("H", d.H)) if name == "dy" else (("B", d.B), ("H", d.H))
        check_array(name, a, dims, d.dtype, contiguous)


# ----------------------------------------------------------------------------
# model layer: layers, losses, masks, fit, generate, data helpers, save/load
#
# The rule for the model layer: an argument of the wrong Python type (not an
# array or list where data is expected, not an integer where a count is, not a
# model or optimiser) is a TypeError; a wrong value (shape, dtype, range) is a
# ValueError. Both name the argument, say what was received and what is expected.


def check_int(name: str, v: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``v`` as an int with ``lo <= v <= hi`` (either bound None: open)."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected an integer, got {type(v).__name__} {v!r}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        want = (f"an integer in [{lo}, {hi}]" if lo is not None and hi is not None
                else f"an integer >= {lo}" if lo is not None else f"an integer <= {hi}")
        raise ValueError(f"{name}: expected {want}, got {v}")
    return v


def check_bool(name: str, v: Any) -> bool:
    """``v`` as a bool (Python's or NumPy's; TypeError for anything else)."""
    if not isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {type(v).__name__} {v!r}")
    return bool(v)


def check_probability(name: str, p: Any) -> float:
    """``p`` as a float in [0, 1) (a dropout probability)."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a probability in [0, 1), got {type(p).__name__}")
    if not 0 <= p < 1:
        raise ValueError(f"{name}: expected a probability in [0, 1), got {p}")
    return float(p)


def check_choice(name: str, v: Any, choices: tuple) -> Any:
    """``v`` if it is one of ``choices`` (compared with ==, so strings and None)."""
    if not any(v is c or (isinstance(v, str) and v == c) for c in choices):
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {v!r}")
    return v


def from_list(name: str, a: list | tuple, dtype: Any) -> np.ndarray:
    """A nested list of real numbers as a NumPy array of ``dtype`` (None: NumPy's
    choice), converted once."""
    try:
        arr = np.asarray(a)
    except ValueError as e:  # ragged nesting
        raise ValueError(f"{name}: expected a nested list of numbers of one shape, "
                         f"got a ragged list ({e})") from e
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected a list of real numbers, got a list of {arr.dtype}")
    return arr if dtype is None else arr.astype(dtype)


def as_array(name: str, a: Any, dims: tuple[tuple[str, int | None], ...], dtype: Any,
             contiguous: bool = True) -> Any:
    """``check_array`` for user data of a model whose dtype is ``dtype``.

    Lists and tuples of numbers are accepted and converted once (to a NumPy array
    of ``dtype``); arrays must already have ``dtype``: a float64 array for a
    float32 model is refused rather than silently cast. A strided view (a slice
    along the batch axis, a transpose) of the right shape and dtype is copied once
    into a C-contiguous array when ``contiguous`` (the kernels need that layout);
    the caller checks at entry, so the copy is never made inside a loop.
    """
    if isinstance(a, (list, tuple)):
        a = from_list(name, a, dtype)
    check_array(name, a, dims, None, contiguous=False)
    if a.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {np.dtype(dtype)} (the model's dtype), got "
                         f"{a.dtype}; convert with .astype('{np.dtype(dtype)}') or build the "
                         f"model with dtype='{a.dtype}'")
    if contiguous and not a.flags.c_contiguous:
        a = contiguous_copy(name, a)
    return a


def contiguous_copy(name: str, a: Any) -> Any:
    """A C-contiguous copy of the strided array ``a`` (the one copy ``as_array`` makes)."""
    return array_module(**{name: a}).ascontiguousarray(a)


def check_finite(name: str, a: Any) -> None:
    """Refuse NaN or inf anywhere in ``a``, naming the first bad entry."""
    xp = array_module(**{name: a})
    bad = ~xp.isfinite(a)
    if bool(bad.any()):
        first = tuple(int(i) for i in np.unravel_index(int(bad.argmax()), a.shape))
        raise ValueError(f"{name}: expected finite values, got {int(bad.sum())} NaN or inf "
                         f"entries (the first at index {first}: {a[first]})")


def check_writable(name: str, a: Any) -> None:
    """Arrays that rnnkern updates in place (parameters, optimiser buffers)."""
    if not a.flags.writeable:
        raise ValueError(f"{name}: expected a writable array (it is updated in place), got a "
                         f"read-only one; pass a copy")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (it is updated in place), "
                         f"got a strided view; pass a copy")


def check_ids(name: str, a: Any, num_ids: int, dims: tuple[tuple[str, int | None], ...]
              ) -> Any:
    """Integer ids of the shape ``dims`` describes, each in ``[0, num_ids)``; a list is
    converted once (to int64). Floats and bools are refused, not cast."""
    want = "(" + ", ".join(k if v is None else f"{k}={v}" for k, v in dims) + ")"
    if isinstance(a, (list, tuple)):
        a = from_list(name, a, None)
    if not (hasattr(a, "shape") and hasattr(a, "dtype")):
        raise TypeError(f"{name}: expected an integer array of shape {want}, "
                        f"got {type(a).__name__}")
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer ids (int32 or int64) of shape {want}, "
                         f"got dtype {a.dtype}")
    if a.ndim != len(dims) or any(v is not None and n != v for (_, v), n in
                                  zip(dims, a.shape)) or 0 in a.shape:
        raise ValueError(f"{name}: expected integer ids of shape {want} (every size >= 1), "
                         f"got shape {tuple(a.shape)}")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= num_ids:
        raise ValueError(f"{name}: expected ids in [0, {num_ids}) ({num_ids} classes), "
                         f"got ids in [{lo}, {hi}]")
    return a


def _shape(a: Any) -> tuple:
    """``a``'s shape, or () for what has none (None, a ragged list)."""
    try:
        return tuple(np.shape(a)) if a is not None else ()
    except ValueError:
        return ()


def layout_hint(x: Any, target: Any, lengths: Any, in_features: int, x_name: str = "x"
                ) -> str:
    """The advice to add to a shape error that a change of layout would fix, or "".

    rnnkern is time-major, x: (T, B, F); data from PyTorch's ``batch_first`` or Keras is
    (B, T, F), Flux's (F, T, B). Guessed from the shapes alone: ``lengths`` of x's first
    size (not its second), a target with x's first two sizes swapped, or features first.
    """
    xs, ts, ls = _shape(x), _shape(target), _shape(lengths)
    if len(xs) != 3 or xs[0] == xs[1]:
        return ""
    batch_first = (
        (lengths is not None and ls == (xs[0],))
        or (len(ts) == 3 and ts[:2] == (xs[1], xs[0]))
        or (xs[2] != in_features and xs[0] == in_features))
    if xs[2] == in_features and batch_first:
        return (f"rnnkern is time-major, {x_name}: (T, B, F): for batch-first data (B, T, F) "
                f"convert {x_name} and the target with rk.data.from_batch_first(...)")
    if xs[2] != in_features and xs[0] == in_features:
        return (f"rnnkern is time-major, {x_name}: (T, B, F): for features-first data "
                f"(F, T, B), as Flux keeps it, convert with rk.data.from_flux(...)")
    if len(ts) == 3 and ts[:2] == (xs[1], xs[0]):
        return ("rnnkern is time-major, target: (T, B, O): for a batch-first target (B, T, O) "
                "convert it with rk.data.from_batch_first(...)")
    return ""


def with_layout_hint(e: ValueError, x: Any, target: Any, lengths: Any, in_features: int,
                     x_name: str = "x") -> ValueError:
    """``e`` with ``layout_hint``'s advice appended (``e`` itself when there is none)."""
    hint = layout_hint(x, target, lengths, in_features, x_name)
    return ValueError(f"{e}; {hint}") if hint else e


# ----------------------------------------------------------------------------
# one call of a model: the checks every entry point (fit, evaluate, generate, ...) makes


class Call(NamedTuple):
    """One call's arguments after ``check_inputs``: arrays checked (lists converted)."""

    x: Any
    target: Any
    lengths: Any
    state: Any


def check_model(model: Any) -> Any:
    """``model`` if it is an rnnkern layer or Sequential (TypeError otherwise)."""
    from .layers import Layer  # layers validates with this module: imported at call time

    if not isinstance(model, Layer):
        raise TypeError(f"model: expected an rnnkern layer or Sequential, "
                        f"got {type(model).__name__}")
    if model.out_features is None:
        raise ValueError("model: only Dropout layers, which have no width of their own; "
                         "expected a model with at least one RNN, LSTM, GRU, Dense or "
                         "Embedding layer")
    return model


def check_inputs(model: Any, x: Any, target: Any = None, lengths: Any = None,
                 feedback: int = 0, state: Any = None, x_name: str = "x") -> Call:
    """Validate one call's arguments once, at entry (the inner loops trust them).

    x: (T, B, in_features) of the model's dtype (a list is converted once; a strided
    view is copied once into a C-contiguous array), or (T, B) integer ids for a model
    that starts with ``Embedding``
    target: (T, B, out_features), (T, B) integer class ids, or None
    lengths: (B,) int or None
    feedback: 0 <= n < min(lengths) (or T)   state: the model's state for B rows or None
    A shape error that batch-first (or features-first) data would explain says so.
    """
    check_model(model)
    try:
        return _check_inputs(model, x, target, lengths, feedback, state, x_name)
    except ValueError as e:
        raise with_layout_hint(e, x, target, lengths, model.in_features, x_name) from None


def _check_inputs(model: Any, x: Any, target: Any, lengths: Any, feedback: int,
                  state: Any, x_name: str) -> Call:
    x = model.check_input(x_name, x)
    T, B = x.shape[:2]
    if target is not None:
        target = check_target(model, target, T, B)
    xp = array_module(**{x_name: x}, target=target,
                      lengths=None if isinstance(lengths, (list, tuple)) else lengths)
    lengths = check_lengths(lengths, T, B, xp)
    feedback = check_int("feedback", feedback, 0)
    if feedback and not model.causal:
        raise ValueError(f"feedback: the model reads its inputs backwards too "
                         f"(a bidirectional layer), so it cannot drive itself step by step; "
                         f"got feedback={feedback}, expected 0")
    if feedback:
        shortest = T if lengths is None else int(lengths.min())
        if feedback >= shortest:
            raise ValueError(f"feedback: expected 0 <= feedback < {shortest} (the shortest "
                             f"sequence: at least one step must be the model's own input), "
                             f"got {feedback}")
        if model.out_features != model.in_features:
            raise ValueError(f"feedback: the model's outputs are fed back as inputs, so "
                             f"out_features={model.out_features} must equal "
                             f"in_features={model.in_features}")
    return Call(x, target, lengths, model.check_state(state, B))


def check_target(model: Any, target: Any, T: int, B: int) -> Any:
    """Values (T, B, out_features) of the model's dtype, or integer class ids (T, B) in
    [0, out_features) (cross-entropy's targets: the model's outputs are the logits)."""
    if isinstance(target, (list, tuple)):
        ids = from_list("target", target, None)
        if ids.dtype.kind in "iu" and ids.ndim == 2:
            target = ids
    if hasattr(target, "dtype") and target.dtype.kind in "iub":
        target = check_ids("target", target, model.out_features, (("T", T), ("B", B)))
        model.check_data("target", target)
        return target
    return as_array("target", target, (("T", T), ("B", B), ("out_features", model.out_features)),
                    model.dtype, contiguous=False)
