"""Whole-model gradient checks: ``check_model`` passes on correct models, names the
parameter whose backward is broken, runs from ``rnnkern gradcheck --model/--data``;
``hidden_grads`` (dL/dh_t of one recurrent layer) against finite differences."""

import numpy as np
import pytest

import rnnkern as rk
from rnnkern import gradcheck as gc
from rnnkern import layers, losses
from rnnkern.backends import numpy_ref
from rnnkern.cli import main


def rand(rng, *shape):
    return rng.standard_normal(shape)


def dense_lstm_dense(dtype="float64", backend="numpy"):
    return rk.Sequential(rk.Dense(2, 3, "tanh"), rk.LSTM(3, 4), rk.Dense(4, 2),
                         backend=backend, dtype=dtype, seed=0)


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    return rand(rng, 5, 3, 2), rand(rng, 5, 3, 2)


def test_dense_lstm_dense_passes_elementwise(data):
    x, target = data
    model = dense_lstm_dense()
    report = gc.check_model(model, x, target)
    assert report.ok and report.failed == []
    assert list(report.errors) == list(model.parameters())
    assert set(report.methods.values()) == {"elementwise"}
    assert max(report.errors.values()) <= gc.FD_TOL
    assert report.shapes["1.R"] == (4, 16) and report.tol == gc.FD_TOL
    assert report.loss == pytest.approx(rk.evaluate(model, x, target), rel=1e-12)
    text = str(report)
    assert text.startswith(report.table())
    for name in report.errors:
        assert name in text
    assert "FAIL" not in text and "all pass" in text


def test_big_tensors_go_by_random_directions(data):
    x, target = data
    report = gc.check_model(dense_lstm_dense(), x, target, max_elements=12, directions=2)
    assert report.ok
    assert report.methods == {"0.W": "elementwise", "0.b": "elementwise",
                              "1.W": "directions", "1.R": "directions", "1.b": "directions",
                              "2.W": "elementwise", "2.b": "elementwise"}
    assert "2 directions" in report.table()


def test_gru_with_lengths_and_a_seq2one_target():
    rng = np.random.default_rng(2)
    model = rk.Sequential(rk.GRU(3, 4), rk.Dense(4, 2), backend="numpy", dtype="float64",
                          seed=3)
    report = gc.check_model(model, rand(rng, 6, 4, 3), rand(rng, 4, 2),
                            lengths=np.array([6, 2, 4, 1]))
    assert report.ok, report
    assert "0.b_hn" in report.errors


def test_rnn_with_feedback_and_an_initial_state():
    rng = np.random.default_rng(3)
    model = rk.Sequential(rk.RNN(2, 5), rk.Dense(5, 2), backend="numpy", dtype="float64",
                          seed=4)
    state = (0.5 * rand(rng, 3, 5), None)
    report = gc.check_model(model, rand(rng, 6, 3, 2), rand(rng, 6, 3, 2), feedback=2,
                            state=state)
    assert report.ok, report


def test_cross_entropy_and_a_callable_loss():
    rng = np.random.default_rng(4)
    model = rk.Sequential(rk.LSTM(2, 3), rk.Dense(3, 4), backend="numpy", dtype="float64",
                          seed=5)
    x = rand(rng, 4, 2, 2)
    assert gc.check_model(model, x, rng.integers(0, 4, (4, 2)), loss="cross_entropy").ok

    def l1ish(y, target, mask):  # a smooth loss of the user's own
        d = y - target
        return float(np.sum(np.sqrt(1 + d * d))), d / np.sqrt(1 + d * d)

    assert gc.check_model(model, x, rand(rng, 4, 2, 4), loss=l1ish).ok


def test_a_float32_model_is_checked_on_a_float64_copy_and_left_alone(data):
    x, target = data
    model = dense_lstm_dense(dtype="float32", backend=None)
    before = {k: v.copy() for k, v in model.parameters().items()}
    report = gc.check_model(model, x.astype(np.float32), target.astype(np.float32))
    assert report.ok, report
    assert report.backend == model.backend  # a host backend checks its own kernels
    for k, v in model.parameters().items():
        assert v.dtype == np.float32 and np.array_equal(v, before[k])


def test_float64_copy_has_the_same_parameters():
    model = dense_lstm_dense(dtype="float32")
    copy = gc.float64_copy(model)
    assert copy is not model and copy.dtype == np.float64 and copy.spec() == model.spec()
    for k, v in copy.parameters().items():
        assert np.array_equal(v, model.parameters()[k].astype(np.float64))


def scaled(fn, key, factor):
    """``fn`` (a backward) with grads[key] scaled: a one-line slip in a backward."""
    def broken(*args, **kwargs):
        out = fn(*args, **kwargs)
        out[2][key] = out[2][key] * factor
        return out
    return broken


@pytest.mark.parametrize("max_elements", [10_000, 0], ids=["elementwise", "directions"])
def test_a_broken_lstm_backward_is_named(data, monkeypatch, max_elements):
    x, target = data
    monkeypatch.setattr(numpy_ref, "lstm_backward", scaled(numpy_ref.lstm_backward, "R", 1.001))
    report = gc.check_model(dense_lstm_dense(), x, target, max_elements=max_elements)
    assert not report.ok
    assert report.failed == ["1.R"]
    assert report.errors["1.R"] > 1e-4
    assert "FAIL" in report.table() and "FAILED: 1.R" in str(report)


def test_a_broken_dense_backward_is_named(data, monkeypatch):
    x, target = data
    monkeypatch.setattr(layers.Dense, "backward", scaled(layers.Dense.backward, "b", 0.99))
    report = gc.check_model(dense_lstm_dense(), x, target)
    assert report.failed == ["0.b", "2.b"]


def test_a_nan_error_fails():
    report = gc.ModelReport({"W": float("nan")}, {"W": (2,)}, {"W": "elementwise"}, 3,
                            gc.FD_TOL, 0.0, "numpy")
    assert not report.ok and report.failed == ["W"]


# ----------------------------------------------------------------------------
# the command line


@pytest.fixture
def saved(tmp_path, data):
    x, target = data
    rk.save(dense_lstm_dense(dtype="float32"), tmp_path / "m.npz")
    np.savez(tmp_path / "d.npz", x=x.astype(np.float32), target=target.astype(np.float32),
             lengths=np.array([5, 3, 4]))
    return str(tmp_path / "m.npz"), str(tmp_path / "d.npz")


def test_cli_checks_a_saved_model(saved, capsys):
    m, d = saved
    assert main(["gradcheck", "--model", m, "--data", d, "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "1.R" in out and "all pass" in out and "FAIL" not in out


def test_cli_exits_nonzero_on_a_broken_backward(saved, capsys, monkeypatch):
    m, d = saved
    monkeypatch.setattr(layers.Dense, "backward", scaled(layers.Dense.backward, "W", 1.01))
    assert main(["gradcheck", "--model", m, "--data", d, "--feedback", "1"]) == 1
    out = capsys.readouterr().out
    assert "FAILED: 0.W, 2.W" in out


def test_cli_cross_entropy(tmp_path, capsys):
    rng = np.random.default_rng(5)
    rk.save(rk.Sequential(rk.GRU(2, 3), rk.Dense(3, 4), seed=0), tmp_path / "m.npz")
    np.savez(tmp_path / "d.npz", x=rand(rng, 4, 2, 2).astype(np.float32),
             target=rng.integers(0, 4, (4, 2)), mask=np.ones((4, 1), bool))
    assert main(["gradcheck", "--model", str(tmp_path / "m.npz"), "--data",
                 str(tmp_path / "d.npz"), "--loss", "cross_entropy"]) == 0
    assert "all pass" in capsys.readouterr().out


@pytest.mark.parametrize("which, message", [
    ("no-model-file", "--model: no such file"),
    ("no-data-file", "--data: no such file"),
    ("missing-key", "missing target; unknown targets"),
    ("single-array", "is a single array; expected an .npz"),
    ("only-model", "expected both"),
    ("two-backends", "the one backend to load the model on"),
])
def test_cli_refuses_bad_files(saved, tmp_path, capsys, which, message):
    m, d = saved
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 1, 2), np.float32),
             targets=np.zeros((2, 1, 2), np.float32))
    np.save(tmp_path / "one.npy", np.zeros((2, 1, 2), np.float32))
    argv = {"no-model-file": ["--model", str(tmp_path / "none.npz"), "--data", d],
            "no-data-file": ["--model", m, "--data", str(tmp_path / "none.npz")],
            "missing-key": ["--model", m, "--data", str(tmp_path / "bad.npz")],
            "single-array": ["--model", m, "--data", str(tmp_path / "one.npy")],
            "only-model": ["--model", m],
            "two-backends": ["--model", m, "--data", d, "--backend", "numpy",
                             "--backend", "numpy"]}[which]
    with pytest.raises(SystemExit) as e:
        main(["gradcheck", *argv])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------
# dL/dh_t


def perturbed_loss(model, x, target, i, t, d, lengths, state):
    """The loss with ``d`` added to layer i's hidden state after step t, wherever it goes
    on (the output at t and the recurrence into t + 1): that layer runs as two calls."""
    stack = list(model)
    T = x.shape[0]
    h = x
    for j in range(i):
        h, _, _ = stack[j].forward(h, None, lengths, False)
    first = None if lengths is None else np.minimum(lengths, t + 1)
    y, s, _ = stack[i].forward(h[: t + 1], state, first, False)
    y[t] += d
    s = (s[0] + d, s[1]) if isinstance(s, tuple) else s + d
    if t + 1 < T:
        rest = None if lengths is None else np.clip(lengths - t - 1, 1, T - t - 1)
        y2, _, _ = stack[i].forward(h[t + 1 :], s, rest, False)
        if lengths is not None:  # rows that ended by t ran one padding step: undone
            y2 = y2 * (lengths > t + 1)[None, :, None]
        y = np.concatenate([y, y2])
    for j in range(i + 1, len(stack)):
        y, _, _ = stack[j].forward(y, None, lengths, False)
    m = losses.resolve_mask(None, lengths, T, x.shape[1], np.float64, np)
    return losses.mse(y, target, m)[0]


@pytest.mark.parametrize("cell, lengths, layer", [
    ("LSTM", None, 1), ("GRU", [5, 2, 4], 1), ("RNN", [1, 5, 3], 1), ("LSTM", [4, 5, 2], 2),
], ids=["lstm", "gru-lengths", "rnn-lengths", "lstm-under-lstm"])
def test_hidden_grads_against_finite_differences(cell, lengths, layer):
    rng = np.random.default_rng(6)
    cls = getattr(rk, cell)
    model = rk.Sequential(rk.Dense(2, 3, "tanh"), cls(3, 4), cls(4, 4), rk.Dense(4, 2),
                          backend="numpy", dtype="float64", seed=7)
    lengths = None if lengths is None else np.array(lengths)
    x, target = rand(rng, 5, 3, 2), rand(rng, 5, 3, 2)
    g = gc.hidden_grads(model, x, target, layer=layer, lengths=lengths)
    assert g.shape == (5, 3, 4)
    num, eps = np.zeros_like(g), 1e-5
    for t, b, k in np.ndindex(*g.shape):
        d = np.zeros((3, 4))
        d[b, k] = eps
        num[t, b, k] = (perturbed_loss(model, x, target, layer, t, d, lengths, None)
                        - perturbed_loss(model, x, target, layer, t, -d, lengths, None)) / (2 * eps)
    assert gc.rel_error(g, num) < 1e-6
    if lengths is not None:  # padding steps carry nothing
        assert np.all(g[np.arange(5)[:, None] >= lengths[None, :]] == 0)
    norms = gc.hidden_grad_norms(model, x, target, layer=layer, lengths=lengths)
    np.testing.assert_allclose(norms, np.linalg.norm(g.reshape(5, -1), axis=1), rtol=1e-14)


def test_hidden_grads_of_a_lone_lstm_with_an_initial_state():
    rng = np.random.default_rng(8)
    model = rk.LSTM(2, 3, backend="numpy", dtype="float64", seed=9)
    x, target = rand(rng, 4, 2, 2), rand(rng, 4, 2, 3)
    state = (0.5 * rand(rng, 2, 3), 0.5 * rand(rng, 2, 3))
    g = gc.hidden_grads(model, x, target, state=state)
    seq = rk.Sequential(model)  # the same layer: perturbed_loss walks a stack
    num, eps = np.zeros_like(g), 1e-5
    for t, b, k in np.ndindex(*g.shape):
        d = np.zeros((2, 3))
        d[b, k] = eps
        num[t, b, k] = (perturbed_loss(seq, x, target, 0, t, d, None, state)
                        - perturbed_loss(seq, x, target, 0, t, -d, None, state)) / (2 * eps)
    assert gc.rel_error(g, num) < 1e-6
    # the last step's gradient is the loss's own: nothing comes back from later steps
    _, dy = losses.mse(model(x, state=state), target, np.ones((4, 2)))
    np.testing.assert_allclose(g[-1], dy[-1], rtol=1e-14)


def test_hidden_grad_norms_on_float32_and_the_default_layer():
    rng = np.random.default_rng(10)
    model = rk.Sequential(rk.Dense(2, 3), rk.GRU(3, 4), rk.Dense(4, 1), seed=0)
    x = rand(rng, 6, 2, 2).astype(np.float32)
    target = rand(rng, 2, 1).astype(np.float32)  # seq2one: the last step only
    n = gc.hidden_grad_norms(model, x, target)
    ref = gc.hidden_grad_norms(gc.float64_copy(model), x.astype(np.float64),
                               target.astype(np.float64), layer=1)
    assert n.dtype == np.float64 and n.shape == (6,)
    np.testing.assert_allclose(n, ref, rtol=1e-4)


# ----------------------------------------------------------------------------
# argument errors


@pytest.mark.parametrize("kwargs, error, message", [
    ({"model": "m"}, TypeError, "model: expected an rnnkern layer"),
    ({"eps": 0}, ValueError, "eps: expected a finite number > 0, got 0"),
    ({"eps": "1e-3"}, TypeError, "eps: expected a number > 0, got str"),
    ({"tol": float("inf")}, ValueError, "tol: expected a finite number > 0"),
    ({"directions": 0}, ValueError, "directions"),
    ({"max_elements": -1}, ValueError, "max_elements"),
    ({"seed": 1.5}, TypeError, "seed"),
    ({"x": np.zeros((5, 3, 7))}, ValueError, "x"),
    ({"target": np.zeros((5, 2, 2))}, ValueError, "target"),
    ({"loss": "mae"}, ValueError, "loss"),
    ({"feedback": 5}, ValueError, "feedback"),
])
def test_check_model_argument_errors(data, kwargs, error, message):
    x, target = data
    args = {"model": dense_lstm_dense(), "x": x, "target": target, **kwargs}
    with pytest.raises(error, match=message):
        gc.check_model(**args)


@pytest.mark.parametrize("model, layer, message", [
    (rk.Sequential(rk.Dense(2, 3), rk.LSTM(3, 2)), 0, r"one of \[1\]; layer 0 is Dense"),
    (rk.Sequential(rk.Dense(2, 3), rk.LSTM(3, 2)), 2, "layer"),
    (rk.Dense(2, 2), None, "has no recurrent layer"),
])
def test_hidden_grads_argument_errors(model, layer, message):
    x = np.zeros((3, 1, 2), np.float32)
    with pytest.raises(ValueError, match=message):
        gc.hidden_grads(model, x, np.zeros((3, 1, 2), np.float32), layer=layer)


@pytest.mark.parametrize("backend", [b for b in rk.backends.available() if b != "cupy"])
def test_hidden_grads_agree_across_host_backends(backend):
    rng = np.random.default_rng(11)
    x, target, lengths = rand(rng, 6, 3, 2), rand(rng, 6, 3, 2), np.array([6, 2, 4])

    def grads(name):
        model = rk.Sequential(rk.LSTM(2, 4), rk.Dense(4, 2), backend=name, dtype="float64",
                              seed=0)
        return gc.hidden_grads(model, x, target, lengths=lengths)

    assert gc.norm_error(grads(backend), grads("numpy")) < 1e-12


def test_check_model_on_bidirectional_stacks_and_dropout(backend):
    if backend not in ("numpy", "numba"):
        pytest.skip("finite differences run on the host backends")
    rng = np.random.default_rng(0)
    T, B = 6, 3
    x = rng.standard_normal((T, B, 2))
    target = rng.standard_normal((T, B, 2))
    lengths = np.array([6, 3, 4])
    for model in (
        rk.Sequential(rk.Bidirectional(rk.LSTM(2, 3), merge="sum"), rk.Dense(3, 2),
                      backend=backend, seed=0),
        rk.Sequential(rk.GRU(2, 3, num_layers=2, dropout=0.3, bidirectional=True),
                      rk.Dropout(0.4), rk.Dense(6, 2), backend=backend, seed=0),
    ):
        report = rk.gradcheck.check_model(model, x, target, lengths=lengths)
        assert report.ok, report.table()


def test_check_model_catches_a_backward_that_forgets_to_reverse(monkeypatch):
    from rnnkern import layers
    from rnnkern.backends import numpy_ref

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 2))
    target = rng.standard_normal((5, 2, 2))
    model = rk.Sequential(rk.Dense(2, 3, "tanh"), rk.Bidirectional(rk.RNN(3, 3)),
                          rk.Dense(6, 2), backend="numpy", seed=0)
    assert rk.gradcheck.check_model(model, x, target, lengths=[5, 3]).ok
    in_backward = []
    real_backward = layers._Cell.backward

    def backward(self, *args):
        in_backward.append(True)
        try:
            return real_backward(self, *args)
        finally:
            in_backward.pop()

    def reverse_steps(a, index, xp=np):  # the bug: the backward reads dy, dx unreversed
        return np.ascontiguousarray(a) if in_backward else numpy_ref.reverse_steps(a, index, xp)

    monkeypatch.setattr(layers._Cell, "backward", backward)
    monkeypatch.setattr(layers, "reverse_steps", reverse_steps)
    report = rk.gradcheck.check_model(model, x, target, lengths=[5, 3])
    assert not report.ok and "1.W_l0_reverse" in report.failed
