"""Bad input raises ValueError (TypeError for a non-array) naming the argument,
the shape or dtype received and the one expected, on every backend."""

import numpy as np
import pytest

from rnnkern import backends
from rnnkern import gradcheck as gc


def _call(be, cell, kw):
    """Call ``be.<cell>_forward`` with keyword arguments (None for missing states)."""
    opt = {"lengths": kw.get("lengths"), "training": kw.get("training", True)}
    if cell == "rnn":
        return be.rnn_forward(kw["x"], kw.get("h0"), kw["W"], kw["R"], kw["b"],
                              activation=kw.get("activation", "tanh"), **opt)
    if cell == "lstm":
        return be.lstm_forward(kw["x"], kw.get("h0"), kw.get("c0"), kw["W"], kw["R"], kw["b"],
                               **opt)
    return be.gru_forward(kw["x"], kw.get("h0"), kw["W"], kw["R"], kw["b"], kw["b_hn"], **opt)


def _good(cell, T=4, B=3, I=2, H=5):
    p = gc.make_problem(cell, T, B, I, H)
    return {**p.inputs, **p.params}


# (cell, argument, bad value builder, words the message must contain)
BAD = [
    ("rnn", "x", lambda k: k["x"][0], ["x:", "3-d", "(T, B, I)", "(3, 2)"]),
    ("rnn", "x", lambda k: np.zeros((0, 3, 2)), ["x:", "(0, 3, 2)"]),
    ("lstm", "x", lambda k: np.zeros((4, 0, 2)), ["x:", "(4, 0, 2)"]),
    ("gru", "x", lambda k: k["x"].astype(np.int64), ["x:", "int64", "float32 or float64"]),
    ("rnn", "x", lambda k: k["x"].astype(np.float16), ["x:", "float16"]),
    ("rnn", "x", lambda k: k["x"].astype(np.complex128), ["x:", "complex128"]),
    ("lstm", "x", lambda k: np.asfortranarray(k["x"]), ["x:", "C-contiguous"]),
    ("rnn", "W", lambda k: np.zeros((3, 5)), ["W:", "(3, 5)", "I=2"]),
    ("lstm", "W", lambda k: np.zeros((2, 5)), ["W:", "(2, 5)", "4*H=20"]),
    ("lstm", "R", lambda k: np.zeros((5, 15)), ["R:", "(5, 15)", "4*H=20"]),
    ("gru", "R", lambda k: np.zeros(15), ["R:", "(15,)"]),
    ("gru", "b", lambda k: np.zeros(16), ["b:", "(16,)", "3*H=15"]),
    ("gru", "b_hn", lambda k: np.zeros(4), ["b_hn:", "(4,)", "H=5"]),
    ("rnn", "h0", lambda k: np.zeros((5, 3)), ["h0:", "(5, 3)", "B=3", "H=5"]),
    ("lstm", "c0", lambda k: np.zeros((3,)), ["c0:", "(3,)"]),
    ("lstm", "W", lambda k: k["W"].astype(np.float32), ["W:", "float32", "float64"]),
    ("rnn", "R", lambda k: k["R"][:, ::1].T.copy().T, ["R:", "C-contiguous"]),
    ("rnn", "lengths", lambda k: np.array([1, 0, 4]), ["lengths:", "[1, T=4]", "[0, 4]"]),
    ("lstm", "lengths", lambda k: np.array([1, 5, 4]), ["lengths:", "[1, T=4]"]),
    ("gru", "lengths", lambda k: np.array([1, 2]), ["lengths:", "(B=3,)", "(2,)"]),
    ("gru", "lengths", lambda k: np.array([1.0, 2.0, 3.0]), ["lengths:", "float64"]),
    ("rnn", "lengths", lambda k: np.array([True, True, True]), ["lengths:", "bool"]),
    ("rnn", "activation", lambda k: "sigmoid", ["activation:", "'sigmoid'", "'tanh'"]),
    ("lstm", "training", lambda k: "no", ["training:", "True or False", "'no'"]),
    ("gru", "training", lambda k: 0, ["training:", "True or False", "int"]),
]


@pytest.mark.parametrize("cell,arg,make,words", BAD, ids=lambda v: v if isinstance(v, str) else "")
def test_bad_forward_argument(backend, cell, arg, make, words):
    kw = _good(cell)
    kw[arg] = make(kw)
    with pytest.raises(ValueError) as info:
        _call(backends.get(backend), cell, kw)
    for w in words:
        assert w in str(info.value), (w, str(info.value))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_non_array_is_type_error(backend, cell):
    kw = _good(cell)
    kw["x"] = kw["x"].tolist()
    with pytest.raises(TypeError, match=r"x: expected an array of shape \(T, B, I\), got list"):
        _call(backends.get(backend), cell, kw)


def test_missing_gru_bias_is_type_error(backend):
    kw = dict(_good("gru"), b_hn=None)
    with pytest.raises(TypeError, match=r"b_hn: expected an array of shape \(H=5,\), got NoneType"):
        _call(backends.get(backend), "gru", kw)


def test_lengths_as_list_is_accepted(backend):
    kw = _good("lstm")
    ref = _call(backends.get("numpy"), "lstm", dict(kw, lengths=np.array([4, 1, 2])))[0]
    got = _call(backends.get(backend), "lstm", dict(kw, lengths=[4, 1, 2]))[0]
    np.testing.assert_allclose(got, ref, rtol=1e-12)


BAD_GRADS = [(cell, arg, shape) for cell in ("rnn", "lstm", "gru")
             for arg, shape in [("dy", (4, 3, 4)), ("dy", (3, 3, 5)), ("dhT", (3, 4)),
                                ("dcT", (2, 5))]
             if arg != "dcT" or cell == "lstm"]  # only the LSTM has a cell state


@pytest.mark.parametrize("cell,arg,shape", BAD_GRADS)
def test_bad_backward_argument(backend, cell, arg, shape):
    be = backends.get(backend)
    p = gc.make_problem(cell, T=4, B=3, I=2, H=5)
    cache = gc.forward(be, p)[2]
    p.out_grads[arg] = np.zeros(shape)
    with pytest.raises(ValueError) as info:
        gc.backward(be, p, cache)
    assert f"{arg}:" in str(info.value) and str(shape) in str(info.value)


def test_backward_dtype_mismatch(backend):
    be = backends.get(backend)
    p = gc.make_problem("gru", T=3, B=2, I=2, H=3)
    cache = gc.forward(be, p)[2]
    p.out_grads["dy"] = p.out_grads["dy"].astype(np.float32)
    with pytest.raises(ValueError, match="dy: dtype float32 does not match x's dtype float64"):
        gc.backward(be, p, cache)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend: expected one of 'numpy', 'numba', 'cupy', "
                                         "got 'torch'"):
        backends.get("torch")


def test_available_lists_numpy_first():
    assert backends.available()[0] == "numpy"
    assert backends.default() in backends.available()


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_read_only_arrays_are_read_not_written(backend, cell, dtype):
    """Kernels never write their inputs: read-only arrays (an np.load mmap, a
    broadcast) give the oracle's results, forward and backward."""
    p = gc.make_problem(cell, T=6, B=5, I=4, H=7, lengths=True).astype(dtype)
    for d in (p.inputs, p.params, p.out_grads):
        for a in d.values():
            a.setflags(write=False)
    tol = gc.PARITY_TOL[np.dtype(dtype).name]
    assert max(gc.parity(p, backend, dtype, per_step=True).values()) <= tol
