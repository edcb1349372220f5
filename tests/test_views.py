"""The model layer's data handling: strided views copied once at entry, sequence-to-one
(B, O) targets with ``data.last_step``, and the hints a batch-first layout gets."""

import numpy as np
import pytest

import rnnkern as rk
from rnnkern import _validate

T, B, I, H, O = 7, 6, 3, 5, 2
LENGTHS = np.array([7, 3, 5, 1, 6, 7])


def lstm_model(backend, first="lstm"):
    layers = ([rk.LSTM(I, H), rk.Dense(H, O)] if first == "lstm"
              else [rk.Dense(I, H, "tanh"), rk.GRU(H, H), rk.Dense(H, O)])
    return rk.Sequential(*layers, backend=backend, dtype="float64", seed=3)


def data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((T, B, I)), rng.standard_normal((T, B, O))


def big_views():
    """x, target with twice the rows, and their strided halves (every other row)."""
    x, t = data()
    xx, tt = np.repeat(x, 2, axis=1), np.repeat(t, 2, axis=1)
    return x, t, xx[:, ::2], tt[:, ::2]


# ----------------------------------------------------------------------------
# strided views


@pytest.mark.parametrize("first", ["lstm", "dense"])
def test_every_entry_point_takes_strided_views(backend, first):
    x, t, xv, tv = big_views()
    assert not xv.flags.c_contiguous and not tv.flags.c_contiguous
    m = lstm_model(backend, first)
    assert np.array_equal(m(xv), m(x))
    assert np.array_equal(m(xv, lengths=LENGTHS), m(x, lengths=LENGTHS))
    y, s = m(xv, return_state=True)
    hv = np.repeat(s[0][0] if first == "lstm" else s[1], 2, axis=0)[::2]
    assert not hv.flags.c_contiguous
    state = ((hv, s[0][1]), None) if first == "lstm" else (None, hv, None)
    assert np.array_equal(m(xv, state=state), m(x, state=state))
    v1, g1 = rk.value_and_grad(m, xv, tv, lengths=LENGTHS)
    v2, g2 = rk.value_and_grad(m, x, t, lengths=LENGTHS)
    assert v1 == v2 and all(np.array_equal(g1[k], g2[k]) for k in g2)
    assert rk.evaluate(m, xv, tv) == rk.evaluate(m, x, t)
    assert rk.losses.mse(m(x), tv, np.ones((T, B)))[0] == rk.evaluate(m, x, t)


def test_generate_takes_a_batch_slice(backend):
    x, _ = data()
    m = rk.Sequential(rk.GRU(I, H), rk.Dense(H, I), backend=backend, dtype="float64", seed=1)
    view = x[:5, :3]
    assert not view.flags.c_contiguous
    assert np.array_equal(rk.generate(m, view, 4), rk.generate(m, view.copy(), 4))


def test_fit_takes_views_with_one_copy_each(monkeypatch):
    """A strided x, target and validation set are copied once at entry, never per batch
    or epoch."""
    x, t, xv, tv = big_views()
    copies = []
    real = _validate.contiguous_copy
    monkeypatch.setattr(_validate, "contiguous_copy",
                        lambda name, a: copies.append(name) or real(name, a))

    def run(xs, ts):
        m = lstm_model("numpy")
        h = rk.fit(m, rk.Adam(m.parameters()), xs, ts, epochs=3, batch_size=2,
                   validation=(xs[:, :4], ts[:, :4]), progress=False)
        return h, m.parameters()

    h1, p1 = run(xv, tv)
    assert copies == ["x", "x"]  # the training x and the validation x (targets need none)
    h2, p2 = run(x, t)
    assert h1 == h2 and all(np.array_equal(p1[k], p2[k]) for k in p2)


def test_kernels_keep_their_strict_contract():
    x, _ = data()
    m = rk.LSTM(I, H, backend="numpy", dtype="float64", seed=0)
    p = m.parameters()
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        rk.backends.get("numpy").lstm_forward(np.asfortranarray(x), None, None, p["W"],
                                              p["R"], p["b"])


# ----------------------------------------------------------------------------
# sequence-to-one


def test_last_step_reads_each_rows_last_true_step():
    y = np.arange(T * B * O, dtype=np.float32).reshape(T, B, O)
    assert np.array_equal(rk.data.last_step(y), y[-1])
    got = rk.data.last_step(y, LENGTHS)
    assert got.shape == (B, O)
    for b in range(B):
        assert np.array_equal(got[b], y[LENGTHS[b] - 1, b])
    assert np.array_equal(rk.data.last_step(y, LENGTHS.tolist()), got)
    with pytest.raises(ValueError, match=r"lengths: expected values in \[1, T=7\]"):
        rk.data.last_step(y, LENGTHS + 1)
    with pytest.raises(ValueError, match="y: expected a 3-d array"):
        rk.data.last_step(y[0])


@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_seq2one_target_is_the_last_step_mask(backend, lengths):
    """A (B, O) target equals the (T, B, O) target with the last-step mask, in loss,
    gradients, evaluate and a whole fit (with a (B, O) validation target too)."""
    x, t = data()
    t1 = t[0]
    full = np.zeros((T, B, O))
    last = np.full(B, T - 1) if lengths is None else lengths - 1
    full[last, np.arange(B)] = t1
    mask = rk.masks.last_step(T, lengths)
    m = lstm_model(backend, "dense")
    v1, g1 = rk.value_and_grad(m, x, t1, lengths=lengths)
    v2, g2 = rk.value_and_grad(m, x, full, mask=mask, lengths=lengths)
    assert v1 == v2 and all(np.array_equal(g1[k], g2[k]) for k in g2)
    assert rk.evaluate(m, x, t1, lengths=lengths) == rk.evaluate(m, x, full, mask=mask,
                                                                 lengths=lengths)
    direct = float(np.mean((rk.data.last_step(m(x, lengths=lengths), lengths) - t1) ** 2))
    assert rk.evaluate(m, x, t1, lengths=lengths) == pytest.approx(direct, rel=1e-12)

    def train(target, mask, val):
        mm = lstm_model(backend, "dense")
        h = rk.fit(mm, rk.Adam(mm.parameters()), x, target, epochs=2, batch_size=4,
                   mask=mask, lengths=lengths, validation=val, progress=False)
        return h, mm.parameters()

    h1, p1 = train(t1, None, (x, t1, None, lengths))
    h2, p2 = train(full, mask, (x, full, mask, lengths))
    assert h1 == h2 and all(np.array_equal(p1[k], p2[k]) for k in p2)


def test_seq2one_errors_name_both_forms():
    x, t = data()
    m = lstm_model("numpy")
    with pytest.raises(ValueError, match=r"target: expected shape \(B=6, out_features=2\).*"
                                         r"sequence-to-one.*\(T=7, B=6, O=2\)"):
        rk.value_and_grad(m, x, t[0, :4])
    with pytest.raises(ValueError, match="mask: a \\(B, O\\) target already selects"):
        rk.fit(m, rk.Adam(m.parameters()), x, t[0], epochs=1, batch_size=2,
               mask=rk.masks.all_steps(T), progress=False)


# ----------------------------------------------------------------------------
# batch-first hints


def test_batch_first_data_gets_a_hint():
    x, t = data()
    xb, tb = rk.data.to_batch_first(x), rk.data.to_batch_first(t)
    m = lstm_model("numpy")
    with pytest.raises(ValueError, match=r"target: .*time-major.*from_batch_first"):
        rk.value_and_grad(m, x, tb)
    with pytest.raises(ValueError, match=r"lengths: .*time-major, x: \(T, B, F\).*"
                                         r"from_batch_first"):
        rk.fit(m, rk.Adam(m.parameters()), xb, tb, epochs=1, batch_size=2,
               lengths=LENGTHS, progress=False)
    with pytest.raises(ValueError, match=r"x: .*in_features=3.*from_flux"):
        m(rk.data.to_flux(x))
    with pytest.raises(ValueError, match=r"primer: .*from_flux"):
        rk.generate(rk.Sequential(rk.GRU(I, I), backend="numpy", dtype="float64"),
                    rk.data.to_flux(x), 2)
    # a mismatch that no transpose explains gets no hint
    with pytest.raises(ValueError) as e:
        rk.value_and_grad(m, x, t[:, :, :1])
    assert "time-major" not in str(e.value)
