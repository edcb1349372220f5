"""Property-based tests of the kernel layer: hypothesis draws valid calls and
invalid ones for every backend function. Valid calls agree with the NumPy oracle;
invalid calls raise ValueError (TypeError for a non-array) whose message names
the argument; nothing else is ever raised."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkern import backends
from rnnkern import gradcheck as gc

# name -> (argument the error must name, applies to cells, mutation(problem, kw) -> None)
MUTATIONS = {
    "x_rank": ("x", "all", lambda kw: kw.update(x=kw["x"][0])),
    "x_empty_T": ("x", "all", lambda kw: kw.update(x=kw["x"][:0])),
    "x_empty_B": ("x", "all", lambda kw: kw.update(x=kw["x"][:, :0])),
    "x_int": ("x", "all", lambda kw: kw.update(x=kw["x"].astype(np.int32))),
    "x_bool": ("x", "all", lambda kw: kw.update(x=kw["x"] > 0)),
    "x_half": ("x", "all", lambda kw: kw.update(x=kw["x"].astype(np.float16))),
    "x_complex": ("x", "all", lambda kw: kw.update(x=kw["x"].astype(np.complex64))),
    "x_object": ("x", "all", lambda kw: kw.update(x=kw["x"].astype(object))),
    "x_strided": ("x", "all", lambda kw: kw.update(x=np.repeat(kw["x"], 2, axis=2)[:, :, ::2])),
    "x_list": ("x", "all", lambda kw: kw.update(x=kw["x"].tolist())),
    "W_rows": ("W", "all", lambda kw: kw.update(W=np.zeros((kw["W"].shape[0] + 1,
                                                            kw["W"].shape[1]), kw["W"].dtype))),
    "W_dtype": ("W", "all", lambda kw: kw.update(
        W=kw["W"].astype(np.float32 if kw["W"].dtype == np.float64 else np.float64))),
    "R_cols": ("R", "all", lambda kw: kw.update(R=kw["R"][:, 1:].copy())),
    "b_len": ("b", "all", lambda kw: kw.update(b=np.zeros(kw["b"].size + 1, kw["b"].dtype))),
    "b_hn_len": ("b_hn", "gru", lambda kw: kw.update(b_hn=kw["b_hn"][1:].copy()
                                                     if kw["b_hn"].size > 1
                                                     else np.zeros(2, kw["b_hn"].dtype))),
    "h0_rows": ("h0", "all", lambda kw: kw.update(h0=np.zeros((kw["x"].shape[1] + 1,
                                                               kw["R"].shape[0]), kw["x"].dtype))),
    "c0_cols": ("c0", "lstm", lambda kw: kw.update(c0=np.zeros((kw["x"].shape[1],
                                                                kw["R"].shape[0] + 2),
                                                               kw["x"].dtype))),
    "lengths_zero": ("lengths", "all", lambda kw: kw.update(
        lengths=np.zeros(kw["x"].shape[1], np.int64))),
    "lengths_long": ("lengths", "all", lambda kw: kw.update(
        lengths=np.full(kw["x"].shape[1], kw["x"].shape[0] + 1))),
    "lengths_float": ("lengths", "all", lambda kw: kw.update(
        lengths=np.ones(kw["x"].shape[1]))),
    "lengths_shape": ("lengths", "all", lambda kw: kw.update(
        lengths=np.ones(kw["x"].shape[1] + 1, np.int64))),
    "activation": ("activation", "rnn", lambda kw: kw.update(activation="softsign")),
}


def _run(be, cell, kw):
    if cell == "rnn":
        return be.rnn_forward(kw["x"], kw["h0"], kw["W"], kw["R"], kw["b"],
                              activation=kw["activation"], lengths=kw["lengths"])
    if cell == "lstm":
        return be.lstm_forward(kw["x"], kw["h0"], kw["c0"], kw["W"], kw["R"], kw["b"],
                               lengths=kw["lengths"])
    return be.gru_forward(kw["x"], kw["h0"], kw["W"], kw["R"], kw["b"], kw["b_hn"],
                          lengths=kw["lengths"])


@st.composite
def calls(draw):
    cell, act = draw(st.sampled_from(gc.CASES))
    T, B, I, H = (draw(st.integers(1, 5)) for _ in range(4))  # noqa: E741
    p = gc.make_problem(cell, T, B, I, H, activation=act, lengths=draw(st.booleans()),
                        h0=True, seed=draw(st.integers(0, 1000)))
    p = p.astype(draw(st.sampled_from([np.float32, np.float64])))
    kw = {"x": p.inputs["x"], "h0": p.inputs["h0"], "c0": p.inputs.get("c0"),
          "activation": act, "lengths": p.lengths, **p.params}
    names = [n for n, (_, cells, _) in MUTATIONS.items() if cells in ("all", cell)
             # a one-element array is contiguous whatever its strides: nothing to reject
             and not (n == "x_strided" and kw["x"].size == 1)]
    mutation = draw(st.none() | st.sampled_from(names))
    return cell, kw, mutation


@settings(max_examples=150, deadline=None)
@given(call=calls(), backend=st.sampled_from(backends.available()))
def test_any_call_is_right_or_named(call, backend):
    cell, kw, mutation = call
    be = backends.get(backend)
    if mutation is None:
        y, state, _ = _run(be, cell, kw)
        ref = {k: (v.astype(np.float64) if hasattr(v, "astype") and not isinstance(v, str)
                   and v is not None and k != "lengths" else v) for k, v in kw.items()}
        y_ref, state_ref, _ = _run(backends.get("numpy"), cell, ref)
        tol = gc.PARITY_TOL[str(kw["x"].dtype)]
        assert y.dtype == kw["x"].dtype
        assert gc.norm_error(y, y_ref) <= tol
        if cell != "lstm":
            state, state_ref = (state,), (state_ref,)
        for s, s_ref in zip(state, state_ref):
            assert gc.norm_error(s, s_ref) <= tol
        return
    arg, _, mutate = MUTATIONS[mutation]
    mutate(kw)
    try:
        _run(be, cell, kw)
    except (ValueError, TypeError) as e:
        assert str(e).startswith(f"{arg}:"), (mutation, str(e))
        assert isinstance(e, TypeError) == (mutation == "x_list"), (mutation, type(e))
    else:
        raise AssertionError(f"{mutation}: no error raised")
