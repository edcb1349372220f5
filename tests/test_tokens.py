"""Token and class sequences: Embedding, cross-entropy, accuracy, sampled generation.

Gradients of Embedding -> cell -> Dense models under cross-entropy (class ids,
probabilities, label smoothing, masks, lengths) against finite differences in
float64 on every backend; the Embedding kernels against the oracle; samplers'
determinism and their top-k and temperature behaviour; every bad input.
"""

import numpy as np
import pytest
from test_train import fd_worst

import rnnkern as rk
from rnnkern import backends

V, D, H, T, B = 5, 3, 4, 6, 3
LENGTHS = np.array([6, 3, 5])
CELLS = {"rnn": lambda: rk.RNN(D, H), "lstm": lambda: rk.LSTM(D, H),
         "gru": lambda: rk.GRU(D, H)}


def token_model(cell, backend, seed=0, dtype="float64"):
    return rk.Sequential(rk.Embedding(V, D), CELLS[cell](), rk.Dense(H, V), backend=backend,
                         dtype=dtype, seed=seed)


def ids(rng, shape=(T, B)):
    return rng.integers(0, V, shape)


def probabilities(rng):
    p = rng.uniform(0, 1, (T, B, V))
    return p / p.sum(axis=2, keepdims=True)


CASES = {  # target kind, loss, mask, lengths
    "ids": ("ids", "cross_entropy", None, None),
    "ids-mask": ("ids", "cross_entropy", "from_step", None),
    "ids-lengths": ("ids", "cross_entropy", None, LENGTHS),
    "ids-last-step": ("ids", "cross_entropy", "last_step", LENGTHS),
    "smoothing-lengths": ("ids", rk.losses.CrossEntropy(label_smoothing=0.2), None, LENGTHS),
    "probabilities-mask": ("probs", "cross_entropy", "weights", None),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("cell", CELLS)
def test_value_and_grad_finite_differences(backend, cell, case):
    kind, loss, mask_kind, lengths = CASES[case]
    rng = np.random.default_rng(11)
    model = token_model(cell, backend)
    x = ids(rng)
    x[0, 0] = x[1, 0] = x[2, 1]  # repeated ids: their embedding rows' gradients add up
    target = ids(rng) if kind == "ids" else probabilities(rng)
    mask = {None: None, "from_step": rk.masks.from_step(2, T),
            "last_step": None if lengths is None else rk.masks.last_step(T, lengths),
            "weights": rng.uniform(0, 2, (T, B))}[mask_kind]
    kw = dict(loss=loss, mask=mask, lengths=lengths)
    assert fd_worst(model, x, target, kw) < 1e-6


def test_embedding_backward_sums_repeated_ids(backend):
    be = backends.get(backend)
    rng = np.random.default_rng(0)
    x = np.array([[1, 1], [4, 1], [0, 4]])
    dy = rng.standard_normal((3, 2, D))
    dW = be.embedding_backward(dy, x, V)
    expected = np.zeros((V, D))
    for t in range(3):
        for b in range(2):
            expected[x[t, b]] += dy[t, b]
    np.testing.assert_allclose(dW, expected, rtol=1e-14)
    assert not dW[[2, 3]].any()  # ids never seen get no gradient


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("shape", [(1, 1), (7, 5)])
def test_embedding_kernels_match_the_oracle(backend, dtype, id_dtype, shape):
    rng = np.random.default_rng(1)
    W = rng.standard_normal((V, D)).astype(dtype)
    x = rng.integers(0, V, shape).astype(id_dtype)
    dy = rng.standard_normal((*shape, D)).astype(dtype)
    ref, be = backends.get("numpy"), backends.get(backend)
    y = be.embedding_forward(x, W)
    assert y.dtype == W.dtype and y.shape == (*shape, D)
    np.testing.assert_array_equal(y, ref.embedding_forward(x, W))
    tol = 1e-6 if dtype == "float32" else 1e-14
    np.testing.assert_allclose(be.embedding_backward(dy, x, V),
                               ref.embedding_backward(dy, x, V), rtol=tol, atol=tol)


def test_cross_entropy_is_stable_and_matches_its_definition():
    rng = np.random.default_rng(2)
    y = rng.standard_normal((T, B, V)) * 3
    target = ids(rng)
    mask = np.ones((T, B))
    value, dy = rk.losses.cross_entropy(y, target, mask)
    p = np.exp(y) / np.exp(y).sum(axis=2, keepdims=True)
    picked = np.take_along_axis(p, target[:, :, None], axis=2)[..., 0]
    assert value == pytest.approx(-np.log(picked).mean(), rel=1e-12)
    onehot = np.eye(V)[target]
    np.testing.assert_allclose(dy, (p - onehot) / (T * B), rtol=1e-12, atol=1e-15)
    # huge logits: log-sum-exp keeps the loss finite, and the same as after a shift
    big, _ = rk.losses.cross_entropy(y + 1e4, target, mask)
    assert np.isfinite(big) and big == pytest.approx(value, rel=1e-9)
    # float32 keeps the logits' dtype for dy
    v32, dy32 = rk.losses.cross_entropy(y.astype(np.float32) * 100, target, mask)
    assert np.isfinite(v32) and dy32.dtype == np.float32 and np.isfinite(dy32).all()


def test_label_smoothing_and_probability_targets_agree():
    rng = np.random.default_rng(3)
    y = rng.standard_normal((T, B, V))
    target = ids(rng)
    mask = rng.uniform(0, 1, (T, B))
    s = 0.1
    smoothed = (1 - s) * np.eye(V)[target] + s / V
    a = rk.losses.CrossEntropy(label_smoothing=s)(y, target, mask)
    b = rk.losses.cross_entropy(y, smoothed, mask)
    assert a[0] == pytest.approx(b[0], rel=1e-12)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-12, atol=1e-15)


def test_accuracy_counts_the_selected_steps():
    y = np.zeros((2, 2, 3))
    y[0, 0, 1] = y[0, 1, 2] = y[1, 0, 0] = y[1, 1, 1] = 1
    target = np.array([[1, 0], [0, 0]])  # right, wrong, right, wrong
    assert rk.losses.accuracy(y, target, np.ones((2, 2))) == 0.5
    assert rk.losses.accuracy(y, target, np.array([[1, 0], [1, 0]])) == 1.0
    assert rk.losses.accuracy(y, np.eye(3)[target], np.ones((2, 2))) == 0.5


def test_evaluate_and_fit_record_accuracy(backend):
    rng = np.random.default_rng(4)
    model = token_model("gru", backend, dtype="float32")
    x = ids(rng, (T, 40))
    target = np.roll(x, 1, axis=0)  # the previous id: learnable from the state
    mask = rk.masks.from_step(1, T)
    before = rk.evaluate(model, x, target, loss="cross_entropy", mask=mask,
                         metrics=("accuracy",))
    assert set(before) == {"loss", "accuracy"}
    h = rk.fit(model, rk.Adam(model.parameters(), lr=3e-2), x, target, epochs=15,
               batch_size=10, mask=mask, loss="cross_entropy", metrics=("accuracy",),
               validation=(x, target), seed=0, progress=False)
    assert len(h["val_accuracy"]) == 15 and h["val_loss"][-1] < h["val_loss"][0]
    assert h["val_accuracy"][-1] > max(before["accuracy"], 0.5)
    after = rk.evaluate(model, x, target, loss="cross_entropy", mask=mask,
                        metrics=("accuracy",))
    assert after["accuracy"] == h["val_accuracy"][-1]
    assert after["loss"] == pytest.approx(h["val_loss"][-1], rel=1e-6)


def test_fit_is_reproducible_and_shows_accuracy(capsys):
    rng = np.random.default_rng(5)
    x, target = ids(rng, (T, 12)), ids(rng, (T, 12))
    runs = []
    for _ in range(2):
        model = token_model("lstm", "numba", seed=3, dtype="float32")
        runs.append(rk.fit(model, rk.Adam(model.parameters(), lr=1e-2), x, target, epochs=3,
                           batch_size=4, loss="cross_entropy", metrics=("accuracy",),
                           validation=(x, target), seed=1, progress=True))
    assert runs[0] == runs[1]
    assert "val_accuracy=" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# sampled generation


def test_categorical_same_seed_same_ids(backend):
    model = token_model("lstm", backend, seed=1, dtype="float32")
    primer = ids(np.random.default_rng(6), (4, 3))
    a = rk.generate(model, primer, 30, sampler="categorical", temperature=0.8, seed=7)
    b = rk.generate(model, primer, 30, sampler="categorical", temperature=0.8, seed=7)
    c = rk.generate(model, primer, 30, sampler="categorical", temperature=0.8, seed=8)
    assert a.shape == (30, 3) and a.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    assert a.min() >= 0 and a.max() < V


def test_generated_ids_are_the_models_own_continuation():
    model = token_model("gru", "numpy", seed=2)
    primer = ids(np.random.default_rng(7), (3, 2))
    out, logits = rk.generate(model, primer, 5, sampler="greedy", return_logits=True)
    np.testing.assert_array_equal(out, logits.argmax(axis=2))
    # feeding primer + the chosen ids through the model gives the same outputs
    y = model(np.concatenate([primer, out[:-1]]))
    np.testing.assert_allclose(y[2:], logits, rtol=1e-12, atol=1e-12)


def test_top_k_and_temperature():
    model = token_model("rnn", "numpy", seed=3)
    primer = ids(np.random.default_rng(8), (2, 200))
    greedy, logits = rk.generate(model, primer, 1, sampler="greedy", return_logits=True)
    top1 = rk.generate(model, primer, 1, sampler="categorical", top_k=1, seed=0)
    np.testing.assert_array_equal(top1, greedy)
    cold = rk.generate(model, primer, 1, sampler="categorical", temperature=1e-4, seed=0)
    np.testing.assert_array_equal(cold, greedy)
    top2 = rk.generate(model, primer, 1, sampler="categorical", top_k=2, seed=0)
    best2 = np.argsort(-logits[0], axis=1)[:, :2]
    assert all(top2[0, b] in best2[b] for b in range(200))
    assert (top2 != greedy).any()  # the second choice is drawn too
    hot = rk.generate(model, primer, 1, sampler="categorical", temperature=100.0, seed=0)
    assert len(np.unique(hot)) == V  # near-uniform over 200 draws


def test_a_callable_sampler_gets_the_outputs_and_a_generator():
    model = token_model("gru", "numpy", seed=4)
    seen = []

    def always_two(out, rng):
        seen.append((out.shape, type(rng)))
        return np.full(out.shape[0], 2)

    out = rk.generate(model, ids(np.random.default_rng(9), (2, 3)), 4, sampler=always_two)
    assert (out == 2).all() and seen[0] == ((3, V), np.random.Generator)


def test_feature_models_feed_one_hot_classes():
    model = rk.Sequential(rk.GRU(V, H), rk.Dense(H, V), dtype="float64", seed=5)
    primer = np.eye(V)[ids(np.random.default_rng(10), (2, 2))]
    fed, logits = rk.generate(model, primer, 3, sampler="greedy", return_logits=True)
    np.testing.assert_array_equal(fed, np.eye(V)[logits.argmax(axis=2)])
    plain = rk.generate(model, primer, 3)  # no sampler: outputs fed back as they are
    assert plain.shape == (3, 2, V)


def test_evaluate_with_sampled_feedback_equals_generate():
    model = token_model("lstm", "numpy", seed=6)
    rng = np.random.default_rng(12)
    x, target = ids(rng), ids(rng)
    n = 3
    out, logits = rk.generate(model, x[: T - n], n + 1, sampler="greedy", return_logits=True)
    mask = rk.masks.from_step(T - n - 1, T)
    expected, _ = rk.losses.cross_entropy(logits, target[T - n - 1 :], np.ones((n + 1, B)))
    got = rk.evaluate(model, x, target, loss="cross_entropy", mask=mask, feedback=n,
                      sampler="greedy")
    assert got == pytest.approx(expected, rel=1e-12)

    # with lengths, each row is driven from its own lengths[b] - n: row by row by hand
    lengths = np.array([6, 5, 4])
    mask = np.zeros((T, B))
    total = 0.0
    for b, L in enumerate(lengths):
        mask[L - n - 1 : L, b] = 1
        _, lg = rk.generate(model, x[: L - n, b : b + 1], n + 1, sampler="greedy",
                            return_logits=True)
        total += rk.losses.cross_entropy(lg, target[L - n - 1 : L, b : b + 1],
                                         np.ones((n + 1, 1)))[0] * (n + 1)
    got = rk.evaluate(model, x, target, loss="cross_entropy", mask=mask, lengths=lengths,
                      feedback=n, sampler="greedy")
    assert got == pytest.approx(total / mask.sum(), rel=1e-12)


def test_save_load_keeps_an_embedding_model(tmp_path):
    model = token_model("gru", "numpy", seed=7)
    rk.save(model, tmp_path / "m.npz")
    back = rk.load(tmp_path / "m.npz", backend="numpy")
    x = ids(np.random.default_rng(13))
    np.testing.assert_array_equal(back(x), model(x))


# ----------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("x, err, match", [
    (np.array([[0, 5]]), ValueError, r"x: expected ids in \[0, 5\)"),
    (np.array([[-1, 0]]), ValueError, r"x: expected ids in \[0, 5\)"),
    (np.array([[0.0, 1.0]]), ValueError, "x: expected integer ids .* got dtype float64"),
    (np.array([[True, False]]), ValueError, "x: expected integer ids .* got dtype bool"),
    (np.zeros((2, 2, 1), np.int64), ValueError, r"x: expected integer ids of shape \(T, B\)"),
    (np.zeros(3, np.int64), ValueError, r"x: expected integer ids of shape \(T, B\)"),
    ("abc", TypeError, "x: expected an integer array"),
])
def test_bad_ids(x, err, match):
    model = token_model("gru", "numpy")
    with pytest.raises(err, match=match):
        model(x)


def test_bad_targets_and_losses():
    model = token_model("gru", "numpy")
    x = ids(np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"target: expected ids in \[0, 5\)"):
        rk.value_and_grad(model, x, np.full((T, B), V), loss="cross_entropy")
    with pytest.raises(ValueError, match=r"target: expected integer ids of shape \(T=6, B=3\)"):
        rk.value_and_grad(model, x, np.zeros((T, B + 1), np.int64), loss="cross_entropy")
    with pytest.raises(ValueError, match="target: expected integer ids"):
        rk.value_and_grad(model, x, np.zeros((T, B), bool), loss="cross_entropy")
    with pytest.raises(ValueError, match="target: class probabilities must have"):
        rk.losses.cross_entropy(np.zeros((T, B, V)), np.zeros((T, B, V), np.float32),
                                np.ones((T, B)))
    with pytest.raises(ValueError, match=r"target: expected shape \(T=6, B=3, C=5\)"):
        rk.losses.cross_entropy(np.zeros((T, B, V)), np.zeros((T, B, V + 1)), np.ones((T, B)))
    with pytest.raises(ValueError, match="target: mse takes values .* loss='cross_entropy'"):
        rk.value_and_grad(model, x, ids(np.random.default_rng(1)), loss="mse")
    with pytest.raises(ValueError, match="label_smoothing: expected a number in"):
        rk.losses.CrossEntropy(label_smoothing=1.0)
    with pytest.raises(TypeError, match="label_smoothing"):
        rk.losses.CrossEntropy(label_smoothing="0.1")
    with pytest.raises(ValueError, match="metrics: expected one of 'accuracy'"):
        rk.evaluate(model, x, ids(np.random.default_rng(1)), loss="cross_entropy",
                    metrics=("f1",))
    with pytest.raises(TypeError, match="metrics: expected a tuple"):
        rk.evaluate(model, x, ids(np.random.default_rng(1)), loss="cross_entropy",
                    metrics="accuracy")
    with pytest.raises(ValueError, match="metrics: measured on the validation set"):
        rk.fit(model, rk.Adam(model.parameters()), x, ids(np.random.default_rng(1)),
               epochs=1, batch_size=2, loss="cross_entropy", metrics=("accuracy",),
               progress=False)


def test_bad_layers_and_token_feedback():
    with pytest.raises(ValueError, match="layers\\[1\\]: an Embedding .* first layer"):
        rk.Sequential(rk.Dense(2, V), rk.Embedding(V, D))
    with pytest.raises(ValueError, match="num_embeddings: expected an integer >= 1"):
        rk.Embedding(0, D)
    model = token_model("lstm", "numpy")
    x, target = ids(np.random.default_rng(0)), ids(np.random.default_rng(1))
    with pytest.raises(ValueError, match="feedback: a model that starts with Embedding"):
        rk.value_and_grad(model, x, target, loss="cross_entropy", feedback=2)
    with pytest.raises(ValueError, match="val_feedback: a model that starts with Embedding"):
        rk.fit(model, rk.Adam(model.parameters()), x, target, epochs=1, batch_size=2,
               loss="cross_entropy", validation=(x, target), val_feedback=2, progress=False)
    with pytest.raises(ValueError, match="sampler: a model that starts with Embedding needs"):
        rk.evaluate(model, x, target, loss="cross_entropy", feedback=2)
    with pytest.raises(ValueError, match="sampler: only used for the fed-back steps"):
        rk.evaluate(model, x, target, loss="cross_entropy", sampler="greedy")


@pytest.mark.parametrize("kw, err, match", [
    ({}, ValueError, "sampler: .* needs 'greedy', 'categorical' or a callable"),
    ({"sampler": "best"}, ValueError, "sampler: expected one of 'greedy', 'categorical'"),
    ({"sampler": "categorical", "temperature": 0}, ValueError, "temperature: expected a"),
    ({"sampler": "categorical", "temperature": -1.0}, ValueError, "temperature: expected a"),
    ({"sampler": "categorical", "temperature": float("nan")}, ValueError, "temperature"),
    ({"sampler": "categorical", "temperature": "hot"}, TypeError, "temperature"),
    ({"sampler": "categorical", "top_k": 0}, ValueError, r"top_k: expected an integer in \[1, 5\]"),
    ({"sampler": "categorical", "top_k": V + 1}, ValueError, r"top_k: .*\[1, 5\], got 6"),
    ({"sampler": "categorical", "top_k": 2.0}, TypeError, "top_k: expected an integer"),
    ({"sampler": "categorical", "seed": -1}, ValueError, "seed: expected an integer >= 0"),
    ({"sampler": lambda out, rng: np.full(out.shape[0], V)}, ValueError,
     r"sampler: expected ids in \[0, 5\)"),
    ({"sampler": lambda out, rng: out}, ValueError, "sampler: expected integer ids"),
    ({"sampler": "greedy", "return_logits": 1}, TypeError, "return_logits: expected True"),
])
def test_bad_sampling_arguments(kw, err, match):
    model = token_model("gru", "numpy")
    with pytest.raises(err, match=match):
        rk.generate(model, ids(np.random.default_rng(0), (2, 3)), 3, **kw)
