"""Property-based tests of the model layer: hypothesis draws valid and invalid calls of
every public entry point (layer call, value_and_grad, evaluate, generate, fit, masks,
data helpers, save/load). Valid calls agree with the NumPy oracle (float64);
invalid ones raise ValueError or TypeError (TypeError exactly when an argument has
the wrong Python type) whose message starts with the argument's name; nothing else
is ever raised. Bounded example counts keep the file fast enough for CI."""

import os
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rnnkern as rk
from rnnkern import backends, data, masks
from rnnkern import gradcheck as gc
from rnnkern.layers import Layer

CPU_BACKENDS = [b for b in backends.available() if b != "cupy"]
CELLS = {"rnn": lambda n: rk.RNN(n, n, "tanh"), "lstm": lambda n: rk.LSTM(n, n),
         "gru": lambda n: rk.GRU(n, n)}
ENTRIES = ("call", "value_and_grad", "evaluate", "generate", "fit", "save_load")
DATA_ENTRIES = {"call", "value_and_grad", "evaluate", "fit"}  # take lengths
LOSS_ENTRIES = {"value_and_grad", "evaluate", "fit"}  # take target, mask, feedback


def _other(dtype):
    return np.float32 if dtype == np.float64 else np.float64


# name -> (argument named in the error, error class, entries it applies to, mutation)
MUTATIONS = {
    "x_rank": ("x", ValueError, set(ENTRIES) - {"save_load"}, lambda k: k.update(x=k["x"][0])),
    "x_empty_T": ("x", ValueError, set(ENTRIES) - {"save_load"},
                  lambda k: k.update(x=k["x"][:0])),
    "x_empty_B": ("x", ValueError, set(ENTRIES) - {"save_load"},
                  lambda k: k.update(x=k["x"][:, :0])),
    "x_width": ("x", ValueError, set(ENTRIES) - {"save_load"},
                lambda k: k.update(x=np.repeat(k["x"], 2, axis=2))),
    "x_int": ("x", ValueError, set(ENTRIES) - {"save_load"},
              lambda k: k.update(x=k["x"].astype(np.int64))),
    "x_bool": ("x", ValueError, set(ENTRIES) - {"save_load"}, lambda k: k.update(x=k["x"] > 0)),
    "x_half": ("x", ValueError, set(ENTRIES) - {"save_load"},
               lambda k: k.update(x=k["x"].astype(np.float16))),
    "x_complex": ("x", ValueError, set(ENTRIES) - {"save_load"},
                  lambda k: k.update(x=k["x"].astype(np.complex128))),
    "x_object": ("x", ValueError, set(ENTRIES) - {"save_load"},
                 lambda k: k.update(x=k["x"].astype(object))),
    "x_other_float": ("x", ValueError, set(ENTRIES) - {"save_load"},
                      lambda k: k.update(x=k["x"].astype(_other(k["x"].dtype)))),
    "x_not_array": ("x", TypeError, set(ENTRIES) - {"save_load"}, lambda k: k.update(x=3.5)),
    "target_rows": ("target", ValueError, LOSS_ENTRIES,
                    lambda k: k.update(target=np.concatenate([k["target"]] * 2, axis=1))),
    "target_other_float": ("target", ValueError, LOSS_ENTRIES,
                           lambda k: k.update(target=k["target"].astype(
                               _other(k["target"].dtype)))),
    "lengths_zero": ("lengths", ValueError, DATA_ENTRIES,
                     lambda k: k.update(lengths=np.zeros(k["x"].shape[1], np.int64))),
    "lengths_long": ("lengths", ValueError, DATA_ENTRIES,
                     lambda k: k.update(lengths=np.full(k["x"].shape[1], k["x"].shape[0] + 1))),
    "lengths_float": ("lengths", ValueError, DATA_ENTRIES,
                      lambda k: k.update(lengths=np.ones(k["x"].shape[1]))),
    "lengths_shape": ("lengths", ValueError, DATA_ENTRIES,
                      lambda k: k.update(lengths=np.ones(k["x"].shape[1] + 1, np.int64))),
    "mask_shape": ("mask", ValueError, LOSS_ENTRIES,
                   lambda k: k.update(mask=np.ones((k["x"].shape[0], k["x"].shape[1] + 1)))),
    "mask_zero": ("mask", ValueError, LOSS_ENTRIES,
                  lambda k: k.update(mask=np.zeros((k["x"].shape[0], 1)))),
    "mask_negative": ("mask", ValueError, LOSS_ENTRIES,
                      lambda k: k.update(mask=-np.ones((k["x"].shape[0], 1)))),
    "feedback_T": ("feedback", ValueError, LOSS_ENTRIES,
                   lambda k: k.update(feedback=k["x"].shape[0])),
    "feedback_negative": ("feedback", ValueError, LOSS_ENTRIES, lambda k: k.update(feedback=-1)),
    "loss_unknown": ("loss", ValueError, LOSS_ENTRIES, lambda k: k.update(loss="huber")),
    "steps_negative": ("steps", ValueError, {"generate"}, lambda k: k.update(steps=-1)),
    "steps_float": ("steps", TypeError, {"generate"}, lambda k: k.update(steps=2.0)),
    "batch_size_zero": ("batch_size", ValueError, {"fit"}, lambda k: k.update(batch_size=0)),
    "epochs_float": ("epochs", TypeError, {"fit"}, lambda k: k.update(epochs=1.0)),
    "tbptt_zero": ("tbptt", ValueError, {"fit"}, lambda k: k.update(tbptt=0)),
    "path_int": ("path", TypeError, {"save_load"}, lambda k: k.update(path=7)),
    "model_not_layer": ("model", TypeError, set(ENTRIES) - {"call"},
                        lambda k: k.update(model="lstm")),
}


def _build(cell, n, backend, dtype, seed):
    return rk.Sequential(rk.Dense(n, n, "tanh"), CELLS[cell](n), rk.Dense(n, n),
                         backend=backend, dtype=dtype, seed=seed)


def _oracle(model):
    """The same model on the NumPy backend in float64."""
    ref = rk.Sequential(*[type(layer)(**{k: v for k, v in layer.spec().items()
                                         if k != "type"}, backend="numpy", dtype="float64")
                          for layer in model.layers])
    ref.load_parameters({k: v.astype(np.float64) for k, v in model.parameters().items()})
    return ref


@st.composite
def calls(draw):
    entry = draw(st.sampled_from(ENTRIES))
    cell = draw(st.sampled_from(sorted(CELLS)))
    T, B, n = draw(st.integers(2, 6)), draw(st.integers(1, 4)), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 1000)))
    x = rng.uniform(-1, 1, (T, B, n)).astype(dtype)
    kw = {"x": x, "target": rng.uniform(-1, 1, (T, B, n)).astype(dtype), "mask": None,
          "lengths": None, "feedback": 0, "loss": "mse", "steps": draw(st.integers(0, 4)),
          "batch_size": draw(st.integers(1, 4)), "epochs": 1, "tbptt": None, "path": None}
    if entry in DATA_ENTRIES and draw(st.booleans()):
        kw["lengths"] = rng.integers(1, T + 1, B)
    if entry in LOSS_ENTRIES:
        kw["mask"] = draw(st.sampled_from([None, "from_step"]))
        shortest = T if kw["lengths"] is None else int(kw["lengths"].min())
        kw["feedback"] = draw(st.integers(0, shortest - 1))
        if kw["mask"] == "from_step":
            kw["mask"] = masks.from_step(0, T, kw["lengths"])
    if entry == "fit" and kw["feedback"] == 0:
        kw["tbptt"] = draw(st.sampled_from([None, 1, 2, 3]))
    names = [m for m, (_, _, entries, _) in MUTATIONS.items() if entry in entries]
    mutation = draw(st.none() | st.sampled_from(names))
    return entry, cell, n, dtype, kw, mutation


def _invoke(entry, model, kw):
    if entry == "call":
        return model(kw["x"], lengths=kw["lengths"])
    if entry == "value_and_grad":
        return rk.value_and_grad(model, kw["x"], kw["target"], loss=kw["loss"], mask=kw["mask"],
                                 lengths=kw["lengths"], feedback=kw["feedback"])
    if entry == "evaluate":
        return rk.evaluate(model, kw["x"], kw["target"], loss=kw["loss"], mask=kw["mask"],
                           lengths=kw["lengths"], feedback=kw["feedback"])
    if entry == "generate":
        return rk.generate(model, kw["x"], kw["steps"])
    if entry == "fit":
        opt = rk.SGD(model.parameters(), lr=0.05) if isinstance(model, rk.Sequential) else None
        return rk.fit(model, opt, kw["x"], kw["target"], epochs=kw["epochs"],
                      batch_size=kw["batch_size"], mask=kw["mask"], lengths=kw["lengths"],
                      feedback=kw["feedback"], loss=kw["loss"], tbptt=kw["tbptt"],
                      shuffle=False, progress=False)
    with tempfile.TemporaryDirectory() as d:
        path = kw["path"] if kw["path"] is not None else os.path.join(d, "m.npz")
        rk.save(model, path)
        return rk.load(path, backend=model.backend if isinstance(model, Layer) else None)


def _agree(entry, got, want, dtype):
    tol = gc.PARITY_TOL[np.dtype(dtype).name]
    if entry in ("call", "generate"):
        assert got.dtype == dtype and got.shape == want.shape
        assert gc.norm_error(got, want) <= tol
    elif entry == "value_and_grad":
        assert abs(got[0] - want[0]) <= tol * max(1.0, abs(want[0]))
        for k, g in got[1].items():
            assert g.dtype == dtype and gc.norm_error(g, want[1][k]) <= 10 * tol, k
    elif entry == "evaluate":
        assert abs(got - want) <= tol * max(1.0, abs(want))
    elif entry == "fit":
        for a, b in zip(got["loss"], want["loss"], strict=True):
            assert abs(a - b) <= 10 * tol * max(1.0, abs(b))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=calls(), backend=st.sampled_from(CPU_BACKENDS))
def test_any_api_call_is_right_or_named(call, backend):
    entry, cell, n, dtype, kw, mutation = call
    model = _build(cell, n, backend, dtype, seed=1)
    if mutation is None:
        want = _invoke(entry, _oracle(model), {**kw, "x": kw["x"].astype(np.float64),
                                               "target": kw["target"].astype(np.float64)})
        got = _invoke(entry, model, kw)
        if entry == "save_load":
            for k, v in model.parameters().items():
                np.testing.assert_array_equal(got.parameters()[k], v)
            assert got.dtype == model.dtype
        else:
            _agree(entry, got, want, dtype)
        return
    arg, error, _, mutate = MUTATIONS[mutation]
    mutate(kw)
    if arg == "model":
        model = kw.pop("model")
    if entry == "generate" and arg == "x":
        arg = "primer"
    try:
        _invoke(entry, model, kw)
    except (ValueError, TypeError) as e:
        assert str(e).startswith(f"{arg}:"), (mutation, str(e))
        assert type(e) is error, (mutation, type(e), str(e))
    else:
        raise AssertionError(f"{mutation} on {entry}: no error raised")


@settings(max_examples=60, deadline=None)
@given(T=st.integers(-2, 6), k=st.integers(-2, 7), B=st.integers(1, 4),
       with_lengths=st.booleans(), seed=st.integers(0, 100))
def test_mask_helpers_are_right_or_named(T, k, B, with_lengths, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max(T, 1) + 1, B) if with_lengths else None
    try:
        got = masks.from_step(k, T, lengths)
    except ValueError as e:
        assert str(e).startswith("T:") if T < 1 else str(e).startswith("k:"), str(e)
        assert T < 1 or not 0 <= k < T
        return
    t = np.arange(T)[:, None]
    want = (t >= k) if lengths is None else (t >= k) & (t < lengths[None, :])
    np.testing.assert_array_equal(got, want)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
       as_list=st.booleans())
def test_layout_helpers_are_right_or_named(shape, as_list):
    a = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    src = a.tolist() if as_list else a
    try:
        got = data.from_batch_first(src)
    except ValueError as e:
        assert len(shape) != 3 and str(e).startswith("x:"), str(e)
        return
    np.testing.assert_array_equal(got, a.transpose(1, 0, 2))
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(data.to_batch_first(got), a)
