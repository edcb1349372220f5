"""Adam (bias-corrected, PyTorch's update), SGD with momentum, global-norm clipping."""

import numpy as np
import pytest

import rnnkern as rk
from rnnkern.optim import global_norm


def test_adam_matches_reference_formula():
    rng = np.random.default_rng(0)
    p = {"a": rng.standard_normal(3), "b": rng.standard_normal((2, 2))}
    ref = {k: v.copy() for k, v in p.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    opt = rk.Adam(p, lr=0.1, betas=(0.8, 0.9), eps=1e-6)
    for t in range(1, 4):
        g = {k: rng.standard_normal(x.shape) for k, x in p.items()}
        opt.step(g)
        for k in p:
            m[k] = 0.8 * m[k] + 0.2 * g[k]
            v[k] = 0.9 * v[k] + 0.1 * g[k] ** 2
            mhat, vhat = m[k] / (1 - 0.8**t), v[k] / (1 - 0.9**t)
            ref[k] -= 0.1 * mhat / (np.sqrt(vhat) + 1e-6)
            np.testing.assert_allclose(p[k], ref[k], rtol=1e-12)


def test_first_adam_step_is_lr_times_sign():
    p = {"w": np.array([1.0, 1.0, 1.0])}
    rk.Adam(p, lr=0.01, eps=0).step({"w": np.array([3.0, -0.2, 1e-3])})
    np.testing.assert_allclose(p["w"], [0.99, 1.01, 0.99], rtol=1e-12)


def test_clipping_by_global_norm_before_the_update():
    p = {"a": np.zeros(2), "b": np.zeros(2)}
    g = {"a": np.array([3.0, 0.0]), "b": np.array([0.0, 4.0])}  # global norm 5
    assert global_norm(g) == 5
    rk.SGD(p, lr=1.0, clip_norm=1.0).step(g)
    np.testing.assert_allclose(p["a"], [-0.6, 0])
    np.testing.assert_allclose(p["b"], [0, -0.8])
    q = {"a": np.zeros(2), "b": np.zeros(2)}
    rk.SGD(q, lr=1.0, clip_norm=10.0).step(g)  # under the bound: untouched
    np.testing.assert_allclose(q["a"], [-3, 0])


def test_sgd_momentum():
    p = {"w": np.array([0.0])}
    opt = rk.SGD(p, lr=0.5, momentum=0.9)
    opt.step({"w": np.array([1.0])})
    opt.step({"w": np.array([1.0])})
    np.testing.assert_allclose(p["w"], [-0.5 - 0.5 * 1.9])


def test_optimiser_updates_the_model_in_place():
    m = rk.Sequential(rk.LSTM(1, 2), rk.Dense(2, 1), backend="numpy", seed=0)
    before = {k: v.copy() for k, v in m.parameters().items()}
    opt = rk.Adam(m.parameters(), lr=0.1)
    x = np.ones((3, 2, 1), np.float32)
    opt.step(rk.value_and_grad(m, x, x)[1])
    assert all(not np.array_equal(before[k], v) for k, v in m.parameters().items())


def test_bad_arguments():
    p = {"w": np.zeros(2)}
    with pytest.raises(ValueError, match="lr"):
        rk.Adam(p, lr=-1)
    with pytest.raises(ValueError, match="betas"):
        rk.Adam(p, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="clip_norm"):
        rk.SGD(p, lr=0.1, clip_norm=0)
    with pytest.raises(ValueError, match="params"):
        rk.Adam({})
    with pytest.raises(ValueError, match="grads"):
        rk.SGD(p, lr=0.1).step({"v": np.zeros(2)})
    with pytest.raises(ValueError, match="grads"):
        rk.SGD(p, lr=0.1).step({"w": np.zeros(3)})
