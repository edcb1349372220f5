"""Layers and Sequential: shapes, initialisation, state, lengths, devices, bad input."""

import numpy as np
import pytest

import rnnkern as rk


def test_parameter_names_shapes_and_liveness(backend):
    m = rk.Sequential(rk.Dense(2, 3), rk.LSTM(3, 4), rk.GRU(4, 5), rk.RNN(5, 2, "relu"),
                      rk.Dense(2, 1, "sigmoid"), backend=backend, seed=0)
    shapes = {k: v.shape for k, v in m.parameters().items()}
    assert shapes == {"0.W": (2, 3), "0.b": (3,), "1.W": (3, 16), "1.R": (4, 16),
                      "1.b": (16,), "2.W": (4, 15), "2.R": (5, 15), "2.b": (15,),
                      "2.b_hn": (5,), "3.W": (5, 2), "3.R": (2, 2), "3.b": (2,),
                      "4.W": (2, 1), "4.b": (1,)}
    assert all(v.dtype == np.float32 for v in m.parameters().values())
    m.parameters()["4.b"][...] = 7
    assert m[4].parameters()["b"][0] == 7  # the live array, not a copy


def test_pytorch_initialisation_bounds():
    lstm = rk.LSTM(3, 16, seed=0, backend="numpy")
    k = 1 / np.sqrt(16)
    p = lstm.parameters()
    assert np.abs(p["W"]).max() <= k and np.abs(p["R"]).max() <= k
    assert np.abs(p["b"]).max() <= 2 * k  # bias_ih + bias_hh
    dense = rk.Dense(9, 4, seed=0, backend="numpy")
    assert np.abs(dense.parameters()["W"]).max() <= 1 / 3


def test_seed_reproducible_and_sequential_seed_reinitialises():
    a = rk.Sequential(rk.Dense(1, 3), rk.GRU(3, 3), seed=4, backend="numpy")
    b = rk.Sequential(rk.Dense(1, 3), rk.GRU(3, 3), seed=4, backend="numpy")
    c = rk.Sequential(rk.Dense(1, 3), rk.GRU(3, 3), seed=5, backend="numpy")
    for k, v in a.parameters().items():
        np.testing.assert_array_equal(v, b.parameters()[k])
    assert not np.array_equal(a.parameters()["1.R"], c.parameters()["1.R"])


def test_dense_forward_backward_matches_formula(backend):
    d = rk.Dense(3, 2, "tanh", backend=backend, dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2, 3))
    y, state, cache = d.forward(x)
    p = d.parameters()
    np.testing.assert_allclose(y, np.tanh(x @ p["W"] + p["b"]), rtol=1e-14)
    dy = np.ones_like(y)
    dx, _, g = d.backward(dy, None, cache)
    dz = 1 - y**2
    np.testing.assert_allclose(dx, dz @ p["W"].T, rtol=1e-14)
    np.testing.assert_allclose(g["b"], dz.sum((0, 1)), rtol=1e-14)
    assert state is None


def test_call_is_an_inference_pass(backend):
    """Calling a model is ``forward(..., training=False)``: no caches, the same outputs
    and state as a training pass."""
    m = rk.Sequential(rk.Dense(2, 4, "tanh"), rk.LSTM(4, 3), rk.GRU(3, 5), rk.RNN(5, 2),
                      backend=backend, dtype="float64", seed=2)
    x = np.random.default_rng(2).standard_normal((6, 3, 2))
    y, state, caches = m.forward(x)
    assert len(caches) == 4 and all(c is not None for c in caches)
    y_inf, state_inf, caches_inf = m.forward(x, training=False)
    assert caches_inf is None
    np.testing.assert_array_equal(y_inf, y)
    np.testing.assert_array_equal(m(x), y)
    for a, b in zip((state[1][0], state[1][1], state[2], state[3]),
                    (state_inf[1][0], state_inf[1][1], state_inf[2], state_inf[3])):
        np.testing.assert_array_equal(a, b)
    h = m[0](x)
    assert m[0].forward(x, training=False)[2] is None
    assert m[1].forward(h, training=False)[2] is None
    with pytest.raises(TypeError, match="training: expected True or False, got str"):
        m.forward(x, training="no")


def test_carried_state_equals_one_pass(backend):
    m = rk.Sequential(rk.Dense(2, 4, "relu"), rk.LSTM(4, 3), rk.GRU(3, 3), rk.Dense(3, 2),
                      backend=backend, dtype="float64", seed=1)
    x = np.random.default_rng(1).standard_normal((8, 3, 2))
    whole = m(x)
    y1, s = m(x[:5], return_state=True)
    y2 = m(np.ascontiguousarray(x[5:]), state=s)
    np.testing.assert_allclose(np.concatenate([y1, y2]), whole, rtol=1e-12, atol=1e-14)


def test_lengths_zero_the_padding_and_carry_state(backend):
    m = rk.Sequential(rk.Dense(1, 3), rk.RNN(3, 3), rk.Dense(3, 1), backend=backend,
                      dtype="float64", seed=2)
    x = np.random.default_rng(2).standard_normal((5, 2, 1))
    y, s = m(x, lengths=np.array([5, 3]), return_state=True)
    assert np.all(y[3:, 1] == 0)
    _, s_short = m(np.ascontiguousarray(x[:3, 1:]), return_state=True)
    np.testing.assert_allclose(s[1][1], s_short[1][0], rtol=1e-12)


def test_to_moves_between_host_backends():
    if "numba" not in rk.backends.available():
        pytest.skip("the numba backend is not available")
    m = rk.Sequential(rk.LSTM(2, 3), rk.Dense(3, 1), backend="numpy", dtype="float64", seed=0)
    arrays = m.parameters()
    x = np.random.default_rng(0).standard_normal((4, 2, 2))
    y = m(x)
    assert m.to("numba") is m and m.backend == "numba"
    assert all(arrays[k] is v for k, v in m.parameters().items())  # shared host arrays
    np.testing.assert_allclose(m(x), y, rtol=1e-12)


def test_bad_construction_and_input():
    with pytest.raises(ValueError, match="in_features"):
        rk.Sequential(rk.Dense(1, 3), rk.LSTM(4, 2), backend="numpy")
    with pytest.raises(ValueError, match="dtype"):
        rk.Sequential(rk.Dense(1, 3, dtype="float64"), rk.LSTM(3, 2), backend="numpy")
    with pytest.raises(ValueError, match="activation"):
        rk.Dense(1, 3, activation="softmax")
    with pytest.raises(ValueError, match="activation"):
        rk.RNN(1, 3, activation="sigmoid")
    with pytest.raises(ValueError, match="hidden"):
        rk.GRU(1, 0)
    with pytest.raises(ValueError, match="dtype"):
        rk.Dense(1, 1, dtype="int32")
    with pytest.raises(ValueError, match="backend"):
        rk.LSTM(1, 1, backend="tpu")
    m = rk.Sequential(rk.Dense(2, 3), rk.LSTM(3, 2), backend="numpy")
    with pytest.raises(ValueError, match="x"):
        m(np.zeros((4, 2, 3), np.float32))
    with pytest.raises(TypeError, match="state"):  # an array where a tuple belongs
        m(np.zeros((4, 2, 2), np.float32), state=np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="lengths"):
        m(np.zeros((4, 2, 2), np.float32), lengths=np.array([5, 1]))
