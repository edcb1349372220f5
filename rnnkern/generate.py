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

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ._validate import array_module, as_array, check_int, check_lengths, with_layout_hint
from .layers import Layer

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


class Call(NamedTuple):
    """One call's arguments after ``check_inputs``: arrays checked (lists converted)."""

    x: Any
    target: Any
    lengths: Any
    state: Any


def check_model(model: Any) -> Layer:
    if not isinstance(model, Layer):
        raise TypeError(f"model: expected an rnnkern layer or Sequential, "
                        f"got {type(model).__name__}")
    return model


def check_inputs(model: Layer, x: Any, target: Any = None, lengths: Any = None,
                 feedback: int = 0, state: Any = None, x_name: str = "x") -> Call:
    """Validate one call's arguments once, at entry (the inner loops trust them).

    x: (T, B, in_features) of the model's dtype (a list is converted once; a strided
    view is copied once into a C-contiguous array)
    target: (T, B, out_features) or None   lengths: (B,) int or None
    feedback: 0 <= n < min(lengths) (or T)   state: the model's state for B rows or None
    A shape error that batch-first (or features-first) data would explain says so.
    """
    check_model(model)
    try:
        return _check_inputs(model, x, target, lengths, feedback, state, x_name)
    except ValueError as e:
        raise with_layout_hint(e, x, target, lengths, model.in_features, x_name) from None


def _check_inputs(model: Layer, x: Any, target: Any, lengths: Any, feedback: int,
                  state: Any, x_name: str) -> Call:
    x = as_array(x_name, x, (("T", None), ("B", None), ("in_features", model.in_features)),
                 model.dtype, model.contiguous_input)
    model.check_data(x_name, x)
    T, B = x.shape[:2]
    if target is not None:
        target = as_array("target", target,
                          (("T", T), ("B", B), ("out_features", model.out_features)),
                          model.dtype, contiguous=False)
    xp = array_module(**{x_name: x}, target=target,
                      lengths=None if isinstance(lengths, (list, tuple)) else lengths)
    lengths = check_lengths(lengths, T, B, xp)
    feedback = check_int("feedback", feedback, 0)
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
    if T <= chunk:
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
        record: bool = True) -> tuple[Any, Any, Tape | None]:
    """Forward over x: (T, B, I) with the last ``feedback`` inputs of each row replaced
    by the model's previous outputs; arguments as ``check_inputs`` leaves them.

    Returns y: (T, B, O), the final state, and the tape (None unless ``record``:
    without it nothing is kept for a backward pass, see ``stream``).
    """
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
            prev, state, cache = model._forward(prev, state, None, record)
            y[t] = prev[0]
            if record:
                tape.steps.append((cache, None, None))
        return y, state, tape
    steps = xp.arange(T)[:, None, None]
    active_all = steps < lengths[None, :, None]                   # (T, B, 1)
    fed_all = steps >= (lengths - feedback)[None, :, None]
    for t in range(T0, int(lengths.max())):
        active, fed = active_all[t], fed_all[t]                   # (B, 1) each
        inp = xp.where(fed, prev, x[t : t + 1])
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


def generate(model: Layer, primer: Any, steps: int, state: Any = None,
             return_state: bool = False) -> Any:
    """Closed-loop continuation: primer (P, B, F) -> predictions (steps, B, F), time-major
    (batch-first data: ``data.from_batch_first``; a strided view is copied once).

    ``pred[0]`` is the output after the last primer step, ``pred[k]`` the output
    after ``pred[k-1]`` was fed in. Keeps no caches: memory is the primer's pass
    in pieces of ``STREAM_CHUNK`` steps plus the (steps, B, F) result. ``state``:
    the state to start the primer from (None: zeros); ``return_state`` also
    returns the final state. ``steps=0`` returns an empty (0, B, F) array.
    """
    primer, _, _, state = check_inputs(model, primer, state=state, x_name="primer")
    steps = check_int("steps", steps, 0)
    if model.out_features != model.in_features:
        raise ValueError(f"model: generate feeds outputs back as inputs, so out_features="
                         f"{model.out_features} must equal in_features={model.in_features}")
    xp = array_module(primer=primer)
    y, state = stream(model, primer, state)
    out = xp.empty((steps, primer.shape[1], model.out_features), model.dtype)
    prev = y[-1:]
    for k in range(steps):
        if k:
            prev, state, _ = model._forward(prev, state, None, False)
        out[k] = prev[0]
    return (out, state) if return_state else out
