"""Non-finite values: NaN data is refused up front; a NaN/inf loss, gradient or update
stops fit with an error naming the epoch and batch (or skips the batch), and the
parameters and optimiser state stay at their last finite values."""

import numpy as np
import pytest

import rnnkern as rk
from rnnkern.optim import NonFiniteError


def _task(backend, dtype="float32"):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (5, 12, 1)).astype(dtype)
    model = rk.Sequential(rk.LSTM(1, 4), rk.Dense(4, 1), backend=backend, dtype=dtype, seed=0)
    return model, x, np.cumsum(x, 0)


def _snapshot(model, opt):
    return ({k: v.copy() for k, v in model.parameters().items()},
            {k: v.copy() for k, v in opt.m.items()}, opt.t)


@pytest.mark.parametrize("where", ["x", "target"])
def test_nan_in_the_data_is_reported_up_front(backend, where):
    model, x, target = _task(backend)
    data = {"x": x.copy(), "target": target.copy()}
    data[where][3, 7, 0] = np.nan
    opt = rk.Adam(model.parameters())
    before = _snapshot(model, opt)
    msg = rf"{where}: expected finite values, got 1 NaN or inf entries \(the first at index " \
          r"\(3, 7, 0\)"
    with pytest.raises(ValueError, match=msg):
        rk.fit(model, opt, data["x"], data["target"], epochs=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=msg):
        rk.evaluate(model, data["x"], data["target"])
    with pytest.raises(ValueError, match=f"validation: {msg}"):
        rk.fit(model, opt, x, target, epochs=1, batch_size=4, progress=False,
               validation=(data["x"], data["target"]))
    assert opt.t == before[2]
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(v, before[0][k])


def test_diverging_learning_rate_stops_with_finite_parameters(backend):
    model, x, target = _task(backend)
    opt = rk.SGD(model.parameters(), lr=1e12)
    with pytest.raises(FloatingPointError, match=r"fit: epoch \d+, batch \d+ of 3: ") as info:
        rk.fit(model, opt, x, target * 1e3, epochs=50, batch_size=4, progress=False)
    assert isinstance(info.value, NonFiniteError)
    assert "last finite values" in str(info.value)
    assert all(np.isfinite(v).all() for v in model.parameters().values())
    assert opt.t >= 1


def _nan_on_call(n):
    """An mse whose n-th call (1-based) returns NaN: a batch that blows up."""
    calls = []

    def loss(y, target, mask):
        calls.append(1)
        value, dy = rk.losses.mse(y, target, mask)
        return (float("nan"), dy) if len(calls) == n else (value, dy)

    return loss


def test_nan_loss_raises_naming_epoch_and_batch_and_keeps_state(backend):
    model, x, target = _task(backend)
    opt = rk.Adam(model.parameters(), lr=1e-2)
    twin, _, _ = _task(backend)
    twin_opt = rk.Adam(twin.parameters(), lr=1e-2)
    rk.fit(twin, twin_opt, x, target, epochs=1, batch_size=4, shuffle=False, progress=False)
    # batches are 3 per epoch: the 5th call is epoch 2, batch 2
    with pytest.raises(FloatingPointError, match=r"epoch 2, batch 2 of 3: the loss is nan"):
        rk.fit(model, opt, x, target, epochs=3, batch_size=4, shuffle=False, progress=False,
               loss=_nan_on_call(5))
    assert opt.t == 4  # 3 steps of epoch 1, 1 of epoch 2: the NaN batch changed nothing
    rk.fit(twin, twin_opt, x[:, :4].copy(), target[:, :4], epochs=1, batch_size=4,
           shuffle=False, progress=False)
    for k, v in model.parameters().items():
        np.testing.assert_array_equal(v, twin.parameters()[k])
        np.testing.assert_array_equal(opt.m[k], twin_opt.m[k])


def test_skip_counts_the_batch_and_goes_on(backend):
    model, x, target = _task(backend)
    opt = rk.Adam(model.parameters(), lr=1e-2)
    h = rk.fit(model, opt, x, target, epochs=2, batch_size=4, shuffle=False, progress=False,
               loss=_nan_on_call(2), on_nonfinite="skip")
    assert h["skipped"] == [1, 0] and opt.t == 5
    assert all(np.isfinite(h["loss"]))
    assert all(np.isfinite(v).all() for v in model.parameters().values())


def test_nonfinite_gradient_is_caught(backend):
    model, x, target = _task(backend)

    def inf_grad(y, target, mask):
        value, dy = rk.losses.mse(y, target, mask)
        dy = dy.copy()
        dy[0, 0, 0] = np.inf
        return value, dy

    opt = rk.Adam(model.parameters())
    with pytest.raises(FloatingPointError, match="epoch 1, batch 1 of 3: the gradient norm"):
        rk.fit(model, opt, x, target, epochs=1, batch_size=4, progress=False, loss=inf_grad)
    assert opt.t == 0


def test_optimiser_update_is_all_or_nothing():
    p = {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)}
    opt = rk.SGD(p, lr=1e38, momentum=0.5)
    with pytest.raises(NonFiniteError, match="'b'"):  # a is fine, b overflows float32
        opt.step({"a": np.full(2, 1e-38, np.float32), "b": np.full(2, 10.0, np.float32)})
    np.testing.assert_array_equal(p["a"], 1)  # nothing written, a included
    assert opt.t == 0 and not opt.buf["a"].any()


def test_bad_on_nonfinite():
    model, x, target = _task("numpy")
    with pytest.raises(ValueError, match="on_nonfinite: expected one of 'raise', 'skip'"):
        rk.fit(model, rk.Adam(model.parameters()), x, target, epochs=1, batch_size=4,
               progress=False, on_nonfinite="ignore")
