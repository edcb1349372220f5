"""NumPy reference backend: the oracle every fast kernel is checked against.

Plain loops over time, written to be read. Each cell has a forward that returns
``(outputs, final state, cache)`` and a backward that consumes the cache, as in
Karpathy's ``lstm.py``. Shapes use the contract's names (DESIGN.md):

    x: (T, B, I)   W: (I, G*H)   R: (H, G*H)   b: (G*H,)   h0, c0: (B, H)

Variable lengths: ``active[t, b] = t < lengths[b]``. Where a row is inactive its
state is carried unchanged, its output is zero and no gradient flows through the
step. Caches store post-activation gates, so every derivative is taken from an
output (``sigmoid' = s(1-s)``, ``tanh' = 1-t^2``).

Every forward accepts ``training=False`` for inference and then returns None for the
cache (the reference computes it all the same; the fast backends keep one step's work).

Every backward accepts ``per_step=True`` and then also returns ``steps``: each
step's own contribution to every parameter gradient, ``steps[k]: (T, *shape)``,
with ``steps[k].sum(0) == grads[k]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validate import (
    Dims,
    array_module,
    check_activation,
    check_backward,
    check_forward,
    check_training,
)

Cache = dict[str, Any]
Grads = dict[str, np.ndarray]


xp = np  # the array module this backend computes with


def is_available() -> bool:
    return True


# ----------------------------------------------------------------------------
# shared helpers


def sigmoid(v: np.ndarray) -> np.ndarray:
    # the two branches keep exp() from overflowing for large |v|
    e = np.exp(-np.abs(v))
    return np.where(v >= 0, 1 / (1 + e), e / (1 + e)).astype(v.dtype, copy=False)


ACTIVATIONS = {
    "tanh": np.tanh,
    "relu": lambda v: np.maximum(v, 0),
    "identity": lambda v: v,
}

# derivative of each activation, written in terms of its output a = f(v)
ACTIVATION_GRADS = {
    "tanh": lambda a: 1 - a * a,
    "relu": lambda a: (a > 0).astype(a.dtype),
    "identity": lambda a: np.ones_like(a),
}


def active_mask(lengths: Any, T: int, B: int, xp: Any = np) -> Any:
    """active: (T, B, 1) bool, True where step t of row b is inside the sequence.

    lengths: (B,) ints or None (every step active); ``xp`` the array module of lengths.
    """
    if lengths is None:
        return xp.ones((T, B, 1), dtype=bool)
    return (xp.arange(T)[:, None] < xp.asarray(lengths)[None, :])[:, :, None]


def reversal_index(lengths: Any, T: int, B: int, xp: Any = np) -> Any:
    """(T, B) step index that reverses each row within its own length, or None (every
    row has all T steps: a flip). Step t < lengths[b] maps to lengths[b] - 1 - t,
    padding maps to itself, so padding stays at the end; the map is its own inverse."""
    if lengths is None:
        return None
    t = xp.arange(T)[:, None]
    n = xp.asarray(lengths)[None, :]
    return xp.where(t < n, n - 1 - t, t)


def reverse_steps(a: Any, index: Any, xp: Any = np) -> Any:
    """a: (T, B, F) -> a C-contiguous copy with each row's steps reversed by ``index``
    (``reversal_index``; None: all T steps), in one gather."""
    if index is None:
        return xp.ascontiguousarray(a[::-1])
    return a[index, xp.arange(a.shape[1])[None, :]]


def _zeros_or(a: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.zeros(shape, dtype) if a is None else a


def param_grads(x: Any, h_prev: Any, dgx: Any, dgh: Any, per_step: bool,
                xp: Any = np) -> tuple[Grads, Grads | None]:
    """Weight gradients from the gate gradients of all steps at once (NumPy or CuPy).

    x: (T, B, I) inputs   h_prev: (T, B, H) state entering each step
    dgx: (T, B, G*H) gradient of the input-side pre-activations (x @ W + b)
    dgh: (T, B, G*H) gradient of the recurrent pre-activations (h @ R); equal to
         dgx except for the GRU candidate, where r multiplies the recurrent part.
    Returns grads {W, R, b} and, with per_step, steps {W, R, b} of shape (T, ...): one
    product per step, whose sum is then the gradient (exactly, as the contract says).
    Without per_step each gradient is one product over all T * B rows, the same sum.
    """
    if per_step:
        steps = {
            "W": xp.matmul(x.transpose(0, 2, 1), dgx),          # (T, I, GH)
            "R": xp.matmul(h_prev.transpose(0, 2, 1), dgh),     # (T, H, GH)
            "b": dgx.sum(axis=1),                               # (T, GH)
        }
        return {k: v.sum(axis=0) for k, v in steps.items()}, steps
    T, B, I = x.shape  # noqa: E741
    H, GH = h_prev.shape[2], dgx.shape[2]
    return {
        "W": x.reshape(T * B, I).T @ dgx.reshape(T * B, GH),
        "R": h_prev.reshape(T * B, H).T @ dgh.reshape(T * B, GH),
        "b": dgx.sum(axis=(0, 1)),
    }, None


def finish(dx: Any, dstate: Any, grads: Grads, steps: Grads | None) -> tuple:
    """A backward's result: (dx, dstate, grads), and steps with per_step."""
    return (dx, dstate, grads) if steps is None else (dx, dstate, grads, steps)


# ----------------------------------------------------------------------------
# Elman RNN:  h_t = act(x_t @ W + h_{t-1} @ R + b)


def rnn_forward(
    x: np.ndarray,
    h0: np.ndarray | None,
    W: np.ndarray,
    R: np.ndarray,
    b: np.ndarray,
    activation: str = "tanh",
    lengths: np.ndarray | None = None,
    training: bool = True,
) -> tuple[np.ndarray, np.ndarray, Cache | None]:
    """Elman RNN over a whole sequence.

    x: (T, B, I) inputs   h0: (B, H) or None (zeros)   W: (I, H)   R: (H, H)   b: (H,)
    activation: "tanh" | "relu" | "identity"   lengths: (B,) int or None
    training: False for inference (no cache)
    Returns y: (T, B, H) outputs, hT: (B, H) final state, cache (None unless training).
    """
    d, lengths = check_forward("rnn", x, h0, None, W, R, b, lengths=lengths)
    keep = check_training(training)
    act = ACTIVATIONS[check_activation(activation)]
    T, B, H = d.T, d.B, d.H
    active = active_mask(lengths, T, B)                     # (T, B, 1)
    gx = x @ W + b                                          # (T, B, H) input projection
    h = np.empty((T + 1, B, H), d.dtype)                    # h[t] enters step t
    h[0] = _zeros_or(h0, (B, H), d.dtype)
    a = np.empty((T, B, H), d.dtype)                        # post-activation of each step
    y = np.empty((T, B, H), d.dtype)
    for t in range(T):
        a[t] = act(gx[t] + h[t] @ R)
        h[t + 1] = np.where(active[t], a[t], h[t])
        y[t] = np.where(active[t], a[t], 0)
    cache = dict(cell="rnn", dims=d, activation=activation, x=x, W=W, R=R,
                 h=h, a=a, active=active)
    return y, h[T].copy(), cache if keep else None


def rnn_backward(
    dy: np.ndarray | None, dhT: np.ndarray | None, cache: Cache, per_step: bool = False
) -> tuple:
    """BPTT for ``rnn_forward``.

    dy: (T, B, H) or None   dhT: (B, H) or None
    Returns dx: (T, B, I), dh0: (B, H), grads {W, R, b} (+ steps with per_step).
    """
    d: Dims = cache["dims"]
    check_backward(d, dy=dy, dhT=dhT)
    T, B, H = d.T, d.B, d.H
    x, W, R, h, a, active = (cache[k] for k in ("x", "W", "R", "h", "a", "active"))
    act_grad = ACTIVATION_GRADS[cache["activation"]]
    dy = _zeros_or(dy, (T, B, H), d.dtype)
    dh = _zeros_or(dhT, (B, H), d.dtype).copy()             # gradient w.r.t. h[t+1]
    da = np.empty((T, B, H), d.dtype)                       # pre-activation gradients
    for t in reversed(range(T)):
        da[t] = np.where(active[t], dy[t] + dh, 0) * act_grad(a[t])
        dh = np.where(active[t], 0, dh) + da[t] @ R.T
    dx = da @ W.T
    grads, steps = param_grads(x, h[:-1], da, da, per_step)
    return finish(dx, dh, grads, steps)


# ----------------------------------------------------------------------------
# LSTM, gate order (i, f, g, o):
#   c_t = f * c_{t-1} + i * g      h_t = o * tanh(c_t)


def lstm_forward(
    x: np.ndarray,
    h0: np.ndarray | None,
    c0: np.ndarray | None,
    W: np.ndarray,
    R: np.ndarray,
    b: np.ndarray,
    lengths: np.ndarray | None = None,
    training: bool = True,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], Cache | None]:
    """LSTM over a whole sequence.

    x: (T, B, I)   h0, c0: (B, H) or None   W: (I, 4H)   R: (H, 4H)   b: (4H,)
    lengths: (B,) int or None   training: False for inference (no cache)
    Returns y: (T, B, H), (hT, cT): (B, H) each, cache (None unless training).
    """
    d, lengths = check_forward("lstm", x, h0, c0, W, R, b, lengths=lengths)
    keep = check_training(training)
    T, B, H = d.T, d.B, d.H
    active = active_mask(lengths, T, B)                     # (T, B, 1)
    gx = x @ W + b                                          # (T, B, 4H)
    h = np.empty((T + 1, B, H), d.dtype)                    # h[t], c[t] enter step t
    c = np.empty((T + 1, B, H), d.dtype)
    h[0] = _zeros_or(h0, (B, H), d.dtype)
    c[0] = _zeros_or(c0, (B, H), d.dtype)
    gates = np.empty((T, B, 4 * H), d.dtype)                # post-activation i, f, g, o
    tanh_c = np.empty((T, B, H), d.dtype)                   # tanh of each step's new cell
    y = np.empty((T, B, H), d.dtype)
    for t in range(T):
        pre = gx[t] + h[t] @ R
        gates[t, :, : 2 * H] = sigmoid(pre[:, : 2 * H])
        gates[t, :, 2 * H : 3 * H] = np.tanh(pre[:, 2 * H : 3 * H])
        gates[t, :, 3 * H :] = sigmoid(pre[:, 3 * H :])
        i, f, g, o = np.split(gates[t], 4, axis=1)
        c_new = f * c[t] + i * g
        tanh_c[t] = np.tanh(c_new)
        h_new = o * tanh_c[t]
        c[t + 1] = np.where(active[t], c_new, c[t])
        h[t + 1] = np.where(active[t], h_new, h[t])
        y[t] = np.where(active[t], h_new, 0)
    cache = dict(cell="lstm", dims=d, x=x, W=W, R=R, h=h, c=c, gates=gates,
                 tanh_c=tanh_c, active=active)
    return y, (h[T].copy(), c[T].copy()), cache if keep else None


def lstm_backward(
    dy: np.ndarray | None,
    dstate: tuple[np.ndarray | None, np.ndarray | None] | None,
    cache: Cache,
    per_step: bool = False,
) -> tuple:
    """BPTT for ``lstm_forward``.

    dy: (T, B, H) or None   dstate: (dhT, dcT), each (B, H) or None
    Returns dx: (T, B, I), (dh0, dc0): (B, H) each, grads {W, R, b} (+ steps).
    """
    d: Dims = cache["dims"]
    dhT, dcT = (None, None) if dstate is None else dstate
    check_backward(d, dy=dy, dhT=dhT, dcT=dcT)
    T, B, H = d.T, d.B, d.H
    x, W, R, h, c, gates, tanh_c, active = (
        cache[k] for k in ("x", "W", "R", "h", "c", "gates", "tanh_c", "active"))
    dy = _zeros_or(dy, (T, B, H), d.dtype)
    dh = _zeros_or(dhT, (B, H), d.dtype).copy()             # gradient w.r.t. h[t+1]
    dc = _zeros_or(dcT, (B, H), d.dtype).copy()             # gradient w.r.t. c[t+1]
    dgates = np.empty((T, B, 4 * H), d.dtype)               # pre-activation gradients
    for t in reversed(range(T)):
        i, f, g, o = np.split(gates[t], 4, axis=1)
        tc = tanh_c[t]
        dh_new = np.where(active[t], dy[t] + dh, 0)
        dc_new = np.where(active[t], dc, 0) + dh_new * o * (1 - tc * tc)
        dgates[t, :, :H] = dc_new * g * i * (1 - i)
        dgates[t, :, H : 2 * H] = dc_new * c[t] * f * (1 - f)
        dgates[t, :, 2 * H : 3 * H] = dc_new * i * (1 - g * g)
        dgates[t, :, 3 * H :] = dh_new * tc * o * (1 - o)
        dc = np.where(active[t], dc_new * f, dc)
        dh = np.where(active[t], 0, dh) + dgates[t] @ R.T
    dx = dgates @ W.T
    grads, steps = param_grads(x, h[:-1], dgates, dgates, per_step)
    return finish(dx, (dh, dc), grads, steps)


# ----------------------------------------------------------------------------
# GRU, gate order (r, z, n), PyTorch's formulation:
#   r = s(x W_r + h R_r + b_r)   z = s(x W_z + h R_z + b_z)
#   n = tanh(x W_n + b_n + r * (h R_n + b_hn))   h' = (1 - z) * n + z * h


def gru_forward(
    x: np.ndarray,
    h0: np.ndarray | None,
    W: np.ndarray,
    R: np.ndarray,
    b: np.ndarray,
    b_hn: np.ndarray,
    lengths: np.ndarray | None = None,
    training: bool = True,
) -> tuple[np.ndarray, np.ndarray, Cache | None]:
    """GRU over a whole sequence.

    x: (T, B, I)   h0: (B, H) or None   W: (I, 3H)   R: (H, 3H)   b: (3H,)   b_hn: (H,)
    lengths: (B,) int or None   training: False for inference (no cache)
    Returns y: (T, B, H), hT: (B, H), cache (None unless training).
    """
    d, lengths = check_forward("gru", x, h0, None, W, R, b, b_hn, lengths=lengths)
    keep = check_training(training)
    T, B, H = d.T, d.B, d.H
    active = active_mask(lengths, T, B)                     # (T, B, 1)
    gx = x @ W + b                                          # (T, B, 3H)
    h = np.empty((T + 1, B, H), d.dtype)
    h[0] = _zeros_or(h0, (B, H), d.dtype)
    gates = np.empty((T, B, 3 * H), d.dtype)                # post-activation r, z, n
    hn = np.empty((T, B, H), d.dtype)                       # h @ R_n + b_hn, what r gates
    y = np.empty((T, B, H), d.dtype)
    for t in range(T):
        gh = h[t] @ R                                       # (B, 3H)
        gates[t, :, : 2 * H] = sigmoid(gx[t, :, : 2 * H] + gh[:, : 2 * H])
        r, z = gates[t, :, :H], gates[t, :, H : 2 * H]
        hn[t] = gh[:, 2 * H :] + b_hn
        n = gates[t, :, 2 * H :] = np.tanh(gx[t, :, 2 * H :] + r * hn[t])
        h_new = (1 - z) * n + z * h[t]
        h[t + 1] = np.where(active[t], h_new, h[t])
        y[t] = np.where(active[t], h_new, 0)
    cache = dict(cell="gru", dims=d, x=x, W=W, R=R, h=h, gates=gates, hn=hn, active=active)
    return y, h[T].copy(), cache if keep else None


def gru_backward(
    dy: np.ndarray | None, dhT: np.ndarray | None, cache: Cache, per_step: bool = False
) -> tuple:
    """BPTT for ``gru_forward``.

    dy: (T, B, H) or None   dhT: (B, H) or None
    Returns dx: (T, B, I), dh0: (B, H), grads {W, R, b, b_hn} (+ steps).
    """
    d: Dims = cache["dims"]
    check_backward(d, dy=dy, dhT=dhT)
    T, B, H = d.T, d.B, d.H
    x, W, R, h, gates, hn, active = (
        cache[k] for k in ("x", "W", "R", "h", "gates", "hn", "active"))
    dy = _zeros_or(dy, (T, B, H), d.dtype)
    dh = _zeros_or(dhT, (B, H), d.dtype).copy()
    dgx = np.empty((T, B, 3 * H), d.dtype)                  # d(x W + b)
    dgh = np.empty((T, B, 3 * H), d.dtype)                  # d(h R); candidate part is r * ...
    for t in reversed(range(T)):
        r, z, n = np.split(gates[t], 3, axis=1)
        dh_new = np.where(active[t], dy[t] + dh, 0)
        dn = dh_new * (1 - z) * (1 - n * n)
        dgx[t, :, :H] = dn * hn[t] * r * (1 - r)
        dgx[t, :, H : 2 * H] = dh_new * (h[t] - n) * z * (1 - z)
        dgx[t, :, 2 * H :] = dn
        dgh[t, :, : 2 * H] = dgx[t, :, : 2 * H]
        dgh[t, :, 2 * H :] = dn * r
        dh = np.where(active[t], dh_new * z, dh) + dgh[t] @ R.T
    dx = dgx @ W.T
    grads, steps = param_grads(x, h[:-1], dgx, dgh, per_step)
    grads["b_hn"] = dgh[:, :, 2 * H :].sum(axis=(0, 1))
    if steps is not None:
        steps["b_hn"] = dgh[:, :, 2 * H :].sum(axis=1)
    return finish(dx, dh, grads, steps)


# ----------------------------------------------------------------------------
# embedding lookup


def embedding_forward(ids: np.ndarray, W: np.ndarray) -> np.ndarray:
    """ids: (T, B) int, each in [0, V)   W: (V, D) -> y: (T, B, D), y[t, b] = W[ids[t, b]].

    The ids are the layer's to validate (``layers.Embedding``): out-of-range ids would
    index past ``W`` in the compiled backends.
    """
    return W[ids]


def embedding_backward(dy: np.ndarray, ids: np.ndarray, num_embeddings: int) -> np.ndarray:
    """dy: (T, B, D), ids: (T, B) -> dW: (V, D), the rows of dy summed per id (an id
    seen k times receives the sum of its k rows)."""
    D = dy.shape[2]
    dW = np.zeros((num_embeddings, D), dy.dtype)
    np.add.at(dW, ids.reshape(-1), dy.reshape(-1, D))
    return dW


# ----------------------------------------------------------------------------
# Dense: y = act(x @ W + b) at every step


def _dense_act(name: str | None, z: Any, xp: Any) -> Any:
    if name is None:
        return z
    if name == "relu":
        return xp.maximum(z, 0)
    if name == "tanh":
        return xp.tanh(z)
    return 0.5 * (1 + xp.tanh(0.5 * z))  # sigmoid without exp overflow


def _dense_grad(name: str | None, dy: Any, a: Any, xp: Any) -> Any:
    """dL/dz = dy * f'(z), f' written in terms of the output a = f(z)."""
    if name is None:
        return dy
    if name == "relu":
        return xp.where(a > 0, dy, 0)  # an inf in dy where a <= 0 must not give NaN
    if name == "tanh":
        return dy * (1 - a * a)
    return dy * (a * (1 - a))


def dense_forward(x: Any, W: Any, b: Any, activation: str | None = None,
                  lengths: Any = None, training: bool = True) -> tuple[Any, Cache | None]:
    """x: (T, B, I)   W: (I, O)   b: (O,)   activation: None | "relu" | "tanh" | "sigmoid"
    lengths: (B,) or None -> y: (T, B, O), zero on padding steps, and the cache.

    The arguments are the layer's to validate (``layers.Dense``). NumPy or CuPy arrays
    alike (the CuPy backend runs this code too).
    """
    T, B, _ = x.shape
    xp = array_module(x=x, W=W)
    active = None if lengths is None else active_mask(lengths, T, B, xp)  # (T, B, 1)
    y = _dense_act(activation, x @ W + b, xp)
    if active is not None:
        y = xp.where(active, y, 0)  # zeros, whatever a padding step's x holds
    cache = {"x": x, "W": W, "y": y, "active": active, "activation": activation}
    return y, cache if training else None


def dense_backward(dy: Any, cache: Cache) -> tuple[Any, Grads]:
    """dy: (T, B, O) -> dx: (T, B, I), grads {W: (I, O), b: (O,)}; nothing flows back
    through padding steps."""
    x, W, y, active, activation = (cache[k] for k in ("x", "W", "y", "active", "activation"))
    xp = array_module(dy=dy, y=y)
    dz = _dense_grad(activation, dy, y, xp)  # (T, B, O)
    if active is not None:
        dz = xp.where(active, dz, 0)
    dz2 = dz.reshape(-1, W.shape[1])
    grads = {"W": x.reshape(-1, W.shape[0]).T @ dz2, "b": dz2.sum(axis=0)}
    return dz @ W.T, grads
