"""Bidirectional layers, stacks of layers and Dropout: finite differences in float64 on
every backend, the layout of parameters and state, and what dropout does and does not."""

import numpy as np
import pytest

import rnnkern as rk
from rnnkern.layers import drawing_from

T, B, I, H = 6, 3, 2, 3  # noqa: E741
LENGTHS = np.array([6, 2, 4])
CELLS = {"rnn": rk.RNN, "lstm": rk.LSTM, "gru": rk.GRU}


def random_state(layer, rng, B=B):
    """A random state of ``layer``'s layout (via its zero-state final state)."""
    _, s, _ = layer.forward(np.zeros((1, B, layer.in_features)), training=False)
    return tree(lambda a: rng.uniform(-0.5, 0.5, a.shape), s)


def tree(f, s):
    if s is None:
        return None
    if isinstance(s, tuple):
        return tuple(tree(f, u) for u in s)
    return f(s)


def leaves(s):
    if s is None:
        return []
    if isinstance(s, tuple):
        return [a for u in s for a in leaves(u)]
    return [s]


def scalar(layer, x, state, lengths, dy, dstate, seed):
    """sum(dy * y) + sum(dstate * final state), dropout masks drawn from ``seed``."""
    with drawing_from(np.random.default_rng(seed)):
        y, s, _ = layer.forward(x, state, lengths)
    return float((dy * y).sum() + sum((a * b).sum() for a, b in zip(leaves(dstate), leaves(s),
                                                                      strict=True)))


def fd_worst(layer, x, state, lengths, rng, eps=1e-3, floor=1e-5):
    """Worst relative error of the layer's backward (parameters, x and the initial state)
    against the fourth-order central stencil, the same dropout masks in every forward."""
    with drawing_from(np.random.default_rng(3)):
        y, s, cache = layer.forward(x, state, lengths)
    dy = rng.standard_normal(y.shape)
    dstate = tree(lambda a: rng.standard_normal(a.shape), s)
    dx, dstate0, grads = layer.backward(dy, dstate, cache)
    tensors = [(f"param {k}", v, grads[k]) for k, v in layer.parameters().items()]
    tensors.append(("x", x, dx))
    if state is not None:
        tensors += [(f"state {i}", a, g) for i, (a, g) in
                    enumerate(zip(leaves(state), leaves(dstate0), strict=True))]
    assert set(grads) == set(layer.parameters())
    worst = {}
    for name, a, g in tensors:
        assert g.shape == a.shape, name
        err = 0.0
        for idx in np.ndindex(a.shape):
            keep = a[idx]
            f = []
            for step in (2, 1, -1, -2):
                a[idx] = keep + step * eps
                f.append(scalar(layer, x, state, lengths, dy, dstate, 3))
            a[idx] = keep
            fd = (-f[0] + 8 * f[1] - 8 * f[2] + f[3]) / (12 * eps)
            err = max(err, abs(fd - g[idx]) / max(abs(fd), abs(g[idx]), floor))
        worst[name] = err
    return worst


CPU = [b for b in rk.backends.available() if b in ("numpy", "numba")]


@pytest.fixture(params=CPU)
def cpu_backend(request):
    return request.param


@pytest.mark.parametrize("merge", ["concat", "sum"])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_finite_differences(cpu_backend, cell, merge, with_lengths):
    rng = np.random.default_rng(0)
    layer = rk.Bidirectional(CELLS[cell](I, H, backend=cpu_backend, dtype="float64", seed=1),
                             merge=merge, seed=2)
    x = rng.standard_normal((T, B, I))
    worst = fd_worst(layer, x, random_state(layer, rng), LENGTHS if with_lengths else None,
                     rng)
    assert max(worst.values()) < 1e-6, worst


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_two_layers_with_dropout_finite_differences(cpu_backend, cell, bidirectional):
    rng = np.random.default_rng(0)
    layer = CELLS[cell](I, H, num_layers=2, dropout=0.4, bidirectional=bidirectional,
                        backend=cpu_backend, dtype="float64", seed=1)
    x = rng.standard_normal((T, B, I))
    worst = fd_worst(layer, x, random_state(layer, rng), LENGTHS, rng)
    assert max(worst.values()) < 1e-6, worst


def test_a_model_with_dropout_layers_finite_differences(cpu_backend):
    rng = np.random.default_rng(0)
    model = rk.Sequential(rk.Dense(I, 4, "tanh"), rk.Dropout(0.3),
                          rk.Bidirectional(rk.GRU(4, H)), rk.Dropout(0.5), rk.Dense(2 * H, 2),
                          backend=cpu_backend, dtype="float64", seed=0)
    x = rng.standard_normal((T, B, I))
    worst = fd_worst(model, x, None, LENGTHS, rng)
    assert max(worst.values()) < 1e-6, worst


def test_reverse_direction_reads_each_row_backwards_within_its_length():
    rng = np.random.default_rng(0)
    cell = rk.GRU(I, H, backend="numpy", dtype="float64", seed=1)
    layer = rk.Bidirectional(cell, seed=2)
    reverse = rk.GRU(I, H, backend="numpy", dtype="float64")
    reverse.load_parameters({k: layer.parameters()[k + "_l0_reverse"] for k in ("W", "R", "b",
                                                                                "b_hn")})
    x = rng.standard_normal((T, B, I))
    y, (h_fwd, h_rev) = layer(x, lengths=LENGTHS, return_state=True)
    for b, n in enumerate(LENGTHS):
        row = x[:n, b : b + 1]
        y_f, hf = cell(row, return_state=True)
        y_r, hr = reverse(np.ascontiguousarray(row[::-1]), return_state=True)
        np.testing.assert_allclose(y[:n, b, :H], y_f[:, 0], atol=1e-14)
        np.testing.assert_allclose(y[:n, b, H:], y_r[::-1, 0], atol=1e-14)
        np.testing.assert_allclose(h_fwd[b], hf[0], atol=1e-14)
        np.testing.assert_allclose(h_rev[b], hr[0], atol=1e-14)
        assert not y[n:, b].any()  # padding stays at the end, zero


def test_merge_sum_adds_the_directions():
    x = np.random.default_rng(0).standard_normal((T, B, I))
    cat = rk.Bidirectional(rk.LSTM(I, H, dtype="float64", seed=1), seed=2)
    add = rk.Bidirectional(rk.LSTM(I, H, dtype="float64", seed=1), merge="sum", seed=2)
    y_cat, y_add = cat(x), add(x)
    assert y_cat.shape == (T, B, 2 * H) and y_add.shape == (T, B, H)
    np.testing.assert_allclose(y_add, y_cat[..., :H] + y_cat[..., H:], atol=1e-14)


def test_parameter_names_and_state_layout():
    lstm = rk.LSTM(I, H, num_layers=2, bidirectional=True, seed=0)
    names = {k: v.shape for k, v in lstm.parameters().items()}
    assert names["W_l0"] == (I, 4 * H) and names["W_l0_reverse"] == (I, 4 * H)
    assert names["W_l1"] == (2 * H, 4 * H) and names["R_l1_reverse"] == (H, 4 * H)
    assert len(names) == 12 and lstm.out_features == 2 * H
    _, (h, c) = lstm(np.zeros((T, B, I), np.float32), return_state=True)
    assert h.shape == c.shape == (4, B, H)
    gru = rk.GRU(I, H, num_layers=3, seed=0)
    assert sorted(gru.parameters()) == sorted(f"{k}_l{n}" for k in ("W", "R", "b", "b_hn")
                                               for n in range(3))
    assert sorted(rk.RNN(I, H).parameters()) == ["R", "W", "b"]  # one layer: as ever
    bi = rk.Bidirectional(rk.RNN(I, H, "relu", seed=0))
    assert bi.activation == "relu" and sorted(bi.parameters())[0] == "R_l0"
    _, (hf, hr) = bi(np.zeros((T, B, I), np.float32), return_state=True)
    assert hf.shape == hr.shape == (B, H)


def test_a_stack_is_layers_fed_one_into_the_next():
    rng = np.random.default_rng(0)
    stack = rk.RNN(I, H, num_layers=2, dtype="float64", seed=0)
    first, second = rk.RNN(I, H, dtype="float64"), rk.RNN(H, H, dtype="float64")
    p = stack.parameters()
    first.load_parameters({k: p[k + "_l0"] for k in ("W", "R", "b")})
    second.load_parameters({k: p[k + "_l1"] for k in ("W", "R", "b")})
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((2, B, H))
    y, h = stack(x, state=h0, return_state=True)
    y1, h1 = first(x, state=h0[0], return_state=True)
    y2, h2 = second(y1, state=h0[1], return_state=True)
    np.testing.assert_allclose(y, y2, atol=1e-14)
    np.testing.assert_allclose(h, np.stack([h1, h2]), atol=1e-14)


def test_dropout_masks_in_training_only():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 40, 8)).astype(np.float32)
    drop = rk.Dropout(0.25, seed=0)
    assert drop(x) is x  # inference passes x through
    y, _, cache = drop.forward(x)
    kept = y != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], x[kept] / 0.75, rtol=1e-6)
    dx, _, grads = drop.backward(np.ones_like(x), None, cache)
    np.testing.assert_array_equal(dx, kept / np.float32(0.75))
    assert grads == {}
    model = rk.Sequential(rk.GRU(8, 6), rk.Dropout(0.5), rk.Dense(6, 2), seed=0)
    plain = rk.Sequential(rk.GRU(8, 6), rk.Dense(6, 2), seed=0)
    np.testing.assert_array_equal(model(x), plain(x))
    target = rng.standard_normal((50, 40, 2)).astype(np.float32)
    assert rk.evaluate(model, x, target) == rk.evaluate(plain, x, target)
    np.testing.assert_array_equal(rk.generate(rk.Sequential(rk.Dense(8, 8), rk.Dropout(0.5),
                                                            seed=1), x[:3], 4),
                                  rk.generate(rk.Sequential(rk.Dense(8, 8), seed=1), x[:3], 4))


def test_a_seed_gives_the_same_history_with_dropout():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 32, 3)).astype(np.float32)
    target = rng.standard_normal((8, 32, 1)).astype(np.float32)

    def run(seed):
        model = rk.Sequential(rk.LSTM(3, 8, num_layers=2, dropout=0.3), rk.Dropout(0.2),
                              rk.Dense(8, 1), seed=0)
        opt = rk.Adam(model.parameters(), lr=1e-2)
        return rk.fit(model, opt, x, target, epochs=3, batch_size=8, seed=seed,
                      progress=False)["loss"]

    assert run(0) == run(0)
    assert run(0) != run(1)  # the masks come from fit's generator


def test_dropout_resumes_bit_identically(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 16, 3)).astype(np.float32)
    target = rng.standard_normal((8, 16, 1)).astype(np.float32)

    def model_opt():
        model = rk.Sequential(rk.GRU(3, 8), rk.Dropout(0.3), rk.Dense(8, 1), seed=0)
        return model, rk.Adam(model.parameters(), lr=1e-2)

    model, opt = model_opt()
    whole = rk.fit(model, opt, x, target, epochs=4, batch_size=4, progress=False)["loss"]
    path = tmp_path / "ck.npz"
    model, opt = model_opt()
    rk.fit(model, opt, x, target, epochs=2, batch_size=4, progress=False, checkpoint=path)
    model, opt = model_opt()
    resumed = rk.fit(model, opt, x, target, epochs=4, batch_size=4, progress=False,
                     checkpoint=path, resume=True)["loss"]
    assert resumed == whole


@pytest.mark.parametrize("layer", [
    rk.LSTM(I, H, num_layers=2, dropout=0.1, bidirectional=True, seed=0),
    rk.Bidirectional(rk.RNN(I, H, "relu", seed=0), merge="sum", seed=1),
    rk.Sequential(rk.GRU(I, H, num_layers=2, seed=0), rk.Dropout(0.2), rk.Dense(H, 1), seed=0),
])
def test_save_and_load(tmp_path, layer):
    rk.save(layer, tmp_path / "m.npz")
    back = rk.load(tmp_path / "m.npz")
    assert repr(back) == repr(layer)
    x = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    np.testing.assert_array_equal(back(x, lengths=LENGTHS), layer(x, lengths=LENGTHS))


def test_reading_backwards_refuses_what_needs_causality():
    model = rk.Sequential(rk.Bidirectional(rk.GRU(2, 3)), rk.Dense(6, 2), seed=0)
    x = np.zeros((T, B, 2), np.float32)
    with pytest.raises(ValueError, match="generate"):
        rk.generate(model, x, 3)
    with pytest.raises(ValueError, match="feedback"):
        rk.value_and_grad(model, x, x, feedback=2)
    opt = rk.Adam(model.parameters())
    with pytest.raises(ValueError, match="tbptt"):
        rk.fit(model, opt, x, x, epochs=1, batch_size=3, tbptt=2, progress=False)
    y = model(np.zeros((300, 2, 2), np.float32))  # longer than a streamed piece: one call
    assert y.shape == (300, 2, 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="p: expected a probability"):
        rk.Dropout(1.0)
    with pytest.raises(TypeError, match="p: expected a probability"):
        rk.Dropout("0.5")
    with pytest.raises(ValueError, match="dropout: expected a probability"):
        rk.LSTM(2, 3, num_layers=2, dropout=-0.1)
    with pytest.raises(ValueError, match="num_layers"):
        rk.GRU(2, 3, num_layers=0)
    with pytest.raises(TypeError, match="bidirectional"):
        rk.GRU(2, 3, bidirectional=1)
    with pytest.raises(ValueError, match="merge"):
        rk.Bidirectional(rk.GRU(2, 3), merge="mul")
    with pytest.raises(TypeError, match="cell"):
        rk.Bidirectional(rk.Dense(2, 3))
    with pytest.raises(ValueError, match="one layer in one direction"):
        rk.Bidirectional(rk.GRU(2, 3, num_layers=2))
    with pytest.warns(UserWarning, match="num_layers=1"):
        rk.LSTM(2, 3, dropout=0.5)
    stack = rk.LSTM(2, 3, num_layers=2)
    with pytest.raises(ValueError, match="num_layers \\* directions"):
        stack(np.zeros((T, B, 2), np.float32), state=(np.zeros((B, 3), np.float32),) * 2)
    with pytest.raises(ValueError, match="in_features=4 does not match"):
        rk.Sequential(rk.GRU(2, 3), rk.Dropout(0.1), rk.Dense(4, 1))


def test_dropout_takes_the_models_dtype_backend_and_layout():
    x = np.random.default_rng(0).standard_normal((T, B, 6))
    model = rk.Sequential(rk.Dropout(0.2), rk.LSTM(3, 4, dtype="float64"),
                          rk.Dropout(0.3), rk.Dense(4, 1, dtype="float64"))
    assert model.dtype == np.float64 and all(la.dtype == np.float64 for la in model)
    y = model(x[:, :, ::2])  # a strided view reaches the LSTM copied once, as ever
    np.testing.assert_array_equal(y, model(np.ascontiguousarray(x[:, :, ::2])))
    with pytest.raises(ValueError, match="only Dropout layers"):
        rk.evaluate(rk.Sequential(rk.Dropout(0.5)), x, x)


def test_a_stack_backward_checks_dy_and_its_cache():
    layer = rk.Bidirectional(rk.GRU(2, 3, dtype="float64"))
    x = np.zeros((T, B, 2))
    _, _, cache = layer.forward(x)
    with pytest.raises(ValueError, match="dy: expected"):
        layer.backward(np.zeros((T, B, 3 * 3)), None, cache)
    _, _, none = layer.forward(x, training=False)
    with pytest.raises(ValueError, match="training=False"):
        layer.backward(np.zeros((T, B, 6)), None, none)
