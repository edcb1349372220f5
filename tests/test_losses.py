"""mse as DESIGN.md defines it, callable losses, mask helpers."""

import numpy as np
import pytest

import rnnkern as rk
from rnnkern import losses


def test_mse_definition_and_gradient():
    rng = np.random.default_rng(0)
    y, t = rng.standard_normal((4, 3, 2)), rng.standard_normal((4, 3, 2))
    mask = rng.integers(0, 2, (4, 3)).astype(float)
    mask[0, 0] = 1
    value, dy = losses.mse(y, t, mask)
    expected = (mask * ((y - t) ** 2).sum(-1)).sum() / (mask.sum() * 2)
    assert value == pytest.approx(expected, rel=1e-14)
    eps = 1e-6
    y2 = y.copy()
    y2[1, 2, 1] += eps
    assert (losses.mse(y2, t, mask)[0] - value) / eps == pytest.approx(dy[1, 2, 1], abs=1e-5)


def test_resolve_mask_broadcasts_and_drops_padding():
    m = losses.resolve_mask(rk.masks.from_step(1, 4), np.array([4, 2]), 4, 2, np.float64, np)
    np.testing.assert_array_equal(m, [[0, 0], [1, 1], [1, 0], [1, 0]])
    with pytest.raises(ValueError, match="mask"):
        losses.resolve_mask(np.ones((4, 3)), None, 4, 2, np.float64, np)


def test_mask_helpers():
    L = np.array([3, 1, 4])
    np.testing.assert_array_equal(rk.masks.all_steps(4), np.ones((4, 1), bool))
    np.testing.assert_array_equal(rk.masks.all_steps(4, L)[:, 1], [1, 0, 0, 0])
    np.testing.assert_array_equal(rk.masks.last_step(4)[:, 0], [0, 0, 0, 1])
    np.testing.assert_array_equal(rk.masks.last_step(4, L).argmax(0), L - 1)
    np.testing.assert_array_equal(rk.masks.from_step(2, 4)[:, 0], [0, 0, 1, 1])
    np.testing.assert_array_equal(rk.masks.from_step(2, 4, L)[:, 0], [0, 0, 1, 0])
    with pytest.raises(ValueError, match="k"):
        rk.masks.from_step(4, 4)
    with pytest.raises(ValueError, match="lengths"):
        rk.masks.last_step(4, [5, 1])


def test_empty_mask_and_unknown_loss():
    with pytest.raises(ValueError, match="mask"):
        losses.mse(np.zeros((2, 1, 1)), np.zeros((2, 1, 1)), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="loss"):
        losses.get("huber")


def test_callable_loss_in_value_and_grad():
    m = rk.Sequential(rk.GRU(1, 3), rk.Dense(3, 1), backend="numpy", dtype="float64", seed=0)
    x = np.random.default_rng(0).standard_normal((5, 2, 1))
    t = np.zeros_like(x)

    def half_sse(y, target, mask):  # sum over selected steps of (y - t)^2 / 2
        err = (y - target) * mask[:, :, None]
        return float((err**2).sum() / 2), err

    v1, g1 = rk.value_and_grad(m, x, t, loss=half_sse)
    v2, g2 = rk.value_and_grad(m, x, t)
    assert v1 == pytest.approx(v2 * 10 / 2, rel=1e-12)  # mse divides by sum(mask) * F = 10
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k] * 10 / 2, rtol=1e-10)
