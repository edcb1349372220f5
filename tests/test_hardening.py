"""Bad input at every public entry point: a ValueError (TypeError for a wrong type)
whose message starts with the argument's name, says what was received and what is
expected; never a crash inside a kernel, a silent broadcast or a NumPy error.

Each row of ``BAD`` is (entry point, call, error class, words the message holds).
"""

import numpy as np
import pytest

import rnnkern as rk
from rnnkern import backends, cli, data, losses, masks
from rnnkern import gradcheck as gc

F32 = np.float32
X = np.random.default_rng(0).uniform(-1, 1, (5, 3, 2)).astype(F32)  # (T, B, I)
TGT = np.cumsum(X, 0)


def model(**kw):
    return rk.Sequential(rk.Dense(2, 4, "tanh"), rk.LSTM(4, 3), rk.Dense(3, 2),
                         backend="numpy", seed=0, **kw)


def lstm():
    return rk.LSTM(2, 3, backend="numpy", seed=0)


def fit(**kw):
    m = model()
    args = dict(model=m, opt=rk.Adam(m.parameters()), x=X, target=TGT, epochs=1,
                batch_size=2, progress=False)
    args.update(kw)
    return rk.fit(**args)


class FakeCupy:
    """Looks like a CuPy array to rnnkern's device check (no GPU needed)."""

    __module__ = "cupy._core.core"

    def __init__(self, a):
        self.shape, self.dtype, self.flags, self.ndim = a.shape, a.dtype, a.flags, a.ndim


def readonly(a):
    a = a.copy()
    a.setflags(write=False)
    return a


BAD = [
    # -- layers ----------------------------------------------------------------
    ("LSTM()", lambda: rk.LSTM(0, 3), ValueError, ["in_features:", ">= 1", "got 0"]),
    ("GRU()", lambda: rk.GRU(2, 2.5), TypeError, ["hidden:", "integer", "float"]),
    ("RNN()", lambda: rk.RNN(2, 3, "softsign"), ValueError, ["activation:", "'softsign'"]),
    ("Dense()", lambda: rk.Dense(2, 3, "softmax"), ValueError, ["activation:", "'relu'"]),
    ("Dense()", lambda: rk.Dense(2, 3, dtype="float16"), ValueError, ["dtype:", "float16"]),
    ("LSTM()", lambda: rk.LSTM(2, 3, backend="tpu"), ValueError, ["backend:", "'tpu'"]),
    ("LSTM()", lambda: rk.LSTM(2, 3, backend=1), TypeError, ["backend:", "int"]),
    ("layer(x)", lambda: lstm()(X[0]), ValueError, ["x:", "3-d", "(3, 2)"]),
    ("layer(x)", lambda: lstm()(X[:0]), ValueError, ["x:", "(0, 3, 2)"]),
    ("layer(x)", lambda: lstm()(X[:, :0]), ValueError, ["x:", "(5, 0, 2)"]),
    ("layer(x)", lambda: lstm()(X[..., :1].copy()), ValueError, ["x:", "in_features=2"]),
    ("layer(x)", lambda: lstm()(X.astype(np.int32)), ValueError, ["x:", "int32"]),
    ("layer(x)", lambda: lstm()(X > 0), ValueError, ["x:", "bool"]),
    ("layer(x)", lambda: lstm()(X.astype(np.float16)), ValueError, ["x:", "float16"]),
    ("layer(x)", lambda: lstm()(X.astype(np.complex64)), ValueError, ["x:", "complex64"]),
    ("layer(x)", lambda: lstm()(X.astype(object)), ValueError, ["x:", "object"]),
    ("layer(x)", lambda: lstm()(X.astype(np.float64)), ValueError,
     ["x:", "float32 (the model's dtype)", "float64"]),
    ("layer(x)", lambda: lstm()("abc"), TypeError, ["x:", "str"]),
    ("layer(x)", lambda: lstm()([[[1.0, 2.0]], [[3.0]]]), ValueError, ["x:", "ragged"]),
    ("layer(x)", lambda: lstm()([[["a", "b"]]]), ValueError, ["x:", "real numbers"]),
    ("layer(state)", lambda: lstm()(X, state=np.zeros((3, 3), F32)), TypeError,
     ["state:", "(h, c)", "ndarray"]),
    ("layer(state)", lambda: lstm()(X, state=(np.zeros((2, 3), F32),) * 2), ValueError,
     ["state[0]:", "B=3", "(2, 3)"]),
    ("layer(state)", lambda: rk.GRU(2, 3, backend="numpy")(X, state=np.zeros((3, 3))),
     ValueError, ["state:", "float64"]),
    ("layer(lengths)", lambda: lstm()(X, lengths=[1, 2]), ValueError, ["lengths:", "(B=3,)"]),
    ("layer(lengths)", lambda: lstm()(X, lengths=[0, 2, 5]), ValueError,
     ["lengths:", "[1, T=5]"]),
    ("layer(lengths)", lambda: lstm()(X, lengths=np.array([1.0, 2, 3])), ValueError,
     ["lengths:", "float64"]),
    ("layer(lengths)", lambda: lstm()(X, lengths=3), TypeError, ["lengths:", "int"]),
    ("Dense(state)", lambda: rk.Dense(2, 2, backend="numpy")(X, state=np.zeros(2)),
     ValueError, ["state:", "no state"]),
    ("Dense.backward", lambda: (lambda d: d.backward(np.ones((5, 3, 1), F32), None,
                                                      d.forward(X)[2]))(
        rk.Dense(2, 2, backend="numpy")), ValueError, ["dy:", "out=2", "(5, 3, 1)"]),
    ("LSTM.backward", lambda: (lambda m: m.backward(None, np.zeros((3, 3), F32),
                                                     m.forward(X)[2]))(lstm()),
     TypeError, ["dstate:", "(dhT, dcT)"]),
    ("load_parameters", lambda: lstm().load_parameters({"W": 1, "R": 2, "b": 3}), TypeError,
     ["params['W']:", "array", "int"]),
    ("Sequential()", lambda: rk.Sequential(), ValueError, ["layers:", "at least one"]),
    ("Sequential()", lambda: rk.Sequential(rk.Dense(1, 2), "lstm"), TypeError,
     ["layers[1]:", "str"]),
    ("Sequential()", lambda: rk.Sequential(rk.Dense(1, 2), rk.LSTM(3, 2)), ValueError,
     ["layers[1]:", "in_features=3", "out_features=2"]),
    ("Sequential(state)", lambda: model()(X, state=(None,)), ValueError,
     ["state:", "3 layer states", "1 entries"]),
    ("Sequential(state)", lambda: model()(X, state=(None, np.zeros((3, 3), F32), None)),
     TypeError, ["state[1]:", "(h, c)"]),
    ("Sequential(x)", lambda: model()(FakeCupy(X)), ValueError,
     ["x:", "cupy", "backend 'numpy'"]),
    ("Sequential(lengths)", lambda: model()(X, lengths=FakeCupy(np.ones(3, int))),
     ValueError, ["lengths:", "cupy", "numpy"]),
    # -- losses and masks ------------------------------------------------------
    ("losses.get", lambda: losses.get("huber"), ValueError, ["loss:", "'huber'", "'mse'"]),
    ("losses.get", lambda: losses.get(3), TypeError, ["loss:", "int"]),
    ("losses.mse", lambda: losses.mse(X, TGT[..., :1], np.ones((5, 3), F32)), ValueError,
     ["target:", "F=2", "(5, 3, 1)"]),
    ("losses.mse", lambda: losses.mse(X, TGT, np.ones((5, 1), F32)), ValueError,
     ["mask:", "B=3", "(5, 1)"]),
    ("resolve_mask", lambda: losses.resolve_mask(np.ones((5, 2)), None, 5, 3, F32, np),
     ValueError, ["mask:", "(T=5, B=3)", "(5, 2)"]),
    ("resolve_mask", lambda: losses.resolve_mask(np.zeros((5, 1)), None, 5, 3, F32, np),
     ValueError, ["mask:", "no step"]),
    ("resolve_mask", lambda: losses.resolve_mask(-np.ones((5, 1)), None, 5, 3, F32, np),
     ValueError, ["mask:", ">= 0"]),
    ("resolve_mask", lambda: losses.resolve_mask(np.ones((5, 1), complex), None, 5, 3, F32,
                                                 np), ValueError, ["mask:", "complex"]),
    ("resolve_mask", lambda: losses.resolve_mask(np.full((5, 1), np.nan), None, 5, 3, F32,
                                                 np), ValueError, ["mask:", "NaN"]),
    ("resolve_mask", lambda: losses.resolve_mask("all", None, 5, 3, F32, np), TypeError,
     ["mask:", "str"]),
    ("masks.all_steps", lambda: masks.all_steps(0), ValueError, ["T:", ">= 1", "got 0"]),
    ("masks.last_step", lambda: masks.last_step(4, [5, 1]), ValueError,
     ["lengths:", "[1, T=4]"]),
    ("masks.last_step", lambda: masks.last_step(4, np.ones((2, 2), int)), ValueError,
     ["lengths:", "(B,)", "(2, 2)"]),
    ("masks.from_step", lambda: masks.from_step(-1, 4), ValueError, ["k:", "[0, 3]"]),
    ("masks.from_step", lambda: masks.from_step(1.5, 4), TypeError, ["k:", "float"]),
    # -- value_and_grad, evaluate ---------------------------------------------
    ("value_and_grad", lambda: rk.value_and_grad("model", X, TGT), TypeError,
     ["model:", "str"]),
    ("value_and_grad", lambda: rk.value_and_grad(model(), X, TGT[:, :2]), ValueError,
     ["target:", "B=3", "(5, 2, 2)"]),
    ("value_and_grad", lambda: rk.value_and_grad(model(), X, TGT.astype(np.float64)),
     ValueError, ["target:", "float64"]),
    ("value_and_grad", lambda: rk.value_and_grad(model(), X, FakeCupy(TGT)), ValueError,
     ["target:", "cupy", "numpy"]),
    ("value_and_grad", lambda: rk.value_and_grad(model(), X, TGT, mask=np.ones((5, 2))),
     ValueError, ["mask:", "(5, 2)"]),
    ("value_and_grad", lambda: rk.value_and_grad(model(), X, TGT, feedback=5), ValueError,
     ["feedback:", "< 5"]),
    ("value_and_grad", lambda: rk.value_and_grad(model(), X, TGT, feedback=-1), ValueError,
     ["feedback:", ">= 0"]),
    ("value_and_grad", lambda: rk.value_and_grad(model(), X, TGT, feedback=1.0), TypeError,
     ["feedback:", "float"]),
    ("value_and_grad", lambda: rk.value_and_grad(model(), X, TGT, loss="l1"), ValueError,
     ["loss:", "'l1'"]),
    ("value_and_grad", lambda: rk.value_and_grad(
        model(), X, TGT, loss=lambda y, t, m: (0.0, y[:, :1])), ValueError,
     ["loss:", "B=3", "(5, 1, 2)"]),
    ("value_and_grad", lambda: rk.value_and_grad(model(), X, TGT, loss=lambda y, t, m: 1.0),
     TypeError, ["loss:", "(value, dy)"]),
    ("evaluate", lambda: rk.evaluate(model(), X, TGT, lengths=[6, 1, 1]), ValueError,
     ["lengths:", "[1, T=5]"]),
    ("evaluate", lambda: rk.evaluate(model(), X, np.where(TGT > 0, np.nan, TGT)), ValueError,
     ["target:", "NaN"]),
    ("evaluate", lambda: rk.evaluate(model(), X, TGT, state=(None, None)), ValueError,
     ["state:", "3 layer states"]),
    # -- fit ---------------------------------------------------------------------
    ("fit", lambda: fit(epochs=0), ValueError, ["epochs:", ">= 1", "got 0"]),
    ("fit", lambda: fit(batch_size="4"), TypeError, ["batch_size:", "str"]),
    ("fit", lambda: fit(opt="adam"), TypeError, ["opt:", "str"]),
    ("fit", lambda: fit(opt=rk.Adam(model().parameters())), ValueError,
     ["opt:", "other arrays"]),
    ("fit", lambda: fit(x=X.astype(np.float64)), ValueError, ["x:", "float64"]),
    ("fit", lambda: fit(mask=np.eye(5, 3) * [1, 1, 0]), ValueError, ["mask:", "rows [2]"]),
    ("fit", lambda: fit(validation=(X,)), ValueError, ["validation:", "1 entries"]),
    ("fit", lambda: fit(validation=X), TypeError, ["validation:", "ndarray"]),
    ("fit", lambda: fit(validation=(X[:, :1], TGT)), ValueError, ["validation: target:"]),
    ("fit", lambda: fit(shuffle=1), TypeError, ["shuffle:", "True or False"]),
    ("fit", lambda: fit(seed=-1), ValueError, ["seed:", ">= 0"]),
    ("fit", lambda: fit(tbptt=0), ValueError, ["tbptt:", ">= 1"]),
    ("fit", lambda: fit(checkpoint_every=0), ValueError, ["checkpoint_every:", ">= 1"]),
    ("fit", lambda: fit(checkpoint=5), TypeError, ["path:", "int"]),
    ("fit", lambda: fit(resume=True), ValueError, ["resume:", "checkpoint"]),
    ("fit", lambda: fit(on_nonfinite="warn"), ValueError, ["on_nonfinite:", "'warn'"]),
    ("fit", lambda: fit(val_feedback=-2), ValueError, ["val_feedback:", ">= 0"]),
    # -- generate ----------------------------------------------------------------
    ("generate", lambda: rk.generate(model(), X, -1), ValueError, ["steps:", ">= 0", "-1"]),
    ("generate", lambda: rk.generate(model(), X, 2.0), TypeError, ["steps:", "float"]),
    ("generate", lambda: rk.generate(model(), X[..., :1].copy(), 3), ValueError,
     ["primer:", "in_features=2"]),
    ("generate", lambda: rk.generate(model(), X[:0], 3), ValueError, ["primer:", "(0, 3, 2)"]),
    ("generate", lambda: rk.generate(rk.Dense(2, 1, backend="numpy"), X, 3), ValueError,
     ["model:", "out_features=1"]),
    ("generate", lambda: rk.generate(model(), X, 3, state=(None, (1, 2), None)), TypeError,
     ["state[1][0]:", "int"]),
    # -- optimisers ----------------------------------------------------------------
    ("Adam", lambda: rk.Adam({"w": readonly(np.zeros(2))}), ValueError,
     ["params['w']:", "read-only"]),
    ("Adam", lambda: rk.Adam({"w": np.zeros(2, int)}), ValueError, ["params['w']:", "int64"]),
    ("Adam", lambda: rk.Adam([np.zeros(2)]), TypeError, ["params:", "list"]),
    ("Adam", lambda: rk.Adam({"w": np.zeros(2)}, lr="fast"), TypeError, ["lr:", "str"]),
    ("Adam", lambda: rk.Adam({"w": np.zeros(2)}, lr=float("nan")), ValueError, ["lr:", "nan"]),
    ("Adam", lambda: rk.Adam({"w": np.zeros(2)}, betas=(0.9, 1.5)), ValueError,
     ["betas[1]:", "[0, 1)"]),
    ("SGD.step", lambda: rk.SGD({"w": np.zeros(2)}, lr=0.1).step({"w": [0.0, 1.0]}),
     TypeError, ["grads['w']:", "list"]),
    # -- data helpers --------------------------------------------------------------
    ("from_batch_first", lambda: data.from_batch_first(np.zeros((2, 3))), ValueError,
     ["x:", "3-d", "(B, T, F)"]),
    ("from_batch_first", lambda: data.from_batch_first(X, dtype="int8"), ValueError,
     ["dtype:", "int8"]),
    ("from_flux", lambda: data.from_flux(X.astype(complex)), ValueError, ["x:", "complex"]),
    ("to_batch_first", lambda: data.to_batch_first(3), TypeError, ["y:", "int"]),
    ("from_sequences", lambda: data.from_sequences([]), ValueError, ["seqs:", "empty"]),
    ("from_sequences", lambda: data.from_sequences(np.zeros((2, 3))), TypeError,
     ["seqs:", "ndarray"]),
    ("from_sequences", lambda: data.from_sequences([[1.0], ["a"]]), ValueError,
     ["seqs[1]:", "real numbers"]),
    ("from_sequences", lambda: data.from_sequences([np.zeros(0)]), ValueError,
     ["seqs[0]:", "T_b >= 1"]),
    ("from_sequences", lambda: data.from_sequences([[1.0]], pad="x"), TypeError,
     ["pad:", "str"]),
    ("to_sequences", lambda: data.to_sequences(X, [1, 9, 1]), ValueError,
     ["lengths:", "[1, T=5]"]),
    # -- save / load ---------------------------------------------------------------
    ("save", lambda: rk.save("model", "m.npz"), TypeError, ["model:", "str"]),
    ("save", lambda: rk.save(model(), 3), TypeError, ["path:", "int"]),
    ("save", lambda: rk.save(model(), "/nonexistent-dir/m.npz"), ValueError,
     ["path:", "does not exist"]),
    # -- backend functions (read-only/list/mixed-device cases; the rest: test_validation)
    ("lstm_forward", lambda: _backend_call(x=lambda p: FakeCupy(p["x"])), ValueError,
     ["h0: is a numpy (CPU) array but x is a cupy (GPU) array"]),
    ("lstm_forward", lambda: _backend_call(lengths=lambda p: [1, 2]), ValueError,
     ["lengths:", "(B=3,)"]),
    ("lstm_forward", lambda: _backend_call(W=lambda p: p["W"].tolist()), TypeError,
     ["W:", "list"]),
]


def _backend_call(**change):
    """lstm_forward on every available CPU backend with one argument changed."""
    p = gc.make_problem("lstm", 4, 3, 2, 5)
    kw = {**p.inputs, **p.params, "lengths": None}
    for k, f in change.items():
        kw[k] = f(kw)
    for name in backends.available():
        if name != "cupy":
            backends.get(name).lstm_forward(kw["x"], kw["h0"], kw["c0"], kw["W"], kw["R"],
                                            kw["b"], lengths=kw["lengths"])


@pytest.mark.parametrize("entry,call,error,words", BAD,
                         ids=[f"{row[0]}-{i}" for i, row in enumerate(BAD)])
def test_bad_input_is_named(entry, call, error, words):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert type(info.value) is error, (entry, type(info.value), str(info.value))
    message = str(info.value)
    for w in words:
        assert w in message, (entry, w, message)


def test_every_public_entry_point_has_a_bad_input_case():
    entries = {row[0].split("(")[0].split(".")[0] for row in BAD}
    public = {"LSTM", "GRU", "RNN", "Dense", "layer", "Sequential", "losses", "resolve_mask",
              "masks", "value_and_grad", "evaluate", "fit", "generate", "Adam", "SGD",
              "from_batch_first", "from_flux", "to_batch_first", "from_sequences",
              "to_sequences", "save", "lstm_forward", "load_parameters"}
    assert public <= entries, public - entries


def test_lists_are_accepted_where_numpy_users_expect_them():
    m = model()
    as_list = rk.value_and_grad(m, X.tolist(), TGT.tolist(), mask=np.ones((5, 1)).tolist(),
                                lengths=[5, 4, 3])
    as_array = rk.value_and_grad(m, X, TGT, mask=np.ones((5, 1)), lengths=np.array([5, 4, 3]))
    assert as_list[0] == as_array[0]
    np.testing.assert_array_equal(rk.generate(m, X.tolist(), 2), rk.generate(m, X, 2))
    x, lengths = data.from_sequences([[1, 2, 3], [4.5]])
    assert x.dtype == F32 and lengths.tolist() == [3, 1]
    np.testing.assert_array_equal(data.from_batch_first(X.tolist()), X.transpose(1, 0, 2))


def test_read_only_inputs(backend):
    """Kernels only read their inputs: read-only arrays (np.load mmap, broadcasts) work."""
    m = rk.Sequential(rk.GRU(2, 3), rk.Dense(3, 2), backend=backend, seed=0)
    x, t = readonly(X), readonly(TGT)
    np.testing.assert_array_equal(m(x), m(X))
    assert rk.value_and_grad(m, x, t)[0] == rk.value_and_grad(m, X, TGT)[0]
    np.testing.assert_array_equal(rk.generate(m, x, 2), rk.generate(m, X, 2))


def test_load_path_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        rk.load(tmp_path / "none.npz")
    (tmp_path / "t.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="t.npz: not a readable .npz file"):
        rk.load(tmp_path / "t.npz")


def test_interop_bad_input():
    torch = pytest.importorskip("torch")
    from rnnkern.interop import from_torch, to_torch

    with pytest.raises(TypeError, match="module: expected torch.nn.RNN"):
        from_torch(torch.nn.Conv1d(1, 1, 1))
    with pytest.raises(TypeError, match="layer: expected an rnnkern layer"):
        to_torch(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="module: expected float32 or float64"):
        from_torch(torch.nn.LSTM(2, 3).to(torch.float16))


@pytest.mark.parametrize("argv", [
    ["demo", "nosuch"], ["demo", "--backend", "tpu"], ["demo", "--seed", "-3"],
    ["demo", "--seed", "x"], ["demo", "--out", __file__], ["gradcheck", "--cell", "lstmx"],
    ["gradcheck", "--size", "0", "1", "1", "1"], ["bench", "--threads", "x"],
    ["bench", "--shapes", "nosuch"], ["bench", "--repeat", "0"], ["bench", "--backend", "tpu"],
    ["nosuch"], [],
])
def test_cli_bad_arguments_exit_2_without_traceback(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    if argv[:1] == ["demo"] or len(argv) < 2:  # argparse-detected: with the usage line
        assert "usage: rnnkern" in err
