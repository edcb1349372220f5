"""Closed loop: a model driving itself with its own outputs, forward and backward.

- ``generate(model, primer, steps)``: warm the state up on the primer, then feed
  every prediction back as the next input.
- ``run(model, x, ..., feedback=n)`` / ``backprop(model, dy, tape)``: the forward
  and the BPTT of free-running training (``feedback=n``): the last ``n`` inputs of
  each sequence are replaced by the model's own previous outputs.

Free-running runs the teacher-forced prefix as one full-sequence kernel call,
then steps the whole stack one time step at a time (T=1 calls), keeping each
step's caches on a *tape*. Backward walks the tape in reverse: the gradient of
each fed-back output is the loss's gradient at that step plus the input gradient
of the step it was fed to; then the prefix runs its full-sequence backward with
the state gradient the loop hands it. Nothing is approximated: the gradients are
those of the unrolled computation (finite-difference tested).

With ``lengths``, row b is fed back from step ``lengths[b] - n`` on; the loop
starts at the earliest such step and, for the rows not yet (or no longer) in
their fed-back part, uses their data input (or carries their state past their end).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._threads import one_pool
from ._validate import (
    array_module,
    as_array,
    check_bool,
    check_choice,
    check_ids,
    check_inputs,
    check_int,
)
from .layers import Layer, move

#: steps per piece when a forward pass streams (no gradient wanted, no caches): only one
#: piece's work arrays are alive at a time (docs/MEMORY.md)
STREAM_CHUNK = 256


@dataclass
class Tape:
    """What ``backprop`` needs from ``run``.

    T0: steps run as one teacher-forced call (all of them when nothing is fed back)
    prefix: that call's cache   steps: per looped step ``(cache, active, fed)``,
    where ``active``/``fed``: (B, 1) bool, or None when every row is active and fed.
    """

    T0: int
    prefix: Any
    steps: list[tuple[Any, Any, Any]] = field(default_factory=list)


def _mix(xp: Any, m: Any, a: Any, b: Any) -> Any:
    """``where(m, a, b)`` over two state trees (tuples of arrays); None stands for zeros."""
    if a is None and b is None:
        return None
    if isinstance(a, tuple) or isinstance(b, tuple):
        n = len(a) if isinstance(a, tuple) else len(b)
        a = (None,) * n if a is None else a
        b = (None,) * n if b is None else b
        return tuple(_mix(xp, m, u, v) for u, v in zip(a, b, strict=True))
    if b is None:
        return a * m
    if a is None:
        return b * ~m
    return xp.where(m, a, b)


def stream(model: Layer, x: Any, state: Any = None, lengths: Any = None,
           chunk: int = STREAM_CHUNK) -> tuple[Any, Any]:
    """Forward without gradients (``training=False``: no caches) in pieces of ``chunk``
    steps, the state carried, so that the work arrays of one piece at most are alive (a
    kernel's input projection holds every step of its call). The same results as one
    call, bit for bit except where a kernel's input projection is a BLAS product over
    all steps of a call (docs/MEMORY.md, "One call against the same sequence in pieces").

    x: (T, B, I) -> y: (T, B, O) and the final state (rows past their length keep
    the state at their last step, their outputs are zero, as in one call).
    """
    T, B = x.shape[:2]
    if T <= chunk or not model.causal:  # a layer reading backwards needs every step at once
        y, state, _ = model._forward(x, state, lengths, False)
        return y, state
    xp = array_module(x=x)
    y = xp.empty((T, B, model.out_features), model.dtype)
    for s in range(0, T, chunk):
        e = min(s + chunk, T)
        if lengths is None:
            y[s:e], state, _ = model._forward(x[s:e], state, None, False)
            continue
        # a row that ended before this piece runs one padding step, which is undone
        live = (lengths > s)[:, None]
        out, new_state, _ = model._forward(x[s:e], state, xp.clip(lengths - s, 1, e - s), False)
        state = _mix(xp, live, new_state, state)
        y[s:e] = out * live[None]
    return y, state


def run(model: Layer, x: Any, state: Any = None, lengths: Any = None, feedback: int = 0,
        record: bool = True, feed: Sampler | None = None) -> tuple[Any, Any, Tape | None]:
    """Forward over x: (T, B, I) with the last ``feedback`` inputs of each row replaced
    by the model's previous outputs; arguments as ``check_inputs`` leaves them.

    ``feed``: turns each fed-back output (1, B, O) into the next input (a ``Sampler``;
    None: the output itself). Only without ``record``: a draw has no gradient.
    Returns y: (T, B, O), the final state, and the tape (None unless ``record``:
    without it nothing is kept for a backward pass, see ``stream``).
    """
    if feed is not None and record:
        raise ValueError("feed: sampled feedback has no gradient; run it with record=False")
    if not feedback:
        if not record:
            return (*stream(model, x, state, lengths), None)
        y, state, cache = model._forward(x, state, lengths)
        return y, state, Tape(x.shape[0], cache)
    xp = array_module(x=x)
    T, B = x.shape[:2]
    T0 = T - feedback if lengths is None else int(lengths.min()) - feedback
    prefix = x[:T0]  # every row is active before T0
    if record:
        y_pre, state, cache = model._forward(prefix, state, None)
        tape = Tape(T0, cache)
    else:
        y_pre, state = stream(model, prefix, state)
        tape = None
    y = xp.zeros((T, B, model.out_features), model.dtype)
    y[:T0] = y_pre
    prev = y_pre[T0 - 1 :]
    if lengths is None:
        for t in range(T0, T):
            inp = prev if feed is None else feed(prev)
            prev, state, cache = model._forward(inp, state, None, record)
            y[t] = prev[0]
            if record:
                tape.steps.append((cache, None, None))
        return y, state, tape
    steps = xp.arange(T)[:, None, None]
    active_all = steps < lengths[None, :, None]                   # (T, B, 1)
    fed_all = steps >= (lengths - feedback)[None, :, None]
    for t in range(T0, int(lengths.max())):
        active, fed = active_all[t], fed_all[t]                   # (B, 1) each
        if feed is None:
            inp = xp.where(fed, prev, x[t : t + 1])
        else:  # ids (1, B) for a token model, inputs (1, B, I) otherwise
            inp = xp.where(fed[:, 0] if model.tokens else fed, feed(prev), x[t : t + 1])
        out, new_state, cache = model._forward(inp, state, None, record)
        state = _mix(xp, active, new_state, state)
        prev = out * active
        y[t] = prev[0]
        if record:
            tape.steps.append((cache, active, fed))
    return y, state, tape


def _accumulate(grads: dict[str, Any], g: dict[str, Any]) -> None:
    for k, v in g.items():
        if k in grads:
            grads[k] += v
        else:
            grads[k] = v


def backprop(model: Layer, dy: Any, tape: Tape, dstate: Any = None) -> tuple[dict, Any]:
    """BPTT for ``run``: dy: (T, B, O) loss gradient, dstate: gradient of the final
    state or None. Returns (grads by parameter name, gradient of the initial state)."""
    if not tape.steps:
        _, dstate0, grads = model.backward(dy, dstate, tape.prefix)
        return grads, dstate0
    xp = array_module(dy=dy)
    T0 = tape.T0
    grads: dict[str, Any] = {}
    dfeed = None  # gradient w.r.t. the output fed into the step after this one
    for k in reversed(range(len(tape.steps))):
        cache, active, fed = tape.steps[k]
        t = T0 + k
        dy_t = dy[t : t + 1] if dfeed is None else dy[t : t + 1] + dfeed
        if active is None:
            dfeed, dstate, g = model.backward(dy_t, dstate, cache)
        else:
            d_in = _mix(xp, active, dstate, None)
            dx, d_prev, g = model.backward(dy_t * active, d_in, cache)
            dstate = _mix(xp, active, d_prev, dstate)
            dfeed = dx * fed
        _accumulate(grads, g)
    dy_pre = dy[:T0].copy()
    dy_pre[T0 - 1] += dfeed[0]
    _, dstate0, g = model.backward(dy_pre, dstate, tape.prefix)
    _accumulate(grads, g)
    return grads, dstate0


SAMPLERS = (None, "greedy", "categorical")


class Sampler:
    """Turns a model's output (1, B, O) into its next input, drawing from its own
    generator: ids (1, B) for a model that starts with ``Embedding``, otherwise the
    chosen classes one-hot, (1, B, O) (a callable's own result for a callable).

    kind: "greedy" (the argmax, the first of equal maxima) | "categorical" (a draw from
    ``softmax(output / temperature)``, restricted to the ``top_k`` largest outputs when
    given) | a callable ``(output (B, O), rng) -> next input`` (ids (B,) or (B, I)).
    Draws happen on the host in float64 from ``np.random.default_rng(seed)``: the same
    seed gives the same ids on every backend (given the same outputs).
    """

    def __init__(self, model: Layer, kind: Any, temperature: float = 1.0,
                 top_k: int | None = None, seed: int | None = None) -> None:
        if kind is None:
            raise ValueError("sampler: a model that starts with Embedding needs 'greedy', "
                             "'categorical' or a callable to turn its outputs into ids, "
                             "got None")
        if not callable(kind):
            check_choice("sampler", kind, SAMPLERS[1:])
        if isinstance(temperature, bool) or not isinstance(temperature,
                                                           (int, float, np.floating)):
            raise TypeError(f"temperature: expected a number > 0, "
                            f"got {type(temperature).__name__}")
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature: expected a finite number > 0, got {temperature}")
        C = model.out_features
        if top_k is not None:
            top_k = check_int("top_k", top_k, 1, C)
        if seed is not None:
            seed = check_int("seed", seed, 0)
        self.model, self.kind = model, kind
        self.temperature, self.top_k = float(temperature), top_k
        self.rng = np.random.default_rng(seed)

    def ids(self, out: np.ndarray) -> np.ndarray:
        """out: (B, C) host outputs -> (B,) int64 class ids."""
        if self.kind == "greedy":
            return out.argmax(axis=1)
        z = out.astype(np.float64) / self.temperature
        C = z.shape[1]
        if self.top_k is not None and self.top_k < C:
            # exactly top_k entries stay (argpartition breaks ties by position)
            keep = np.argpartition(-z, self.top_k - 1, axis=1)[:, : self.top_k]
            z = np.where(_rows_mask(keep, z.shape), z, -np.inf)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        cum = np.cumsum(p, axis=1)
        u = self.rng.random(z.shape[0]) * cum[:, -1]
        return np.minimum((cum <= u[:, None]).sum(axis=1), C - 1)

    def __call__(self, prev: Any) -> Any:
        """prev: (1, B, O) outputs -> the next input, on the model's device."""
        m = self.model
        xp = array_module(prev=prev)
        out = move(prev[0], np)
        B = out.shape[0]
        if callable(self.kind):
            nxt = self.kind(out, self.rng)
            if m.tokens:
                nxt = check_ids("sampler", nxt, m.in_features, (("B", B),))
            else:
                nxt = as_array("sampler", nxt, (("B", B), ("in_features", m.in_features)),
                               m.dtype)
            return move(nxt[None], xp)
        ids = self.ids(out)
        if m.tokens:
            return move(ids[None].astype(np.int64), xp)
        onehot = np.zeros((1, B, m.in_features), m.dtype)
        onehot[0, np.arange(B), ids] = 1
        return move(onehot, xp)


def _rows_mask(cols: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(B, C) bool, True at ``cols[b]`` of each row b."""
    keep = np.zeros(shape, bool)
    np.put_along_axis(keep, cols, True, axis=1)
    return keep


@one_pool
def generate(model: Layer, primer: Any, steps: int, state: Any = None,
             return_state: bool = False, sampler: Any = None, temperature: float = 1.0,
             top_k: int | None = None, seed: int | None = None,
             return_logits: bool = False) -> Any:
    """Closed-loop continuation: primer (P, B, F) -> predictions (steps, B, F), time-major
    (batch-first data: ``data.from_batch_first``; a strided view is copied once); for a
    model that starts with ``Embedding``, primer ids (P, B) -> ids (steps, B).

    ``pred[0]`` comes from the output after the last primer step, ``pred[k]`` from the
    output after ``pred[k-1]`` was fed in. ``sampler``: what is fed back (and returned):
    None the output itself (regression; not for Embedding models), "greedy" its argmax,
    "categorical" a draw from ``softmax(output / temperature)`` over the ``top_k``
    largest outputs (all when None), from ``np.random.default_rng(seed)`` (same seed,
    same ids, bit for bit), or a callable ``(output (B, O), rng) -> next input`` (ids
    (B,) or inputs (B, I)). Without Embedding, "greedy" and "categorical" feed and return
    the chosen classes one-hot, (steps, B, O).

    ``return_logits``: also return the outputs (steps, B, O) each prediction was taken
    from; ``return_state``: also the final state (after the last prediction's output).
    Order of a tuple: predictions, outputs, state. Keeps no caches: memory is the
    primer's pass in pieces of ``STREAM_CHUNK`` steps plus the results. ``state``: the
    state to start the primer from (None: zeros). ``steps=0`` returns empty arrays.
    """
    primer, _, _, state = check_inputs(model, primer, state=state, x_name="primer")
    if not model.causal:
        raise ValueError("model: generate feeds each output back as the next input, but the "
                         "model reads its inputs backwards too (a bidirectional layer), "
                         "which needs the whole sequence first")
    steps = check_int("steps", steps, 0)
    if model.out_features != model.in_features:
        raise ValueError(f"model: generate feeds outputs back as inputs, so out_features="
                         f"{model.out_features} must equal in_features={model.in_features}")
    check_bool("return_state", return_state)
    check_bool("return_logits", return_logits)
    feed = None if sampler is None and not model.tokens else \
        Sampler(model, sampler, temperature, top_k, seed)
    xp = array_module(primer=primer)
    y, state = stream(model, primer, state)
    B = primer.shape[1]
    logits = xp.empty((steps, B, model.out_features), model.dtype)
    pred = logits if feed is None else \
        xp.empty((steps, B) if model.tokens else (steps, B, model.in_features),
                 np.int64 if model.tokens else model.dtype)
    prev, nxt = y[-1:], None
    for k in range(steps):
        if k:
            prev, state, _ = model._forward(nxt, state, None, False)
        logits[k] = prev[0]
        nxt = prev if feed is None else feed(prev)
        if feed is not None:
            pred[k] = nxt[0]
    out = (pred, logits) if return_logits else (pred,)
    out += (state,) if return_state else ()
    return out if len(out) > 1 else out[0]
