"""Gradient checks: finite differences, the per-step (untied weights) check, parity.

Every check runs one random *problem*: a cell, its sizes and options, random
inputs and parameters, and random output gradients ``dy, dhT, dcT``. The scalar

    L = sum(dy * y) + sum(dhT * hT) + sum(dcT * cT)

has exactly the gradient that ``<cell>_backward(dy, dhT/(dhT, dcT), cache)``
returns, so central differences of ``L`` check the whole backward at once.

- ``fd_check``: central differences, element by element, per tensor
  (parameters and the inputs ``x``, ``h0``, ``c0``), worst relative error each.
- ``directional_check``: one random direction ``v`` per tensor,
  ``(L(p + eps v) - L(p - eps v)) / 2 eps`` against ``<grad, v>``; for big tensors.
- ``per_step_check``: untie the weights into one copy per step, finite-difference
  each copy, and compare with the ``per_step=True`` contributions and their sum.
- ``parity``: any backend (any dtype, any variant) against the float64 NumPy oracle.
- ``check_model``: central differences of the loss of a user's whole model (a float64
  copy of it) for every parameter, against ``value_and_grad``.
- ``hidden_grads`` / ``hidden_grad_norms``: the gradient BPTT carries at each step,
  dL/dh_t of one recurrent layer's hidden state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import backends, losses, serialize
from ._validate import GATES, array_module, check_int
from ._validate import check_model as _check_layer
from .generate import _mix
from .layers import Dropout, Layer, Sequential, _Cell, backend_xp, drawing_from
from .train import _checked, evaluate, value_and_grad

#: the finite-difference acceptance bound (float64)
FD_TOL = 1e-6
#: normwise relative tolerance of a backend against the float64 oracle, per dtype
PARITY_TOL = {"float32": 1e-4, "float64": 1e-10}
#: denominators below this are treated as this (a floor for tiny gradients)
FLOOR = 1e-6


def to_numpy(a: Any) -> np.ndarray:
    """A host copy of a NumPy or CuPy array."""
    return a.get() if hasattr(a, "get") else np.asarray(a)


def rel_error(a: Any, ref: Any, floor: float = FLOOR) -> float:
    """Worst element-wise ``|a - ref| / max(|a|, |ref|, floor)``."""
    a, ref = to_numpy(a).astype(np.float64), to_numpy(ref).astype(np.float64)
    denom = np.maximum(np.maximum(np.abs(a), np.abs(ref)), floor)
    return float(np.max(np.abs(a - ref) / denom)) if a.size else 0.0


def norm_error(a: Any, ref: Any) -> float:
    """Normwise ``max|a - ref| / max|ref|``: the parity measure, robust to tiny entries."""
    a, ref = to_numpy(a).astype(np.float64), to_numpy(ref).astype(np.float64)
    scale = max(float(np.max(np.abs(ref))), 1e-30) if ref.size else 1.0
    return float(np.max(np.abs(a - ref))) / scale if a.size else 0.0


# ----------------------------------------------------------------------------
# problems: random instances of one call


@dataclass
class Problem:
    """One random call of a cell's forward and backward, with everything it needs.

    inputs: x: (T, B, I), h0/c0: (B, H) or absent   params: W, R, b (, b_hn)
    out_grads: dy: (T, B, H), dhT/dcT: (B, H) or absent   lengths: (B,) or None
    """

    cell: str
    activation: str
    inputs: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    out_grads: dict[str, np.ndarray]
    lengths: np.ndarray | None = None
    options: dict[str, Any] = field(default_factory=dict)  # extra backend kwargs (variant=)

    @property
    def T(self) -> int:
        return self.inputs["x"].shape[0]

    def astype(self, dtype: Any) -> Problem:
        def cast(d: dict) -> dict:
            return {k: np.ascontiguousarray(v, dtype=dtype) for k, v in d.items()}

        return replace(self, inputs=cast(self.inputs), params=cast(self.params),
                       out_grads=cast(self.out_grads))


def make_problem(
    cell: str,
    T: int = 4,
    B: int = 3,
    I: int = 3,  # noqa: E741
    H: int = 5,
    activation: str = "tanh",
    lengths: bool = False,
    h0: bool = True,
    dstate: bool = True,
    seed: int = 0,
    scale: float = 0.5,
) -> Problem:
    """A float64 random problem. ``lengths=True`` draws lengths in [1, T] (one row full)."""
    rng = np.random.default_rng(seed)
    G = GATES[cell]

    def rand(*shape: int, s: float = 1.0) -> np.ndarray:
        return rng.uniform(-s, s, size=shape)

    inputs = {"x": rand(T, B, I)}
    params = {"W": rand(I, G * H, s=scale), "R": rand(H, G * H, s=scale),
              "b": rand(G * H, s=0.2)}
    if cell == "gru":
        params["b_hn"] = rand(H, s=0.2)
    out_grads = {"dy": rand(T, B, H)}
    if h0:
        inputs["h0"] = rand(B, H, s=0.5)
        if cell == "lstm":
            inputs["c0"] = rand(B, H, s=0.5)
    if dstate:
        out_grads["dhT"] = rand(B, H)
        if cell == "lstm":
            out_grads["dcT"] = rand(B, H)
    lens = None
    if lengths:
        lens = rng.integers(1, T + 1, size=B)
        lens[0] = T
    return Problem(cell, activation, inputs, params, out_grads, lens)


def forward(be: Any, p: Problem, inputs: dict | None = None, params: dict | None = None,
            lengths: Any = "problem") -> tuple:
    """Run ``be.<cell>_forward`` on the problem; returns (y, state tuple, cache)."""
    # a device backend refuses host arrays, so the problem goes to its device first
    inputs = _to(be, p.inputs if inputs is None else inputs)
    params = _to(be, p.params if params is None else params)
    lengths = p.lengths if isinstance(lengths, str) else lengths
    lengths = None if lengths is None else getattr(be, "xp", np).asarray(lengths)
    x, h0, c0 = inputs["x"], inputs.get("h0"), inputs.get("c0")
    W, R, b = params["W"], params["R"], params["b"]
    if p.cell == "rnn":
        y, hT, cache = be.rnn_forward(x, h0, W, R, b, activation=p.activation,
                                      lengths=lengths, **p.options)
        return y, (hT,), cache
    if p.cell == "lstm":
        y, (hT, cT), cache = be.lstm_forward(x, h0, c0, W, R, b, lengths=lengths, **p.options)
        return y, (hT, cT), cache
    y, hT, cache = be.gru_forward(x, h0, W, R, b, params["b_hn"], lengths=lengths, **p.options)
    return y, (hT,), cache


def backward(be: Any, p: Problem, cache: Any, per_step: bool = False) -> dict[str, Any]:
    """Run ``be.<cell>_backward``; returns a flat dict: dx, dh0 (, dc0), grads (, steps)."""
    g = _to(be, p.out_grads)
    dstate = (g.get("dhT"), g.get("dcT")) if p.cell == "lstm" else g.get("dhT")
    fn = getattr(be, f"{p.cell}_backward")
    out = fn(g["dy"], dstate, cache, per_step=per_step, **p.options)
    dx, ds0, grads = out[:3]
    res = {"dx": dx, "dh0": ds0[0] if p.cell == "lstm" else ds0, "grads": grads}
    if p.cell == "lstm":
        res["dc0"] = ds0[1]
    if per_step:
        res["steps"] = out[3]
    return res


def _loss_of(y: np.ndarray, state: tuple, p: Problem) -> float:
    g = p.out_grads
    total = float(np.sum(g["dy"] * y))
    for name, s in zip(("dhT", "dcT"), state):
        if name in g:
            total += float(np.sum(g[name] * s))
    return total


def loss(be: Any, p: Problem, inputs: dict | None = None, params: dict | None = None) -> float:
    y, state, _ = forward(be, p, inputs, params)
    return _loss_of(to_numpy(y), tuple(map(to_numpy, state)), p)


def _scored(p: Problem, y: np.ndarray, state: tuple) -> tuple[float, Any]:
    """(loss, kinks): kinks marks where relu outputs are positive (None when smooth)."""
    return _loss_of(y, state, p), (y > 0 if p.activation == "relu" else None)


def _loss_and_kinks(be: Any, p: Problem) -> tuple[float, Any]:
    y, state, _ = forward(be, p)
    return _scored(p, to_numpy(y), tuple(map(to_numpy, state)))


# ----------------------------------------------------------------------------
# finite differences


def _central(f: Callable[[], tuple[float, Any]], a: np.ndarray, idx: tuple, eps: float) -> float:
    """d f / d a[idx] by the fourth-order central stencil.

    (-f(+2e) + 8 f(+e) - 8 f(-e) + f(-2e)) / 12e: truncation error O(eps^4), so
    eps can be large enough (1e-3) that float64 round-off in f stays ~1e-13.
    ``f`` returns (loss, kinks): where the stencil changes ``kinks`` (the sign
    pattern of a relu's pre-activations) it straddles a kink, and the step shrinks.
    """
    old = a[idx]
    base_kinks = f()[1]
    while True:
        vals, same = [], True
        for k in (2, 1, -1, -2):
            a[idx] = old + k * eps
            value, kinks = f()
            vals.append(value)
            same = same and (kinks is None or np.array_equal(kinks, base_kinks))
        a[idx] = old
        if same or eps < 1e-7:
            return (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * eps)
        eps /= 10


def _tensors(p: Problem) -> dict[str, tuple[dict, str]]:
    """name -> (the dict holding it, key): every differentiable tensor of a problem."""
    out = {k: (p.inputs, k) for k in p.inputs}
    out.update({k: (p.params, k) for k in p.params})
    return out


def _analytic(res: dict, name: str) -> Any:
    return res["grads"][name] if name in res["grads"] else res["d" + name]


def fd_check(p: Problem, backend: str = "numpy", eps: float = 1e-3) -> dict[str, float]:
    """Element-wise central differences (float64) for every tensor; worst rel. error each."""
    be = backends.get(backend)
    p = p.astype(np.float64)
    res = backward(be, p, forward(be, p)[2])
    errors = {}
    for name, (holder, key) in _tensors(p).items():
        a = holder[key]
        num = np.zeros_like(a)
        for idx in np.ndindex(*a.shape):
            num[idx] = _central(lambda: _loss_and_kinks(be, p), a, idx, eps)
        errors[name] = rel_error(_analytic(res, name), num)
    return errors


def directional_check(p: Problem, backend: str = "numpy", eps: float = 1e-5,
                      seed: int = 0) -> dict[str, float]:
    """Per tensor, one random unit direction v: central difference vs ``<grad, v>``."""
    be = backends.get(backend)
    p = p.astype(np.float64)
    res = backward(be, p, forward(be, p)[2])
    rng = np.random.default_rng(seed)
    errors = {}
    for name, (holder, key) in _tensors(p).items():
        a = holder[key]
        v = rng.standard_normal(a.shape)
        v /= np.linalg.norm(v)
        base = a.copy()
        holder[key] = base + eps * v
        lp = loss(be, p)
        holder[key] = base - eps * v
        lm = loss(be, p)
        holder[key] = base
        num = (lp - lm) / (2 * eps)
        errors[name] = rel_error(np.sum(to_numpy(_analytic(res, name)) * v), num)
    return errors


# ----------------------------------------------------------------------------
# the per-step check: untied weights


def untied_loss(be: Any, p: Problem, steps: dict[str, np.ndarray]) -> tuple[float, Any]:
    """(``L``, kinks) when step t uses its own copy ``steps[k][t]`` of every parameter.

    steps: name -> (T, *param.shape). Runs the backend one step at a time and
    applies the variable-length rule (inactive rows keep their state, output 0)
    itself, so it checks the backend's ``lengths`` handling independently.
    """
    x = p.inputs["x"]
    T, B = x.shape[:2]
    H = p.params["R"].shape[0]
    state = [p.inputs.get("h0", np.zeros((B, H))), p.inputs.get("c0", np.zeros((B, H)))]
    lens = np.full(B, T) if p.lengths is None else np.asarray(p.lengths)
    y = np.zeros((T, B, H))
    for t in range(T):
        inputs = {"x": x[t : t + 1], "h0": state[0], "c0": state[1]}
        params = {k: v[t] for k, v in steps.items()}
        y_t, new_state, _ = forward(be, p, inputs, params, lengths=None)
        act = (t < lens)[:, None]
        y[t] = np.where(act, to_numpy(y_t)[0], 0)
        for j, s in enumerate(new_state):
            state[j] = np.where(act, to_numpy(s), state[j])
    return _scored(p, y, tuple(state))


def per_step_check(p: Problem, backend: str = "numpy", eps: float = 1e-3) -> dict[str, dict]:
    """Per parameter: ``fd``: worst rel. error of the per-step contributions against
    finite differences on the untied copies; ``sum``: worst rel. error of
    ``steps.sum(0)`` against the total gradient."""
    be = backends.get(backend)
    p = p.astype(np.float64)
    res = backward(be, p, forward(be, p)[2], per_step=True)
    T = p.T
    untied = {k: np.repeat(v[None], T, axis=0) for k, v in p.params.items()}
    out = {}
    for name, copies in untied.items():
        num = np.zeros_like(copies)
        for idx in np.ndindex(*copies.shape):
            num[idx] = _central(lambda: untied_loss(be, p, untied), copies, idx, eps)
        got = to_numpy(res["steps"][name])
        out[name] = {"fd": rel_error(got, num),
                     "sum": rel_error(got.sum(axis=0), res["grads"][name])}
    return out


# ----------------------------------------------------------------------------
# cross-backend parity


def parity(p: Problem, backend: str, dtype: Any = np.float32,
           per_step: bool = False) -> dict[str, float]:
    """Normwise error of ``backend`` in ``dtype`` against the float64 NumPy oracle.

    The oracle runs on the very values the backend sees (cast to ``dtype`` and
    back), so only the arithmetic differs. Compares y, the final state, dx, the
    initial-state gradients and every parameter gradient (and steps if per_step).
    """
    be = backends.get(backend)
    ref_be = backends.get("numpy")
    low = p.astype(dtype)
    ref_p = replace(low.astype(np.float64), options={})

    def run(b: Any, q: Problem) -> dict[str, Any]:
        y, state, cache = forward(b, q)
        r = backward(b, q, cache, per_step=per_step)
        flat = {"y": y, "hT": state[0], "dx": r["dx"], "dh0": r["dh0"]}
        if q.cell == "lstm":
            flat.update(cT=state[1], dc0=r["dc0"])
        flat.update({"d" + k: v for k, v in r["grads"].items()})
        if per_step:
            flat.update({"steps_" + k: v for k, v in r["steps"].items()})
        return flat

    got, ref = run(be, low), run(ref_be, ref_p)  # forward/backward move low to be's device
    for k, v in got.items():
        if to_numpy(v).dtype != np.dtype(dtype):
            raise AssertionError(f"{backend}: {k} came back as {to_numpy(v).dtype}, not {dtype}")
    return {k: norm_error(got[k], ref[k]) for k in ref}


def _to(be: Any, d: dict[str, np.ndarray]) -> dict[str, Any]:
    xp = getattr(be, "xp", np)
    return {k: None if v is None else xp.asarray(v) for k, v in d.items()}


# ----------------------------------------------------------------------------
# the suite behind `rnnkern gradcheck`

#: (cell, activation) pairs the suite covers
CASES = (("rnn", "tanh"), ("rnn", "relu"), ("rnn", "identity"), ("lstm", "tanh"), ("gru", "tanh"))


@dataclass
class Row:
    """One line of the report: the worst error of one check on one tensor."""

    cell: str
    activation: str
    backend: str
    dtype: str
    options: str
    check: str  # "fd" | "per-step" | "per-step-sum" | "parity"
    tensor: str
    error: float
    tol: float

    @property
    def ok(self) -> bool:
        return bool(self.error <= self.tol)  # False for NaN too


def run_suite(
    cells: tuple[str, ...] = ("rnn", "lstm", "gru"),
    backend_names: tuple[str, ...] | None = None,
    lengths_opts: tuple[bool, ...] = (False, True),
    state_opts: tuple[bool, ...] = (False, True),
    sizes: tuple[int, int, int, int] = (4, 3, 3, 5),
    seed: int = 0,
) -> list[Row]:
    """Finite differences, the per-step check and (for fast backends) parity, per case.

    sizes: (T, B, I, H). state: with/without h0 (and c0) and dhT (and dcT).
    """
    T, B, I, H = sizes
    rows = []
    for name in backend_names or tuple(backends.available()):
        for cell, act in (c for c in CASES if c[0] in cells):
            for lengths in lengths_opts:
                for state in state_opts:
                    opts = f"lengths={'yes' if lengths else 'no'} state={'yes' if state else 'no'}"
                    p = make_problem(cell, T, B, I, H, activation=act, lengths=lengths,
                                     h0=state, dstate=state, seed=seed)

                    def add(check: str, errs: dict, dtype: str, tol: float) -> None:
                        rows.extend(Row(cell, act, name, dtype, opts, check, k, v, tol)  # noqa: B023
                                    for k, v in errs.items())

                    add("fd", fd_check(p, name), "float64", FD_TOL)
                    steps = per_step_check(p, name)
                    add("per-step", {k: v["fd"] for k, v in steps.items()}, "float64", FD_TOL)
                    add("per-step-sum", {k: v["sum"] for k, v in steps.items()}, "float64", 1e-12)
                    if name != "numpy":
                        for dt in ("float32", "float64"):
                            add("parity", parity(p, name, dt, per_step=True), dt, PARITY_TOL[dt])
    return rows


def format_table(head: tuple[str, ...], body: list[tuple]) -> str:
    """Columns padded to their widest cell, a rule under the header."""
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# whole models: check_model


@dataclass
class ModelReport:
    """What ``check_model`` found, per parameter (names as ``model.parameters()``).

    errors: worst relative error of the analytic gradient against finite differences
    shapes: the parameter's shape   methods: "elementwise" or "directions" (random ones)
    directions: how many per "directions" tensor   tol: the bound every error must stay
    under   loss: the loss at the parameters   backend: where the float64 copy ran
    """

    errors: dict[str, float]
    shapes: dict[str, tuple[int, ...]]
    methods: dict[str, str]
    directions: int
    tol: float
    loss: float
    backend: str

    @property
    def ok(self) -> bool:
        """Every parameter's error at most ``tol`` (a NaN error fails)."""
        return not self.failed

    @property
    def failed(self) -> list[str]:
        """The parameters whose error is above ``tol`` (or NaN)."""
        return [k for k, e in self.errors.items() if not e <= self.tol]

    def table(self) -> str:
        """One row per parameter: name, shape, method, worst error, pass/FAIL."""
        how = {"elementwise": "elementwise", "directions": f"{self.directions} directions"}
        body = [(k, "x".join(map(str, self.shapes[k])) or "()", how[self.methods[k]],
                 f"{e:.2e}", "pass" if e <= self.tol else "FAIL")
                for k, e in self.errors.items()]
        return format_table(("parameter", "shape", "method", "worst rel err", "result"), body)

    def __str__(self) -> str:
        verdict = "all pass" if self.ok else f"FAILED: {', '.join(self.failed)}"
        return (f"{self.table()}\n\n{len(self.errors)} parameters, loss {self.loss:.6g} "
                f"(float64 on {self.backend}), tolerance {self.tol:.0e}: {verdict}")


def _host64(a: Any) -> Any:
    """A host float64 copy of a float array; ids, lengths, lists and None as they are
    (a CuPy array comes to the host)."""
    if not (hasattr(a, "dtype") and hasattr(a, "shape")):
        return a
    a = to_numpy(a)
    return a.astype(np.float64) if a.dtype.kind == "f" else a


def _state64(state: Any) -> Any:
    """``_host64`` over a state tree (tuples and lists of arrays)."""
    if isinstance(state, (tuple, list)):
        return type(state)(_state64(s) for s in state)
    return _host64(state)


def float64_copy(model: Layer) -> Layer:
    """A float64 copy of ``model`` with the same parameters, on its backend when that
    computes on the host (NumPy, Numba), else on NumPy; ``model`` is left untouched."""
    _check_layer(model)
    name = model.backend if backend_xp(backends.get(model.backend)) is np else "numpy"
    copy = serialize.from_spec(model.spec(), backend=name, dtype="float64")
    copy.load_parameters({k: to_numpy(v).astype(np.float64)
                          for k, v in model.parameters().items()})
    return copy


def _positive(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a number > 0, got {type(v).__name__}")
    if not (np.isfinite(v) and v > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {v}")
    return float(v)


def check_model(model: Layer, x: Any, target: Any, loss: Any = "mse", mask: Any = None,
                lengths: Any = None, feedback: int = 0, state: Any = None,
                eps: float = 1e-3, directions: int = 3, seed: int = 0,
                max_elements: int = 256, tol: float = FD_TOL) -> ModelReport:
    """Finite differences of the loss of a whole model against ``value_and_grad``.

    model: any layer or Sequential, any dtype and backend: the check runs on a float64
    copy (``float64_copy``), so the model itself is never changed. The arguments
    ``x, target, loss, mask, lengths, feedback, state`` are ``value_and_grad``'s
    (x: (T, B, I), target: (T, B, O) or (B, O), ...), cast to float64 where they are
    float arrays. For every parameter:

    - at most ``max_elements`` entries: each entry by the fourth-order central
      stencil of the suite (step ``eps``), the worst ``rel_error`` over the tensor;
    - more: ``directions`` random unit directions v (from ``seed``), the stencil of
      ``L(p + s v)`` in s at 0 against ``<grad, v>``, the worst over the directions.

    The report's ``ok`` is every error <= ``tol`` (default ``FD_TOL``). A kink of relu
    within ``eps`` of a pre-activation can spoil one entry's difference: a smaller
    ``eps`` tells such a case from a wrong backward.
    """
    _check_layer(model)
    eps = _positive("eps", eps)
    tol = _positive("tol", tol)
    directions = check_int("directions", directions, 1)
    seed = check_int("seed", seed, 0)
    max_elements = check_int("max_elements", max_elements, 0)
    copy = float64_copy(model)
    args = {"x": _host64(x), "target": _host64(target), "loss": loss, "mask": _host64(mask),
            "lengths": _host64(lengths), "feedback": feedback, "state": _state64(state)}
    # dropout: every forward draws the same masks, so the loss is one smooth function
    stochastic = _has_dropout(copy)
    with drawing_from(np.random.default_rng(seed)):
        value, grads = value_and_grad(copy, **args)  # validates every argument

    def f() -> tuple[float, None]:
        if not stochastic:
            return evaluate(copy, **args), None
        with drawing_from(np.random.default_rng(seed)):
            return value_and_grad(copy, **args)[0], None

    rng = np.random.default_rng(seed)
    errors, shapes, methods = {}, {}, {}
    for name, a in copy.parameters().items():
        g = to_numpy(grads[name])
        shapes[name] = tuple(a.shape)
        if a.size <= max_elements:
            methods[name] = "elementwise"
            num = np.zeros_like(a)
            for idx in np.ndindex(*a.shape):
                num[idx] = _central(f, a, idx, eps)
            errors[name] = rel_error(g, num)
            continue
        methods[name] = "directions"
        errors[name] = max(_along_directions(f, a, g, rng, directions, eps))
    return ModelReport(errors, shapes, methods, directions, tol, value, copy.backend)


def _has_dropout(model: Layer) -> bool:
    """Whether a training forward of ``model`` draws dropout masks (``evaluate`` does not)."""
    stack = list(model) if isinstance(model, Sequential) else [model]
    return any((isinstance(la, Dropout) and la.p > 0)
               or (isinstance(la, _Cell) and la.dropout > 0 and la.num_layers > 1)
               for la in stack)


def _along_directions(f: Callable[[], tuple[float, Any]], a: np.ndarray, g: np.ndarray,
                      rng: np.random.Generator, n: int, eps: float) -> list[float]:
    """For n random unit directions v: rel. error of ``<g, v>`` against the stencil of
    ``f`` with ``a = base + s v`` in s at 0; ``a`` is restored."""
    base, s, out = a.copy(), np.zeros(1), []

    def along() -> tuple[float, Any]:
        a[...] = base + s[0] * v
        return f()

    for _ in range(n):
        v = rng.standard_normal(a.shape)
        v /= np.linalg.norm(v)
        out.append(rel_error(np.sum(g * v), _central(along, s, (0,), eps)))
    a[...] = base
    return out


# ----------------------------------------------------------------------------
# the gradient BPTT carries: dL/dh_t


def _recurrent_layer(model: Layer, layer: Any) -> int:
    """The index of the recurrent layer ``layer`` names (None: the first one)."""
    stack = list(model) if isinstance(model, Sequential) else [model]
    cells = [i for i, lay in enumerate(stack) if isinstance(lay, _Cell)]
    if not cells:
        raise ValueError("model: has no recurrent layer (RNN, LSTM, GRU) to take dL/dh_t of")
    if layer is None:
        return cells[0]
    layer = check_int("layer", layer, 0, len(stack) - 1)
    if layer not in cells:
        raise ValueError(f"layer: expected the index of a recurrent layer (RNN, LSTM, GRU), "
                         f"one of {cells}; layer {layer} is {type(stack[layer]).__name__}")
    if not stack[layer]._single:
        raise ValueError(f"layer: dL/dh_t is taken of one layer read in one direction; "
                         f"layer {layer} is {stack[layer]!r}" + (
                             "" if stack[layer].bidirectional and stack[layer].num_layers == 1
                             else " (build the stack from single layers in a Sequential to "
                                  "look inside it)"))
    return layer


def hidden_grads(model: Layer, x: Any, target: Any, layer: int | None = None,
                 loss: Any = "mse", mask: Any = None, lengths: Any = None,
                 state: Any = None) -> np.ndarray:
    """g: (T, B, H), g[t] = dL/dh_t: the total gradient of the loss with respect to the
    hidden state h_t of recurrent layer ``layer`` (an index into the Sequential; None:
    its first recurrent layer) after step t.

    h_t is the one array that is both the layer's output at step t (read by the
    layers above) and its recurrent input at step t + 1, so g[t] is what BPTT carries
    into step t: the gradient from above at t plus the gradient through the
    recurrence from t + 1 on. Precisely, with h_t replaced by h_t + d everywhere
    downstream (an LSTM's cell state c_t kept as it is), g[t] = dL/dd at d = 0.
    Rows past their length have g = 0 there (nothing flows back through padding).
    The other arguments as ``value_and_grad``'s (teacher-forced: no ``feedback``);
    x: (T, B, I)   target: (T, B, O) or (B, O).

    Exact: layer ``layer`` runs one step at a time (T=1 calls, state carried), the
    layers above give dL/dy of its outputs, and a per-step backward adds the
    gradient each step hands back to the state before it. Dropout layers pass their
    input through, as in inference. Returned on the host.
    """
    _check_layer(model)
    i = _recurrent_layer(model, layer)
    c, m = _checked(model, x, target, lengths, 0, state, mask)
    loss_fn = losses.get(loss)
    stack = list(model) if isinstance(model, Sequential) else [model]
    states = (None,) * len(stack) if c.state is None else \
        c.state if isinstance(model, Sequential) else (c.state,)
    xp = array_module(x=c.x)
    h = c.x
    for j in range(i):
        h, _, _ = stack[j]._forward(h, states[j], c.lengths, False)
    cell = stack[i]
    T, B = h.shape[:2]
    active = None if c.lengths is None else \
        (xp.arange(T)[:, None] < c.lengths[None, :])[:, :, None]      # (T, B, 1)
    s, caches, ys = states[i], [], []
    for t in range(T):
        y_t, new, cache = cell._forward(h[t : t + 1], s, None, True)
        if active is not None:  # a row past its end keeps its state, outputs zero
            new, y_t = _mix(xp, active[t], new, s), y_t * active[t]
        s = new
        ys.append(y_t)
        caches.append(cache)
    out = xp.concatenate(ys)
    above = [j for j in range(i + 1, len(stack)) if not isinstance(stack[j], Dropout)]
    caches_above = []
    for j in above:  # Dropout left out: no masks, as in the layers below (inference)
        out, _, cache = stack[j]._forward(out, states[j], c.lengths, True)
        caches_above.append(cache)
    _, dy = losses.apply(loss_fn, out, c.target, m)
    for j, cache in zip(reversed(above), reversed(caches_above), strict=True):
        dy, _, _ = stack[j].backward(dy, None, cache)
    g = xp.zeros_like(dy)
    dstate = None  # gradient of the state after step t through the steps after it
    for t in reversed(range(T)):
        dh = dstate[0] if isinstance(dstate, tuple) else dstate
        g[t] = dy[t] if dh is None else dy[t] + dh
        if active is None:
            _, dstate, _ = cell.backward(dy[t : t + 1], dstate, caches[t])
        else:
            g[t] *= active[t]
            _, prev, _ = cell.backward(dy[t : t + 1] * active[t],
                                       _mix(xp, active[t], dstate, None), caches[t])
            dstate = _mix(xp, active[t], prev, dstate)
    return to_numpy(g)


def hidden_grad_norms(model: Layer, x: Any, target: Any, layer: int | None = None,
                      loss: Any = "mse", mask: Any = None, lengths: Any = None,
                      state: Any = None) -> np.ndarray:
    """(T,) float64: the norm of ``hidden_grads`` at every step, over the batch and the
    features, ``||dL/dh_t||`` (same arguments): how much gradient BPTT still carries
    at step t, the curve that shows vanishing or exploding gradients."""
    g = hidden_grads(model, x, target, layer, loss, mask, lengths, state).astype(np.float64)
    return np.sqrt(np.sum(g * g, axis=(1, 2)))
