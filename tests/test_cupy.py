"""The CuPy CUDA backend.

Host-side tests (variant choice, import without a GPU) run everywhere. Tests that launch
kernels skip when no GPU answers; on a GPU machine they check every function and option
against the float64 NumPy oracle, in float32 and float64, for both kernel variants.
"""

from dataclasses import replace

import numpy as np
import pytest

import rnnkern as rk
from rnnkern import backends
from rnnkern.backends.cupy_cuda import VARIANTS
from rnnkern.backends.cupy_cuda.variants import (
    PERSISTENT_MAX_BATCH,
    DeviceLimits,
    choose_variant,
    plan_persistent,
)
from rnnkern.gradcheck import PARITY_TOL, fd_check, make_problem, parity, per_step_check

GPU = "cupy" in backends.available()
needs_gpu = pytest.mark.skipif(not GPU, reason="no CUDA GPU answers (or CuPy is not installed)")

H100 = DeviceLimits(sm_count=132, smem_per_block=232448, cooperative=True)
CELLS = ("rnn", "lstm", "gru")


# ----------------------------------------------------------------------------
# host side: no GPU needed


def test_variants_are_described():
    assert set(VARIANTS) == {"cublas-steps", "fused-steps", "persistent"}
    assert all(isinstance(v, str) and v for v in VARIANTS.values())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("direction", ("forward", "backward"))
def test_persistent_fits_h100_up_to_1024(cell, direction):
    for H in (64, 256, 320, 512, 1024):
        plan = plan_persistent(cell, 64, H, 4, H100, direction)
        assert plan is not None, (cell, H)
        assert plan.blocks <= H100.sm_count
        assert plan.blocks * plan.HS >= H > (plan.blocks - 1) * plan.HS
        assert plan.smem_bytes <= H100.smem_per_block
        assert 1 <= plan.BB <= 64 and plan.KS >= 1


def test_persistent_refuses_what_does_not_fit():
    # LSTM H=1024 in float64: R is 32 MiB, more than all shared memory together
    assert plan_persistent("lstm", 64, 1024, 8, H100, "forward") is None
    small = DeviceLimits(sm_count=4, smem_per_block=48 * 1024, cooperative=True)
    assert plan_persistent("gru", 8, 256, 4, small, "backward") is None
    no_coop = H100._replace(cooperative=False)
    assert plan_persistent("rnn", 8, 64, 4, no_coop, "forward") is None


def test_choose_variant_by_shape():
    assert choose_variant("lstm", 64, 256, 4, H100, "forward")[0] == "persistent"
    over = PERSISTENT_MAX_BATCH + 1
    assert choose_variant("lstm", over, 256, 4, H100, "forward")[0] == "cublas-steps"
    assert choose_variant("lstm", 8, 1024, 8, H100, "forward")[0] == "cublas-steps"  # does not fit
    assert choose_variant("gru", 1, 64, 4, None, "backward")[0] == "cublas-steps"
    assert (choose_variant("rnn", 8, 64, 4, H100, "forward", "cublas-steps")
            == ("cublas-steps", None))
    assert choose_variant("gru", 8, 64, 4, H100, "backward", "fused-steps") == ("fused-steps", None)
    assert choose_variant("rnn", 256, 64, 4, H100, "forward", "persistent")[0] == "persistent"


def test_choose_variant_rejects_bad_requests():
    with pytest.raises(ValueError, match="variant: expected"):
        choose_variant("rnn", 8, 64, 4, H100, "forward", "v3")
    with pytest.raises(ValueError, match="does not fit"):
        choose_variant("lstm", 8, 1024, 8, H100, "forward", "persistent")


def test_registry_lists_cupy_only_with_a_gpu():
    from rnnkern.backends import cupy_cuda

    assert ("cupy" in backends.available()) == cupy_cuda.is_available()
    if not GPU:
        with pytest.raises(ValueError, match="not available"):
            backends.get("cupy")


# ----------------------------------------------------------------------------
# on the GPU

VARIANT_NAMES = tuple(VARIANTS)
DTYPES = (np.float32, np.float64)


def _check_parity(p, dtype, per_step=False):
    errors = parity(p, "cupy", dtype, per_step=per_step)
    tol = PARITY_TOL[np.dtype(dtype).name]
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"{p.cell} {p.options} {np.dtype(dtype).name}: {bad}"


def _problem(cell, variant, activation="tanh", **kw):
    p = make_problem(cell, activation=activation, **kw)
    p.options = {"variant": variant}
    return p


@needs_gpu
@pytest.mark.parametrize("variant", VARIANT_NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell,activation", [("rnn", "tanh"), ("rnn", "relu"),
                                             ("rnn", "identity"), ("lstm", "tanh"),
                                             ("gru", "tanh")])
@pytest.mark.parametrize("lengths", (False, True))
def test_parity(cell, activation, dtype, variant, lengths):
    p = _problem(cell, variant, activation, T=7, B=5, I=3, H=13, lengths=lengths, seed=3)
    _check_parity(p, dtype)


@needs_gpu
@pytest.mark.parametrize("variant", VARIANT_NAMES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("size", [(1, 1, 1, 1), (1, 3, 2, 5), (9, 1, 4, 7),
                                  (5, 37, 19, 67), (3, 70, 11, 131), (2, 6, 5, 333)])
def test_parity_odd_sizes(cell, variant, size):
    T, B, I, H = size
    p = _problem(cell, variant, T=T, B=B, I=I, H=H, lengths=B > 1, seed=T + B + H)
    for dtype in DTYPES:
        _check_parity(p, dtype)


@needs_gpu
@pytest.mark.parametrize("variant", VARIANT_NAMES)
@pytest.mark.parametrize("cell", CELLS)
def test_parity_without_initial_state(cell, variant):
    p = _problem(cell, variant, T=5, B=4, I=3, H=6, h0=False, dstate=False, seed=5)
    _check_parity(p, np.float64)


@needs_gpu
@pytest.mark.parametrize("variant", VARIANT_NAMES)
@pytest.mark.parametrize("cell", CELLS)
def test_backward_without_output_gradient(cell, variant):
    """dy=None: only the final-state gradients flow back."""
    import cupy

    from rnnkern.gradcheck import forward, norm_error

    p = _problem(cell, variant, T=5, B=4, I=3, H=6, lengths=True, seed=7)
    g = p.out_grads
    dstate = (g["dhT"], g["dcT"]) if cell == "lstm" else g["dhT"]
    ref_be, be = backends.get("numpy"), backends.get("cupy")
    ref = getattr(ref_be, f"{cell}_backward")(None, dstate,
                                              forward(ref_be, replace(p, options={}))[2])
    dev = replace(p, inputs={k: cupy.asarray(v) for k, v in p.inputs.items()},
                  params={k: cupy.asarray(v) for k, v in p.params.items()},
                  lengths=cupy.asarray(p.lengths))
    dstate_dev = (tuple(map(cupy.asarray, dstate)) if cell == "lstm" else cupy.asarray(dstate))
    got = getattr(be, f"{cell}_backward")(None, dstate_dev, forward(be, dev)[2], variant=variant)

    def states(r):
        return r[1] if cell == "lstm" else (r[1],)

    pairs = [(got[0], ref[0]), *zip(states(got), states(ref))]
    pairs += [(got[2][k], ref[2][k]) for k in ref[2]]
    assert max(norm_error(a, b) for a, b in pairs) <= PARITY_TOL["float64"]


@needs_gpu
@pytest.mark.parametrize("variant", VARIANT_NAMES)
@pytest.mark.parametrize("cell", CELLS)
def test_parity_per_step(cell, variant):
    p = _problem(cell, variant, T=6, B=3, I=2, H=5, lengths=True, seed=8)
    for dtype in DTYPES:
        _check_parity(p, dtype, per_step=True)


@needs_gpu
@pytest.mark.parametrize("variant", VARIANT_NAMES)
@pytest.mark.parametrize("cell", CELLS)
def test_finite_differences(cell, variant):
    p = _problem(cell, variant, T=4, B=3, I=2, H=4, lengths=True, seed=11)
    errors = fd_check(p, backend="cupy")
    assert max(errors.values()) < 1e-6, errors


@needs_gpu
@pytest.mark.parametrize("cell", CELLS)
def test_per_step_contributions(cell):
    p = make_problem(cell, T=3, B=2, I=2, H=3, seed=12)
    res = per_step_check(p, backend="cupy")
    assert all(r["fd"] < 1e-6 and r["sum"] < 1e-10 for r in res.values()), res


@needs_gpu
def test_automatic_variant_matches_oracle():
    for cell in CELLS:
        p = make_problem(cell, T=6, B=4, I=3, H=9, lengths=True, seed=13)
        _check_parity(p, np.float64)


@needs_gpu
def test_mixed_numpy_and_cupy_raise():
    import cupy

    be = backends.get("cupy")
    p = make_problem("lstm", T=3, B=2, I=2, H=3)
    x, h0, c0 = (p.inputs[k] for k in ("x", "h0", "c0"))
    W, R, b = (cupy.asarray(p.params[k]) for k in ("W", "R", "b"))
    # a mix: the first argument that differs from the first one given is named
    with pytest.raises(ValueError,
                       match=r"W: is a cupy \(GPU\) array but x is a numpy \(CPU\) array"):
        be.lstm_forward(x, None, None, W, R, b)
    with pytest.raises(ValueError,
                       match=r"h0: is a numpy \(CPU\) array but x is a cupy \(GPU\) array"):
        be.lstm_forward(cupy.asarray(x), h0, cupy.asarray(c0), W, R, b)
    # all on the host: the backend refuses to copy
    with pytest.raises(ValueError, match=r"x: is a numpy \(CPU\) array but the 'cupy' backend"):
        be.lstm_forward(x, h0, c0, p.params["W"], p.params["R"], p.params["b"])
    _, _, cache = be.lstm_forward(cupy.asarray(x), None, None, W, R, b)
    with pytest.raises(ValueError, match="dy: is on a different device"):
        be.lstm_backward(p.out_grads["dy"], None, cache)


@needs_gpu
def test_bad_variant_raises():
    import cupy

    be = backends.get("cupy")
    p = make_problem("rnn", T=3, B=2, I=2, H=3)
    args = [cupy.asarray(p.params[k]) for k in ("W", "R", "b")]
    with pytest.raises(ValueError, match="variant"):
        be.rnn_forward(cupy.asarray(p.inputs["x"]), None, *args, variant="fast")


@needs_gpu
@pytest.mark.parametrize("variant", VARIANT_NAMES)
def test_model_on_gpu_matches_cpu(variant, monkeypatch):
    import cupy

    from rnnkern.backends import cupy_cuda

    # pin the variant for every call the model layer makes
    for name in ("forward", "backward"):
        original = getattr(cupy_cuda.engine, name)
        monkeypatch.setattr(cupy_cuda.engine, name,
                            lambda *a, _f=original, **k: _f(*a, **{**k, "variant": variant}))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 6, 3))
    target = np.sin(np.cumsum(x, axis=0))

    def build(backend):
        return rk.Sequential(rk.Dense(3, 8, activation="tanh", dtype="float64", seed=1),
                             rk.LSTM(8, 10, dtype="float64", seed=2),
                             rk.GRU(10, 7, dtype="float64", seed=3),
                             rk.Dense(7, 3, dtype="float64", seed=4), backend=backend)

    cpu, gpu = build("numpy"), build("numpy").to("cupy")
    out = {}
    for model, xp in ((cpu, np), (gpu, cupy)):
        opt = rk.Adam(model.parameters(), lr=1e-2)
        hist = rk.fit(model, opt, xp.asarray(x), xp.asarray(target), epochs=3, batch_size=3,
                      progress=False)
        pred = rk.generate(model, xp.asarray(x[:5]), steps=4)
        loss = rk.evaluate(model, xp.asarray(x), xp.asarray(target), feedback=3)
        out[xp.__name__] = (hist["loss"], pred, loss, model.parameters())
    (h_cpu, p_cpu, l_cpu, w_cpu), (h_gpu, p_gpu, l_gpu, w_gpu) = out["numpy"], out["cupy"]
    np.testing.assert_allclose(h_gpu, h_cpu, rtol=1e-9)
    np.testing.assert_allclose(cupy.asnumpy(p_gpu), p_cpu, rtol=1e-8, atol=1e-10)
    assert abs(l_gpu - l_cpu) <= 1e-9 * max(abs(l_cpu), 1.0)
    for k, v in w_cpu.items():
        np.testing.assert_allclose(cupy.asnumpy(w_gpu[k]), v, rtol=1e-8, atol=1e-10)


@needs_gpu
def test_gradcheck_command_passes_in_float64():
    from rnnkern.cli import main

    assert main(["gradcheck", "--backend", "cupy"]) == 0


@needs_gpu
@pytest.mark.parametrize("cell", CELLS)
def test_graph_replays_with_new_contents(cell):
    """fused-steps: a second call on the same buffers replays the captured graph, which must read
    the buffers' new contents (new inputs, new R) rather than what it saw at capture."""
    import cupy

    from rnnkern.backends.cupy_cuda import engine
    from rnnkern.gradcheck import forward

    be, ref_be = backends.get("cupy"), backends.get("numpy")
    p = make_problem(cell, T=5, B=3, I=2, H=7, lengths=True, seed=21)
    _, _, cache = forward(be, replace(p, options={"variant": "cublas-steps"}))
    d, act = cache["dims"], 0
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    bufs = {k: cache.get(k) for k in ("h", "c", "a", "gates", "tanh_c", "hn")}
    gates = bufs["a"] if cell == "rnn" else bufs["gates"]
    aux = bufs["tanh_c"] if cell == "lstm" else bufs["hn"]
    gx, y = cupy.empty((d.T, d.B, G * d.H)), cupy.empty((d.T, d.B, d.H))
    R, b_hn = cache["R"].copy(), None if cell != "gru" else cupy.asarray(p.params["b_hn"])
    before = len(engine._GRAPHS)
    for seed in (1, 2):
        q = make_problem(cell, T=5, B=3, I=2, H=7, lengths=True, seed=20 + seed)
        R[...] = cupy.asarray(q.params["R"])
        if b_hn is not None:
            b_hn[...] = cupy.asarray(q.params["b_hn"])
        x, W, b = (cupy.asarray(a) for a in (q.inputs["x"], q.params["W"], q.params["b"]))
        gx[...] = x @ W + b
        bufs["h"][0] = cupy.asarray(q.inputs["h0"])
        if cell == "lstm":
            bufs["c"][0] = cupy.asarray(q.inputs["c0"])
        engine.run_graphed(engine.fused_forward_steps, cell, d, act, R, gx, b_hn, bufs["h"],
                           bufs["c"], gates, aux, y, cache["lengths"])
        want = forward(ref_be, replace(q, lengths=p.lengths, options={}))[0]
        assert float(abs(cupy.asnumpy(y) - want).max()) <= 1e-12
    assert len(engine._GRAPHS) == min(before + 1, engine.GRAPH_CACHE_SIZE)  # one capture


@needs_gpu
def test_no_cublas_call_while_capturing(monkeypatch):
    """fused-steps: the cuBLAS entry points the engine uses (cupy.matmul, cupy.cublas.gemm) are
    wrapped to record whether the current stream captures; none may be called while it does
    (CuPy 14 refuses that anyway, in cublas.setStream)."""
    import cupy

    from rnnkern.backends.cupy_cuda import engine

    seen = []

    def recording(fn):
        def wrapped(*a, **k):
            seen.append(cupy.cuda.get_current_stream().is_capturing())
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(cupy, "matmul", recording(cupy.matmul))
    monkeypatch.setattr(cupy.cublas, "gemm", recording(cupy.cublas.gemm))
    monkeypatch.setattr(engine, "_GRAPHS", type(engine._GRAPHS)())
    for cell in CELLS:
        _check_parity(_problem(cell, "fused-steps", T=4, B=3, I=2, H=5, lengths=True, seed=2),
                      np.float64)
    assert seen and not any(seen)  # the GEMMs outside the loops ran, none inside
    assert len(engine._GRAPHS) >= 2 * len(CELLS)  # each cell's forward and backward loop
