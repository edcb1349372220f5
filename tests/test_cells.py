"""Every cell on every backend: finite differences, the per-step check, chunking, dtypes.

Backends are parametrised through the ``backend`` fixture, so a newly registered
backend is checked by finite differences here without a line of new test code.
"""

import itertools

import numpy as np
import pytest

from rnnkern import backends
from rnnkern import gradcheck as gc
from rnnkern._validate import PARAMS

CASES = gc.CASES
# (T, B, I, H): single step, single row, odd sizes that divide nothing
SHAPES = [(1, 1, 1, 1), (1, 2, 3, 4), (4, 1, 2, 3), (5, 3, 3, 7)]


def _ids(case):
    return "-".join(case)


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}B{}I{}H{}".format(*s))
@pytest.mark.parametrize("lengths,h0,dstate", list(itertools.product([False, True], repeat=3)))
def test_finite_differences(backend, case, shape, lengths, h0, dstate):
    cell, act = case
    p = gc.make_problem(cell, *shape, activation=act, lengths=lengths, h0=h0, dstate=dstate,
                        seed=sum(shape))
    errors = gc.fd_check(p, backend)
    assert set(errors) >= {"x", "W", "R", "b"}
    assert max(errors.values()) <= gc.FD_TOL, errors


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("lengths", [False, True])
def test_per_step_contributions(backend, case, lengths):
    cell, act = case
    p = gc.make_problem(cell, T=4, B=3, I=2, H=3, activation=act, lengths=lengths, seed=3)
    out = gc.per_step_check(p, backend)
    assert set(out) == set(PARAMS[cell])
    for name, err in out.items():
        assert err["fd"] <= gc.FD_TOL, (name, err)
        assert err["sum"] <= 1e-12, (name, err)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_per_step_is_nonzero_at_every_step(case):
    """A guard on the check itself: every step contributes (no all-zero placeholder)."""
    cell, act = case
    p = gc.make_problem(cell, T=3, B=2, I=2, H=3, activation=act, seed=5)
    be = backends.get("numpy")
    steps = gc.backward(be, p, gc.forward(be, p)[2], per_step=True)["steps"]
    for name, s in steps.items():
        assert s.shape[0] == 3
        assert np.all(np.abs(s).reshape(3, -1).max(axis=1) > 0), name


def _split_problem(p, k):
    """Chunks [0, k) and [k, T) of a problem; lengths shift by k (all rows longer than k)."""
    first = gc.Problem(p.cell, p.activation, dict(p.inputs, x=p.inputs["x"][:k].copy()),
                       p.params, {}, None if p.lengths is None else np.minimum(p.lengths, k))
    second = gc.Problem(p.cell, p.activation, {"x": p.inputs["x"][k:].copy()}, p.params, {},
                        None if p.lengths is None else p.lengths - k)
    return first, second


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("lengths", [False, True])
def test_chunks_match_one_call(backend, case, lengths):
    """Two chunks with the state carried forward (and its gradient carried back)
    give the same outputs and gradients as one call over the whole sequence."""
    cell, act = case
    T, k = 7, 3
    p = gc.make_problem(cell, T=T, B=4, I=3, H=5, activation=act, seed=11)
    if lengths:
        p.lengths = np.array([7, 4, 5, 6])  # every row longer than the first chunk
    be = backends.get(backend)
    y, state, cache = gc.forward(be, p)
    full = gc.backward(be, p, cache)

    a, b = _split_problem(p, k)
    ya, state_a, cache_a = gc.forward(be, a)
    b.inputs.update(zip(("h0", "c0"), state_a))
    yb, state_b, cache_b = gc.forward(be, b)
    np.testing.assert_allclose(np.concatenate([ya, yb]), y, rtol=1e-12, atol=1e-14)
    for s_chunk, s_full in zip(state_b, state):
        np.testing.assert_allclose(s_chunk, s_full, rtol=1e-12, atol=1e-14)

    b.out_grads = {"dy": p.out_grads["dy"][k:].copy(), "dhT": p.out_grads["dhT"]}
    if cell == "lstm":
        b.out_grads["dcT"] = p.out_grads["dcT"]
    gb = gc.backward(be, b, cache_b)
    a.out_grads = {"dy": p.out_grads["dy"][:k].copy(), "dhT": gb["dh0"]}
    if cell == "lstm":
        a.out_grads["dcT"] = gb["dc0"]
    ga = gc.backward(be, a, cache_a)
    np.testing.assert_allclose(np.concatenate([ga["dx"], gb["dx"]]), full["dx"], rtol=1e-10,
                               atol=1e-13)
    np.testing.assert_allclose(ga["dh0"], full["dh0"], rtol=1e-10, atol=1e-13)
    for name in PARAMS[cell]:
        np.testing.assert_allclose(ga["grads"][name] + gb["grads"][name], full["grads"][name],
                                   rtol=1e-10, atol=1e-13)


def _host(a):
    return a.get() if hasattr(a, "get") else a  # a CuPy array comes back to the host


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inference_pass_equals_training_pass(backend, case, dtype):
    """``training=False``: no cache, and the outputs and final state of a training pass bit
    for bit (T=1, B=1, odd sizes, variable lengths, a carried state)."""
    cell, act = case
    be = backends.get(backend)
    for seed, (shape, lengths, h0) in enumerate(
            [((1, 1, 2, 3), False, True), ((5, 3, 3, 7), True, True), ((4, 2, 1, 5), True, False)]):
        p = gc.make_problem(cell, *shape, activation=act, lengths=lengths, h0=h0,
                            seed=seed).astype(dtype)
        y, state, cache = gc.forward(be, p)
        p.options = {"training": False}
        y_inf, state_inf, cache_inf = gc.forward(be, p)
        assert cache is not None and cache_inf is None
        for a, b in zip((y, *state), (y_inf, *state_inf), strict=True):
            assert b.dtype == dtype and np.array_equal(_host(a), _host(b))


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nan_input_propagates(backend, case, dtype):
    """A NaN in x[t0, n0] makes y[t0:, n0] and row n0 of the final state NaN and leaves
    every other value finite (numba's variants: test_numba)."""
    cell, act = case
    p = gc.make_problem(cell, 4, 5, 3, 7, activation=act).astype(dtype)
    p.inputs["x"][1, 2, 0] = np.nan
    y, state, _ = gc.forward(backends.get(backend), p)
    others = np.arange(5) != 2
    y = _host(y)
    assert np.isnan(y[1:, 2]).all()
    assert np.isfinite(y[:1]).all() and np.isfinite(y[:, others]).all()
    for s in map(_host, state):
        assert np.isnan(s[2]).all() and np.isfinite(s[others]).all()


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_in_dtype_out(backend, case, dtype):
    cell, act = case
    p = gc.make_problem(cell, T=3, B=2, I=2, H=3, activation=act, lengths=True).astype(dtype)
    be = backends.get(backend)
    y, state, cache = gc.forward(be, p)
    res = gc.backward(be, p, cache, per_step=True)
    arrays = [y, *state, res["dx"], res["dh0"], *res["grads"].values(), *res["steps"].values()]
    assert all(a.dtype == dtype for a in arrays)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_float32_parity_with_oracle(backend, case):
    cell, act = case
    p = gc.make_problem(cell, T=6, B=3, I=4, H=5, activation=act, lengths=True, seed=2)
    errors = gc.parity(p, backend, np.float32, per_step=True)
    assert max(errors.values()) <= gc.PARITY_TOL["float32"], errors


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_variable_length_semantics(backend, case):
    """Past a row's length: output zero, state carried, no gradient into those steps."""
    cell, act = case
    p = gc.make_problem(cell, T=5, B=3, I=2, H=4, activation=act, seed=4)
    p.lengths = np.array([5, 2, 1])
    be = backends.get(backend)
    y, state, cache = gc.forward(be, p)
    assert np.all(y[2:, 1] == 0) and np.all(y[1:, 2] == 0)
    short = gc.Problem(p.cell, p.activation, dict(p.inputs, x=p.inputs["x"][:2, 1:2].copy(),
                       **{k: v[1:2].copy() for k, v in p.inputs.items() if k != "x"}),
                       p.params, {})
    y_short, state_short, _ = gc.forward(be, short)
    for s_full, s_short in zip(state, state_short):
        np.testing.assert_allclose(s_full[1:2], s_short, rtol=1e-13)
    res = gc.backward(be, p, cache)
    assert np.all(res["dx"][2:, 1] == 0) and np.all(res["dx"][1:, 2] == 0)


def test_relu_and_identity_differ_from_tanh():
    """The activation argument is honoured (guards against a silently ignored option)."""
    be = backends.get("numpy")
    outs = {}
    for act in ("tanh", "relu", "identity"):
        p = gc.make_problem("rnn", activation=act, scale=2.0, seed=9)
        outs[act] = gc.forward(be, p)[0]
    assert np.all(outs["relu"] >= 0)
    assert np.max(np.abs(outs["identity"])) > 1  # unbounded, unlike tanh
    assert not np.allclose(outs["tanh"], outs["identity"])
