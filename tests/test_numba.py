"""The Numba backend against the float64 NumPy oracle: every cell, activation,
option, dtype and kernel variant; finite differences on the backend itself; and
argument validation that fires before any compiled kernel runs."""

import itertools
import os
import platform
import subprocess
import sys

import numba
import numpy as np
import pytest

from rnnkern import backends, gradcheck
from rnnkern._validate import PARAMS
from rnnkern.backends.numba_cpu import plan as numba_plan
from rnnkern.backends.numba_cpu._vec import VECTOR_BYTES
from rnnkern.gradcheck import FD_TOL, PARITY_TOL, make_problem, parity

nb = pytest.importorskip("rnnkern.backends.numba_cpu")

CELLS = [("rnn", "tanh"), ("rnn", "relu"), ("rnn", "identity"), ("lstm", "tanh"),
         ("gru", "tanh")]
#: (variant, threads): chosen by shape, every schedule serially, the rows schedules in
#: two row blocks
RUNS = [(None, None), *((v, 1) for v in nb.VARIANTS), *((v, 2) for v in numba_plan.ROWS)]
RUN_IDS = [f"{v}/{t}" for v, t in RUNS]
#: (T, B, I, H, lengths, h0 and dstate): T=1, B=1, odd H, variable lengths, no state
SHAPES = [(1, 1, 2, 7, False, True), (5, 3, 4, 13, True, True), (6, 4, 3, 5, True, False),
          (3, 2, 1, 3, False, False)]


def _check(p, dtype, per_step=False):
    errors = parity(p, "numba", dtype, per_step=per_step)
    tol = PARITY_TOL[np.dtype(dtype).name]
    bad = {k: v for k, v in errors.items() if not v <= tol}
    assert not bad, f"{p.cell}/{p.activation} {np.dtype(dtype).name} {p.options}: {bad}"


def test_default_backend_is_numba():
    assert backends.default() == "numba"
    assert backends.get("numba") is nb


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant,threads", RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("cell,activation", CELLS)
def test_parity_every_variant(cell, activation, variant, threads, dtype):
    for seed, (T, B, I, H, lengths, state) in enumerate(SHAPES):
        p = make_problem(cell, T=T, B=B, I=I, H=H, activation=activation, lengths=lengths,
                         h0=state, dstate=state, seed=seed)
        p.options = {"variant": variant, "threads": threads}
        _check(p, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant,threads", RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("cell,activation", CELLS)
def test_inference_every_variant(cell, activation, variant, threads, dtype):
    """``training=False`` keeps one step's arrays (``_memory.kept``): the outputs and final
    state of a training pass bit for bit, with every variant, on the shapes above and on
    ones where the packed tiles, the stepped input part and two row blocks all run."""
    shapes = [*SHAPES, (4, 8, 5, 16, True, True), (3, 9, 7, 37, False, True),
              (2, 16, 3, 4, True, True)]
    for seed, (T, B, I, H, lengths, state) in enumerate(shapes):
        p = make_problem(cell, T=T, B=B, I=I, H=H, activation=activation, lengths=lengths,
                         h0=state, seed=seed).astype(dtype)
        p.options = {"variant": variant, "threads": threads}
        y, s, cache = gradcheck.forward(nb, p)
        p.options = {"variant": variant, "threads": threads, "training": False}
        y_inf, s_inf, cache_inf = gradcheck.forward(nb, p)
        assert cache_inf is None and cache is not None
        for a, b in zip((y, *s), (y_inf, *s_inf), strict=True):
            assert np.array_equal(a, b), (cell, variant, T, B, I, H)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell,activation", CELLS)
def test_parity_per_step(cell, activation, dtype):
    p = make_problem(cell, T=4, B=3, I=2, H=7, activation=activation, lengths=True, seed=3)
    _check(p, dtype, per_step=True)


@pytest.mark.parametrize("variant", ["rows-fused", "rows-packed", "rows-packed-stepped",
                                     "lone-row"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_parity_wide_and_saturating(cell, variant):
    """Hidden sizes past a vector width and pre-activations far into the tails of
    tanh/sigmoid, where the float32 rational approximation is clamped."""
    p = make_problem(cell, T=3, B=2, I=5, H=37, scale=4.0, seed=7)
    p.options = {"variant": variant}
    _check(p, np.float32)
    _check(p, np.float64)


@pytest.mark.parametrize("chunks", [1, 2, 3, 7])
def test_products_over_all_steps_in_row_blocks(chunks):
    """The input projection (on BLAS and on the packed micro-kernel) and the weight
    gradients split into row blocks (one per Numba thread) against float64 NumPy,
    including more blocks than rows (empty ones); dW, dR on BLAS (gate columns past a
    whole panel) and on the micro-kernel (G*H a multiple of 16), over two gradient arrays
    and over one (dgx is dgh, packed once)."""
    from rnnkern.backends.numba_cpu._simd import input_projection, pack_if, weight_grads

    rng = np.random.default_rng(chunks)
    chunks = None if chunks == 1 else chunks  # the kernels' serial case (``numba_cpu._par``)
    for T, B, I, H, G in [(5, 3, 4, 7, 4), (2, 2, 3, 5, 3), (1, 1, 2, 3, 1), (3, 5, 6, 37, 1),
                          (6, 5, 9, 16, 4), (4, 7, 3, 32, 3), (2, 3, 5, 16, 1)]:
        x = rng.standard_normal((T, B, I))
        W = rng.standard_normal((I, G * H))
        h = rng.standard_normal((T + 1, B, H))
        dgx, dgh = rng.standard_normal((2, T, B, G * H))
        if G != 3:
            dgh = dgx
        for packed in (None, True):  # BLAS, the micro-kernel
            np.testing.assert_allclose(
                input_projection(x, W, pack_if(W, packed), G * H, chunks), x @ W, rtol=1e-12)
        xs, hs = x.reshape(T * B, I), h[:T].reshape(T * B, H)
        gx, gh = dgx.reshape(T * B, G * H), dgh.reshape(T * B, G * H)
        for packed in (None, True):  # BLAS, the micro-kernel where G*H is whole panels
            dx, dW, dR, db = weight_grads(x, W, h, dgx, dgh, chunks, packed)
            np.testing.assert_allclose(dx, dgx @ W.T, rtol=1e-12)
            np.testing.assert_allclose(dW, xs.T @ gx, rtol=1e-12)
            np.testing.assert_allclose(dR, hs.T @ gh, rtol=1e-12)
            np.testing.assert_allclose(db, gx.sum(0), rtol=1e-12)


@pytest.mark.parametrize("chunks", [1, 2, 3, 7])
def test_weight_grads_dx_on_the_micro_kernel(chunks):
    """``weight_grads`` where the inputs are whole panels, so that dx = dgx @ W.T runs on
    the micro-kernel over W.T packed once (serially and in row blocks), against float64
    NumPy within the round-off bound of a sum of K products: K * eps * sum(|terms|), the
    reference's own rounding as much again (with K = 16 to 144 terms of either sign, an
    element's relative error has no bound where they nearly cancel)."""
    from rnnkern.backends.numba_cpu._simd import weight_grads

    def assert_product(got, a, b):
        bound = 2 * a.shape[1] * np.finfo(np.float64).eps * (np.abs(a) @ np.abs(b))
        assert np.all(np.abs(got - a @ b) <= bound)

    rng = np.random.default_rng(chunks)
    chunks = None if chunks == 1 else chunks
    for T, B, I, H, G in [(3, 4, 32, 8, 4), (2, 5, 16, 48, 3)]:
        x = rng.standard_normal((T, B, I))
        W = rng.standard_normal((I, G * H))
        h = rng.standard_normal((T + 1, B, H))
        dgx, dgh = rng.standard_normal((2, T, B, G * H))
        if G != 3:
            dgh = dgx
        xs, hs = x.reshape(T * B, I), h[:T].reshape(T * B, H)
        gx, gh = dgx.reshape(T * B, G * H), dgh.reshape(T * B, G * H)
        for packed in (None, True):  # BLAS, the micro-kernel
            dx, dW, dR, db = weight_grads(x, W, h, dgx, dgh, chunks, packed)
            assert_product(dx.reshape(T * B, I), gx, W.T)
            assert_product(dW, xs.T, gx)
            assert_product(dR, hs.T, gh)
            assert_product(db[None], np.ones((1, T * B)), gx)


@pytest.mark.parametrize("chunks", [1, 2, 7])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_dense_against_the_oracle(chunks, dtype):
    """The Dense kernels against ``numpy_ref.dense_forward``/``dense_backward`` in float64:
    every activation, with and without lengths, T=1 and B=1, output columns in whole
    panels of the micro-kernel (on it and on BLAS) and not (BLAS), serially and in row blocks (more
    blocks than rows too); and the backend's own entry points."""
    from rnnkern.backends import numpy_ref
    from rnnkern.backends.numba_cpu import dense
    from rnnkern.backends.numba_cpu._simd import pack_serial

    rng = np.random.default_rng(chunks)
    tol = PARITY_TOL[dtype]
    for T, B, I, O in [(5, 3, 4, 7), (1, 1, 3, 32), (3, 2, 1, 64), (4, 5, 33, 125), (2, 3, 6, 16)]:
        x, dy = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, O))
        W, b = rng.standard_normal((I, O)) * 0.5, rng.standard_normal(O)
        for act, lengths in itertools.product(dense.ACTIVATIONS, (None, rng.integers(1, T + 1, B))):
            y, cache = numpy_ref.dense_forward(x, W, b, act, lengths)
            dx, grads = numpy_ref.dense_backward(dy, cache)
            lens = np.full(B, T) if lengths is None else lengths
            xs, Ws, bs, dys = (a.astype(dtype) for a in (x, W, b, dy))
            whole = O % (2 * VECTOR_BYTES // xs.itemsize) == 0
            c = None if chunks == 1 else chunks
            for packed in (None, True):  # BLAS, the micro-kernel (where O is whole panels)
                PW = pack_serial(Ws) if whole and packed else None
                got = dense.dense_forward(xs, Ws, PW, bs, dense.ACTIVATIONS[act], lens, c)
                np.testing.assert_allclose(got, y, rtol=tol, atol=tol)
                gdx, gdW, gdb = dense.dense_backward(dys, xs, Ws, got, dense.ACTIVATIONS[act],
                                                     lens, c, packed)
                for name, a, want in (("dx", gdx, dx), ("W", gdW, grads["W"]),
                                      ("b", gdb, grads["b"])):
                    assert a.dtype == dtype, name
                    np.testing.assert_allclose(a, want, rtol=tol, atol=10 * tol, err_msg=name)
            ny, ncache = nb.dense_forward(xs, Ws, bs, act, lengths)
            np.testing.assert_allclose(ny, y, rtol=tol, atol=tol)
            np.testing.assert_allclose(nb.dense_backward(dys, ncache)[0], dx, rtol=tol,
                                       atol=10 * tol)
            assert nb.dense_forward(xs, Ws, bs, act, lengths, training=False)[1] is None


@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid"])
def test_dense_padding_steps_stay_zero_with_nonfinite_values(activation):
    """A NaN or inf in a padding step's input gives zeros there, and one in a padding step's
    output gradient reaches neither dx nor dW, db: the oracle and the kernels alike (a
    masked product, y * active, would turn them into NaN)."""
    from rnnkern.backends import numpy_ref

    rng = np.random.default_rng(0)
    T, B, I, O = 4, 3, 5, 32
    x, dy = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, O))
    W, b = rng.standard_normal((I, O)), rng.standard_normal(O)
    lengths = np.array([4, 2, 1])
    pad = np.arange(T)[:, None] >= lengths[None, :]
    bad_x = x.copy()
    bad_x[3, 1, 0], bad_x[2, 2, 1] = np.nan, np.inf
    dy[3, 1, 0], dy[1, 2, 3] = np.inf, np.nan
    for be in (numpy_ref, nb):
        y = be.dense_forward(bad_x, W, b, activation, lengths)[0]
        assert (y[pad] == 0).all() and np.isfinite(y[~pad]).all(), be.__name__
        dx, grads = be.dense_backward(dy, be.dense_forward(x, W, b, activation, lengths)[1])
        assert np.isfinite(grads["W"]).all() and np.isfinite(grads["b"]).all(), be.__name__
        assert (dx[pad] == 0).all() and np.isfinite(dx[~pad]).all(), be.__name__


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("variant", numba_plan.ROWS)
@pytest.mark.parametrize("cell,activation", CELLS)
def test_parity_with_products_in_row_blocks(cell, activation, variant, threads, monkeypatch):
    """The whole forward and backward with every product over all steps split over the
    Numba threads (the size threshold lowered to zero), the time loop serial and in two
    row blocks."""
    monkeypatch.setattr(nb, "GEMM_PARALLEL_MIN_MACS", 0)
    p = make_problem(cell, T=5, B=3, I=4, H=9, activation=activation, lengths=True, seed=4)
    p.options = {"variant": variant, "threads": threads}
    _check(p, np.float32)
    _check(p, np.float64)


@pytest.mark.parametrize("in_step", [True, False])
@pytest.mark.parametrize("cell,activation", CELLS)
def test_lone_row_kernel_input_paths(cell, activation, in_step, monkeypatch):
    """lone-row with each step making its input part (x[t] @ W from Q, small I) and with it
    made for all steps before the loop (``lone_row.input_units``): float32 and float64
    against the oracle and inference against training bit for bit, on one row and on
    several (one at a time), H in one block, past whole blocks and past whole vectors,
    variable lengths."""
    monkeypatch.setattr(nb, "UNITS_IN_STEP_MAX_I", 10**6 if in_step else 0)
    for seed, (T, B, I, H, lengths) in enumerate([(7, 1, 9, 16, False), (4, 1, 3, 37, True),
                                                  (3, 3, 5, 20, True), (1, 1, 1, 1, False)]):
        p = make_problem(cell, T=T, B=B, I=I, H=H, activation=activation, lengths=lengths,
                         h0=True, dstate=True, seed=seed)
        p.options = {"variant": "lone-row"}
        _check(p, np.float32)
        _check(p, np.float64)
        q = p.astype(np.float32)
        y, s, _ = gradcheck.forward(nb, q)
        q.options = {"variant": "lone-row", "training": False}
        y_inf, s_inf, _ = gradcheck.forward(nb, q)
        for a, b in zip((y, *s), (y_inf, *s_inf), strict=True):
            assert np.array_equal(a, b), (cell, T, B, I, H)


def _processes_on_one_cache(tmp_path, source, steps):
    """Run ``source`` as a script once per step (its argument), one process after the
    other on one fresh Numba cache; each must exit 0 having printed "ok" last. Returns
    each process's output before that line."""
    script = tmp_path / "script.py"
    script.write_text(source)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    outputs = []
    for step in steps:
        out = subprocess.run([sys.executable, str(script), step], capture_output=True,
                             text=True, env=env, timeout=1800)
        lines = out.stdout.strip().splitlines()
        assert out.returncode == 0 and lines[-1:] == ["ok"], (
            step, out.returncode, out.stderr[-3000:])
        outputs.append(lines[:-1])
    return outputs


CACHE_ORDER = """
import sys
import numpy as np
from rnnkern import backends
from rnnkern.gradcheck import make_problem

nb = backends.get("numba")
for cell in ("rnn", "lstm", "gru"):
    for I in (2, 40):  # lone-row's input part in the steps, and before the loop
        p = make_problem(cell, T=3, B=1, I=I, H=32).astype(np.float32)
        P = p.params
        state = (None, None) if cell == "lstm" else (None,)
        extra = (P["b_hn"],) if cell == "gru" else ()
        getattr(nb, cell + "_forward")(p.inputs["x"], *state, P["W"], P["R"], P["b"], *extra,
                                       variant=sys.argv[1])
print("ok")
"""


def test_lone_row_kernel_from_cache(tmp_path):
    """Three processes on one fresh Numba cache: rows-packed, then lone-row compiled beside
    rows-packed's cached functions, then lone-row loaded from the cache at its first call.
    The third crashed when a lone-row kernel called a parallel function
    (``lone_row.input_units``)."""
    _processes_on_one_cache(tmp_path, CACHE_ORDER, ("rows-packed", "lone-row", "lone-row"))


CACHE_CALLEES = """
import sys
import numpy as np
from rnnkern import backends
from rnnkern.backends.numba_cpu._simd import pack, pack_if

B = np.ones((64, 96), np.float32)
if sys.argv[1] == "pack":
    pack(B)
else:
    if sys.argv[1] == "backend first":  # a lone row's forward: a serial plan
        x = np.ones((2, 1, 2), np.float32)
        backends.get("numba").rnn_forward(x, None, np.ones((2, 3), np.float32),
                                          np.ones((3, 3), np.float32),
                                          np.zeros(3, np.float32))
    # compiled (second process) beside the parallel pack loaded from the cache, then
    # loaded from the cache itself (third)
    pack_if(B, True)
print("ok")
"""


def test_kernel_from_cache_starts_threads(tmp_path):
    """A serial function compiled beside parallel callees that came from Numba's cache is
    cached without starting Numba's thread pool when it loads (Numba 0.68): in a process
    whose pool had not started, its first call segfaulted. The backend starts the pool at
    its first call, whatever the plan (``plan._shape_plan``), so that a kernel of that
    kind loads safely after it: ``pack`` (parallel) cached by one process, ``pack_if``
    (serial, calling it) compiled by a second, loaded by a third after a backend call."""
    _processes_on_one_cache(tmp_path, CACHE_CALLEES, ("pack", "pack_if", "backend first"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed(dtype):
    """``_products.transposed``: a.T, C-contiguous, for sizes inside one block, across
    blocks with partial ones at both edges, and empty."""
    from rnnkern.backends.numba_cpu._products import TRANSPOSE_COLS, TRANSPOSE_ROWS, transposed

    rng = np.random.default_rng(5)
    r, n = TRANSPOSE_ROWS, TRANSPOSE_COLS
    for M, N in [(1, 1), (3, 7), (r, n), (2 * r + 1, n - 1), (r + 3, 4 * n), (r - 1, 2 * n + 5),
                 (0, 5), (5, 0)]:
        a = rng.standard_normal((M, N)).astype(dtype)
        t = transposed(a)
        assert t.flags.c_contiguous and t.dtype == dtype
        np.testing.assert_array_equal(t, a.T)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_product_against_numpy(dtype):
    """``_simd.product``: rows lo..hi of A @ B, written or added, through whole row tiles
    (4 rows over pairs of panels and over a last odd panel with AVX-512; 6 and 4 rows over
    one panel with AVX2), left-over rows and columns,
    for a row-major B and a transposed view (the backward's R.T), K in one block, in two
    and in three (the last partial; a pair of panels and a lone one, both in blocks), the
    tiles' rows read from A and, from ``PACK_ROWS_MIN_N`` columns, from a packed copy; the
    rows outside lo..hi stay untouched, and so does the work outside rows lo..hi. An empty
    pack calls BLAS. Rows of A past ``K_OUTER_MIN_BYTES`` over panels whose K block fits in
    L2 run K blocks outermost."""
    from rnnkern.backends.numba_cpu._simd import (
        K_OUTER_MIN_BYTES,
        KB,
        PACK_ROWS_MIN_N,
        pack,
        pack_if,
        product,
    )
    from rnnkern.backends.numba_cpu._vec import VECTOR_BYTES

    rng = np.random.default_rng(11)
    nr = 2 * VECTOR_BYTES // np.dtype(dtype).itemsize
    deep = K_OUTER_MIN_BYTES // ((2 * KB + 7) * np.dtype(dtype).itemsize) + 9
    # whole tiles, left-over rows over 4 panels at once and one at a time, no rows at all,
    # K = 0 (an empty sum)
    for M, K, N, lo, hi in [(1, 1, 1, 0, 1), (5, 3, nr + 1, 0, 5), (9, 7, 2 * nr, 2, 9),
                            (13, 33, 4 * nr + 6, 3, 12), (8, 64, nr - 1, 0, 8),
                            (7, 5, 5 * nr + 3, 1, 7), (4, 3, nr, 2, 2), (9, 300, 2 * nr + 3, 1, 9),
                            (4, 256, nr, 0, 4), (8, 17, 3 * nr + 1, 0, 8), (5, 0, 2 * nr, 0, 5),
                            (6, 2 * KB + 77, 2 * nr + 3, 1, 6), (8, KB + 5, 3 * nr + 2, 0, 8),
                            (12, 5, 3 * nr, 0, 12), (17, 40, 2 * nr + 3, 1, 17),
                            (32, 9, nr, 0, 32), (10, 2 * KB + 3, nr + 2, 0, 10),
                            # wide enough for the tiles' rows to be packed
                            (17, 40, PACK_ROWS_MIN_N + nr + 3, 1, 16),
                            (12, KB + 5, PACK_ROWS_MIN_N, 2, 12),
                            # K blocks outermost, over a pair of panels and a lone one
                            (deep, 2 * KB + 7, 3 * nr + 5, 1, deep - 1)]:
        A = rng.standard_normal((M, K)).astype(dtype)
        for B in (rng.standard_normal((K, N)).astype(dtype),
                  rng.standard_normal((N, K)).astype(dtype).T):
            assert pack(B).shape == (N // nr, K, nr)
            want = A[lo:hi].astype(np.float64) @ B
            tol = PARITY_TOL[np.dtype(dtype).name]
            for P in (pack_if(B, True), pack_if(B, None)):
                # out = A @ B: what was in out is not read
                out = np.full((M, N), np.nan, dtype)
                work = np.full(max(M * K, M * N) + 3, np.inf, dtype)
                product(A, B, P, out, lo, hi, False, work)
                np.testing.assert_allclose(out[lo:hi], want, rtol=tol, atol=10 * tol)
                assert np.isnan(out[:lo]).all() and np.isnan(out[hi:]).all()
                if P is not None and P.shape[0]:  # the micro-kernel's copy of rows lo..hi only
                    assert np.isinf(work[:lo * K]).all() and np.isinf(work[hi * K:]).all()
                # out += A @ B, through work's rows for BLAS
                start = rng.standard_normal((M, N)).astype(dtype)
                out = start.copy()
                product(A, B, P, out, lo, hi, True, work)
                np.testing.assert_allclose(out[lo:hi], start[lo:hi] + want, rtol=tol,
                                           atol=10 * tol)
                np.testing.assert_array_equal(out[:lo], start[:lo])
                np.testing.assert_array_equal(out[hi:], start[hi:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_tile_against_numpy(dtype):
    """Each micro-kernel tile of ``_simd`` on its own, the row tiles over rows packed by
    ``_interleave`` and over A itself, the lone-row tiles over A, written and added, over
    all of K and over a block of it: the tests above run only the tiles of this CPU's
    register file (``PAIRED``), this one every tile on any CPU."""
    from rnnkern.backends.numba_cpu import _simd
    from rnnkern.backends.numba_cpu._vec import VECTOR_BYTES

    rng = np.random.default_rng(12)
    nr = 2 * VECTOR_BYTES // np.dtype(dtype).itemsize
    K, m = 37, 2
    tol = PARITY_TOL[np.dtype(dtype).name]
    for tile, rows, panels in ((_simd._tile4x2, 4, 2), (_simd._tile6, 6, 1),
                               (_simd._tile4, 4, 1), (_simd._tile1x4, 1, 4),
                               (_simd._tile1, 1, 1)):
        A = rng.standard_normal((m + rows + 1, K)).astype(dtype)
        B = rng.standard_normal((K, (panels + 2) * nr)).astype(dtype)
        P = _simd.pack(B)
        Ap = np.zeros(A.size, dtype)
        _simd._interleave(A, Ap, m, rows)
        # (source, its strides: of k, of a row)
        sources = [(A, ())] if rows == 1 else [(Ap, (rows, 1)), (A, (1, K))]
        cols = slice(nr, (1 + panels) * nr)  # from panel 1
        for (src, strides), (k0, k1) in itertools.product(sources, ((0, K), (5, 30))):
            want = A[m:m + rows, k0:k1].astype(np.float64) @ B[k0:k1, cols]
            out = np.full((A.shape[0], B.shape[1]), np.nan, dtype)
            tile(src, P, out, m, 1, False, k0, k1, *strides)
            np.testing.assert_allclose(out[m:m + rows, cols], want, rtol=tol, atol=10 * tol)
            assert np.isnan(np.delete(out, np.s_[m:m + rows], 0)).all(), tile
            start = rng.standard_normal(out.shape).astype(dtype)
            out = start.copy()
            tile(src, P, out, m, 1, True, k0, k1, *strides)
            np.testing.assert_allclose(out[m:m + rows, cols], start[m:m + rows, cols] + want,
                                       rtol=tol, atol=10 * tol)
            untouched = np.ones(out.shape, bool)
            untouched[m:m + rows, cols] = False
            np.testing.assert_array_equal(out[untouched], start[untouched])


def test_row_tiles():
    """``_simd._row_tiles``: whole tiles cover all but at most 3 rows (at most 1 from 6 rows
    on), on both register files (AVX-512 pairs the panels of each tile, ``PAIRED``)."""
    from rnnkern.backends.numba_cpu._simd import PAIRED, _row_tiles
    from rnnkern.backends.numba_cpu._vec import VECTOR_BYTES

    assert PAIRED == (VECTOR_BYTES == 64)
    for rows in range(80):
        sixes, fours = _row_tiles(rows)
        left = rows - 6 * sixes - 4 * fours
        assert sixes >= 0 and fours >= 0 and 0 <= left <= (3 if rows < 6 else 1), rows
        assert sixes >= (rows - 8) // 6, rows
    assert _row_tiles(32) == (4, 2)


def test_products_on_avx2_tiles():
    """On a CPU with AVX-512 the tests above run its tiles; this reruns them in a process
    that compiles for the same CPU without AVX-512 (NUMBA_CPU_FEATURES), so that AVX2's
    6-row tiles are checked there too. (On an AVX2 CPU the tests above already ran them;
    AVX-512's tiles can only be checked on a CPU that has it.)"""
    from numba.core.codegen import get_host_cpu_features

    features = get_host_cpu_features().split(",")
    if "+avx512f" not in features:
        pytest.skip("no AVX-512 here: the tests above ran the AVX2 tiles")
    env = dict(os.environ, NUMBA_CPU_FEATURES=",".join(
        f"-{f[1:]}" if f.startswith("+avx512") else f for f in features))
    tests = [f"{__file__}::{name}" for name in
             ("test_row_tiles", "test_packed_product_against_numpy",
              "test_products_over_all_steps_in_row_blocks",
              "test_weight_grads_dx_on_the_micro_kernel")]
    run = subprocess.run([sys.executable, "-c", "from rnnkern.backends.numba_cpu import _simd; "
                          "print(_simd.PAIRED)"], env=env, capture_output=True, text=True)
    assert run.stdout.split() == ["False"], run.stderr
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          *tests], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("variant", ["rows-packed", "rows-packed-stepped"])
@pytest.mark.parametrize("cell,activation", CELLS)
def test_parity_packed_product_in_whole_tiles(cell, activation, variant, threads):
    """The packed schedules with row blocks of 4 rows and more and gate columns past the
    last whole panel (B=11, H=37), variable lengths and carried state (stepped: the input
    part on the same tiles)."""
    p = make_problem(cell, T=4, B=11, I=6, H=37, activation=activation, lengths=True,
                     h0=True, dstate=True, seed=9)
    p.options = {"variant": variant, "threads": threads}
    _check(p, np.float32)
    _check(p, np.float64)


@pytest.mark.parametrize("cell,activation", CELLS)
def test_batch_inner_cache_read_by_every_backward(cell, activation):
    """batch-inner keeps its cache in one buffer, each step's rows transposed and padded: its
    own backward reads it there; a per-step backward, or another schedule's, turns it into rows
    first. Each agrees with the oracle, with rows padded past whole vectors (B=11),
    variable lengths, carried state and pre-activations deep in the tails."""
    p = make_problem(cell, T=5, B=11, I=3, H=4, activation=activation, lengths=True,
                     h0=True, dstate=True, scale=4.0, seed=12)
    p.options = {"variant": "batch-inner"}
    for dtype in (np.float32, np.float64):
        _check(p, dtype)
        _check(p, dtype, per_step=True)
    q = p.astype(np.float64)
    fwd, bwd = getattr(nb, f"{cell}_forward"), getattr(nb, f"{cell}_backward")
    names = PARAMS[cell]
    state = [q.inputs.get("h0")] + ([q.inputs.get("c0")] if cell == "lstm" else [])
    kw = {"activation": activation} if cell == "rnn" else {}
    dstate = ((q.out_grads["dhT"], q.out_grads["dcT"]) if cell == "lstm"
              else q.out_grads["dhT"])
    results = []
    for variant in ("batch-inner", "rows-fused", "rows-packed"):
        _, _, cache = fwd(q.inputs["x"], *state, *(q.params[k] for k in names),
                          lengths=q.lengths, variant="batch-inner", **kw)
        assert "buf" in cache
        results.append(bwd(q.out_grads["dy"], dstate, cache, variant=variant))
        assert ("buf" in cache) == (variant == "batch-inner")
    for other in results[1:]:
        np.testing.assert_allclose(other[0], results[0][0], rtol=1e-12, atol=1e-12)
        for k in names:
            np.testing.assert_allclose(other[2][k], results[0][2][k], rtol=1e-12, atol=1e-12)


def test_batch_inner_padding_lanes_stay_zero():
    """batch-inner pads the batch to whole vectors; the padding lanes of the state must stay zero.
    A ReLU RNN whose real rows stay at 0 (relu(2h - 1)) would otherwise double its padding
    lanes every step (relu(2h + 1)), inf within 140 float32 steps, and inf * 0 = NaN in dR."""
    from rnnkern.backends import numpy_ref

    T, B = 140, 3
    x = np.full((T, B, 1), -2.0, np.float32)
    W, R, b = np.ones((1, 1), np.float32), np.full((1, 1), 2.0, np.float32), np.ones(1, np.float32)
    y, hT, cache = nb.rnn_forward(x, None, W, R, b, activation="relu",
                                 variant="batch-inner")
    dx, dh0, grads = nb.rnn_backward(np.ones_like(y), None, cache, variant="batch-inner")
    ref = numpy_ref.rnn_forward(x, None, W, R, b, activation="relu")
    ref_dx, ref_dh0, ref_grads = numpy_ref.rnn_backward(np.ones_like(y), None, ref[2])
    np.testing.assert_array_equal(y, ref[0])
    np.testing.assert_allclose(dx, ref_dx)
    for k in ("W", "R", "b"):
        assert np.isfinite(grads[k]).all()
        np.testing.assert_allclose(grads[k], ref_grads[k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vector_activations_match_scalar(dtype):
    """``fast_tanh``/``fast_sigmoid`` on a ``_vec.Vec`` give what they give on each lane's
    scalar: the rational form in float32, libm in float64; NaN, inf and the clamp alike."""
    from numba import njit

    from rnnkern.backends.numba_cpu._activations import fast_sigmoid, fast_tanh
    from rnnkern.backends.numba_cpu._vec import lanes, vload, vstore

    @njit
    def both(a, scalar, vector):
        L = lanes(a)
        for i in range(a.size):
            scalar[0, i], scalar[1, i] = fast_tanh(a[i]), fast_sigmoid(a[i])
        for i in range(0, a.size, L):
            vstore(vector[0], i, fast_tanh(vload(a, i)))
            vstore(vector[1], i, fast_sigmoid(vload(a, i)))

    # 80 values: a whole number of vectors at every lane count (4, 8, 16)
    a = np.concatenate([np.linspace(-12, 12, 69), [0.0, -0.0, 1e-30, 9.0, -9.0, np.inf,
                                                     -np.inf, np.nan, 800.0, -800.0, 3.0]])
    a = a.astype(dtype)
    scalar, vector = np.empty((2, a.size), dtype), np.empty((2, a.size), dtype)
    both(a, scalar, vector)
    np.testing.assert_array_equal(vector, scalar)
    assert np.all(np.abs(scalar[0] - np.tanh(a.astype(np.float64)))[np.isfinite(a)]
                  <= 4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_store_first_lanes(dtype):
    """``_vec.vstore_first``: the first n lanes of a vector at a flat index, nothing for
    n <= 0, every lane from n = lanes; nothing else of the array written, also where the
    vector reaches past the array's end (lone-row stores a unit block's last units that way)."""
    from numba import njit

    from rnnkern.backends.numba_cpu._vec import lanes, vload, vstore_first

    @njit
    def store(a, i, src, n):
        vstore_first(a, i, vload(src, 0), n)

    L = lanes(np.empty(1, dtype))
    src = np.arange(1, L + 1, dtype=dtype)
    for n in range(-2, L + 2):
        for i in (0, 3):
            a = np.full(i + L + 5, -1, dtype)
            store(a, i, src, n)
            want = np.full_like(a, -1)
            k = min(max(n, 0), L)
            want[i:i + k] = src[:k]
            np.testing.assert_array_equal(a, want)
        if 0 <= n <= L:  # ending exactly at the end of the array
            tight = np.full(3 + n, -1, dtype)
            store(tight, 3, src, n)
            np.testing.assert_array_equal(tight[3:], src[:n])
            assert (tight[:3] == -1).all()


@pytest.mark.parametrize("cell,activation", CELLS)
def test_finite_differences(cell, activation):
    p = make_problem(cell, T=3, B=2, I=2, H=3, activation=activation, lengths=True, seed=5)
    errors = gradcheck.fd_check(p, backend="numba")
    assert max(errors.values()) < FD_TOL, errors


def test_per_step_finite_differences():
    p = make_problem("lstm", T=3, B=2, I=2, H=2, lengths=True, seed=2)
    for name, err in gradcheck.per_step_check(p, backend="numba").items():
        assert err["fd"] < FD_TOL and err["sum"] < 1e-12, (name, err)


def test_dtype_and_shapes_out():
    p = make_problem("gru", T=4, B=2, I=3, H=5).astype(np.float32)
    x, P = p.inputs["x"], p.params
    y, hT, cache = nb.gru_forward(x, None, P["W"], P["R"], P["b"], P["b_hn"])
    dx, dh0, grads, steps = nb.gru_backward(None, hT, cache, per_step=True)
    assert y.dtype == hT.dtype == dx.dtype == dh0.dtype == np.float32
    assert {k: v.shape for k, v in grads.items()} == {k: v.shape for k, v in P.items()}
    assert {k: v.shape for k, v in steps.items()} == {k: (4, *v.shape) for k, v in P.items()}


def test_no_gradient_inputs_give_zero():
    p = make_problem("lstm", T=3, B=2, I=2, H=4)
    x, P = p.inputs["x"], p.params
    _, _, cache = nb.lstm_forward(x, None, None, P["W"], P["R"], P["b"])
    dx, (dh0, dc0), grads = nb.lstm_backward(None, None, cache)
    for a in (dx, dh0, dc0, *grads.values()):
        assert not a.any()


# ----------------------------------------------------------------------------
# validation before any kernel runs


@pytest.fixture
def no_kernels(monkeypatch):
    """Replace every compiled kernel entry point with one that fails the test."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a kernel ran before the arguments were validated")

    for mod in (nb.rnn, nb.lstm, nb.gru, nb.batch_inner, nb.lone_row):
        for name in dir(mod):
            if name.endswith(("_forward", "_backward")):
                monkeypatch.setattr(mod, name, forbidden)


def _lstm_args(T=3, B=2, I=2, H=4, dtype=np.float32):
    p = make_problem("lstm", T=T, B=B, I=I, H=H).astype(dtype)
    P = p.params
    return p.inputs["x"], P["W"], P["R"], P["b"]


@pytest.mark.parametrize("case,match", [
    ("W shape", "W"), ("x strided", "x"), ("dtype mix", "R"), ("lengths", "lengths"),
    ("variant", "variant"), ("activation", "activation"), ("h0 shape", "h0"),
])
def test_forward_validation(no_kernels, case, match):
    x, W, R, b = _lstm_args()
    kwargs = {}
    if case == "W shape":
        W = np.zeros((3, 16), np.float32)
    elif case == "x strided":
        x = np.zeros((3, 2, 4), np.float32)[:, :, ::2]
    elif case == "dtype mix":
        R = R.astype(np.float64)
    elif case == "lengths":
        kwargs["lengths"] = np.array([0, 3])
    elif case == "variant":
        kwargs["variant"] = "v3"  # the old numbered ids are gone
    elif case == "h0 shape":
        with pytest.raises(ValueError, match=match):
            nb.lstm_forward(x, np.zeros((3, 4), np.float32), None, W, R, b)
        return
    if case == "activation":
        with pytest.raises(ValueError, match=match):
            nb.rnn_forward(x, None, W[:, :4].copy(), R[:, :4].copy(), b[:4].copy(),
                           activation="softplus")
        return
    with pytest.raises(ValueError, match=match):
        nb.lstm_forward(x, None, None, W, R, b, **kwargs)


def test_backward_validation():
    x, W, R, b = _lstm_args()
    _, _, cache = nb.lstm_forward(x, None, None, W, R, b)
    with pytest.raises(ValueError, match="dy"):
        nb.lstm_backward(np.zeros((3, 2, 5), np.float32), None, cache)
    with pytest.raises(ValueError, match="dcT"):
        nb.lstm_backward(None, (None, np.zeros((2, 4), np.float64)), cache)
    with pytest.raises(ValueError, match="variant"):
        nb.lstm_backward(None, None, cache, variant="fast")


# ----------------------------------------------------------------------------
# schedule choice, threads and BLAS threads

FUSED, PACKED, STEPPED = "rows-fused", "rows-packed", "rows-packed-stepped"
#: B32 H64 float32 on two threads: the packed tile with AVX-512, the fused loop with AVX2
SMALL_H64 = (STEPPED, 2) if VECTOR_BYTES == 64 else (FUSED, 2)


@pytest.mark.parametrize("B,H,two,one", [
    (16, 3, ("batch-inner", 1), ("batch-inner", 1)), (1, 3, ("lone-row", 1), ("lone-row", 1)),
    (1, 24, ("lone-row", 1), ("lone-row", 1)), (1, 32, ("lone-row", 1), ("lone-row", 1)),
    (2, 24, (FUSED, 1), (FUSED, 1)), (32, 64, SMALL_H64, (SMALL_H64[0], 1)),
    (32, 48, (FUSED, 2), (FUSED, 1)),
    (1, 64, ("lone-row", 1), ("lone-row", 1)), (64, 65, (STEPPED, 2), (STEPPED, 1)),
    (32, 65, (PACKED, 2), (STEPPED, 1)), (30, 65, (PACKED, 2), (PACKED, 1)),
    (4, 65, (PACKED, 2), (PACKED, 1)), (1, 65, (PACKED, 1), (PACKED, 1)),
    (8, 1200, (PACKED, 2), (PACKED, 1))])
def test_automatic_variant(B, H, two, one, monkeypatch):
    """By shape, on two Numba threads and on one, (schedule, row blocks): a lone row (B=1)
    up to H=64 runs lone-row; row blocks need two threads and two rows per thread (and a
    call long enough, here any: see the next test); the input part goes into the steps only
    where W and R are small enough to stay in cache (not at H=1200) and every row block is
    whole 4-row tiles of at least STEPPED_MIN_ROWS rows (not B=30 in two blocks, nor B=4 in
    two blocks of 2, nor B=32 in two blocks of 16 beyond H=64)."""
    monkeypatch.setattr(numba_plan, "PARALLEL_MIN_CALL_MACS", 0)
    p = make_problem("gru", T=2, B=B, I=2, H=H).astype(np.float32)
    P = p.params
    before = numba.get_num_threads()
    for threads, expected in ((2, two), (1, one)):
        if threads > numba.config.NUMBA_NUM_THREADS:
            continue  # a process started with one thread has no second to give
        numba.set_num_threads(threads)
        try:
            _, _, cache = nb.gru_forward(p.inputs["x"], None, P["W"], P["R"], P["b"],
                                         P["b_hn"])
        finally:
            numba.set_num_threads(before)
        assert (cache["variant"], cache["threads"]) == expected, threads


@pytest.mark.parametrize("B,H,G,I,itemsize,expected", [
    (8, 8, 4, 8, 4, ("batch-inner", 1)), (7, 8, 4, 8, 4, (FUSED, 1)),
    (8, 9, 4, 8, 4, (FUSED, 1)), (2, 8, 4, 8, 4, (FUSED, 1)),
    # B * G*H against PARALLEL_MIN_WORK at H <= FUSED_MAX_H
    (171, 32, 3, 8, 4, (FUSED, 2)), (170, 32, 3, 8, 4, (FUSED, 1)),
    (2, 32, 1, 8, 4, (FUSED, 1)), (2, 33, 1, 8, 4, (FUSED, 1)), (4, 33, 1, 8, 4, (FUSED, 2)),
    # (I + H) * G*H * itemsize against STEPPED_MAX_BYTES
    (64, 900, 3, 2, 4, (STEPPED, 2)), (64, 1024, 3, 2, 4, (PACKED, 2)),
    (64, 640, 3, 2, 8, (STEPPED, 2)), (64, 700, 3, 2, 8, (PACKED, 2)),
    (64, 65, 4, 2, 4, (STEPPED, 2)), (72, 65, 4, 2, 4, (STEPPED, 2)),
    (68, 65, 4, 2, 4, (PACKED, 2)), (60, 65, 4, 2, 4, (PACKED, 2))])
def test_choice_at_the_thresholds(B, H, G, I, itemsize, expected, monkeypatch):
    """Cases either side of each threshold on two threads, for a long call: the same
    schedules and row blocks as the numbered variants they replace were chosen."""
    monkeypatch.setattr(numba_plan, "numba", type("N", (), {"get_num_threads": lambda: 2}))
    plan = numba_plan.choose(None, None, B, H, G, I, itemsize, 10**6)
    assert (plan.name, plan.chunks) == expected


def test_short_calls_run_serially():
    """A call chosen by shape below ``PARALLEL_MIN_CALL_MACS`` multiply-adds runs in one
    row block, unless the schedule or the threads are asked for (on two Numba threads)."""
    from rnnkern.backends.numba_cpu.plan import PARALLEL_MIN_CALL_MACS

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("a process started with one Numba thread: every call is serial")
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        for B, H, I, name in ((16, 64, 12, SMALL_H64[0]), (64, 256, 64, STEPPED)):
            per_step = B * 3 * H * (H + I)
            short = PARALLEL_MIN_CALL_MACS // per_step
            assert nb.choose(None, None, B, H, 3, I, 4, short)[:2] == (name, 1)
            assert nb.choose(None, None, B, H, 3, I, 4, short + 1)[:2] == (name, 2)
            assert nb.choose(name, None, B, H, 3, I, 4, short)[:2] == (name, 2)
            assert nb.choose(None, 2, B, H, 3, I, 4, short)[:2] == (name, 2)
    finally:
        numba.set_num_threads(before)


def test_threads_setting():
    """threads: 1 runs serially, n runs n row blocks capped at B, whatever Numba's thread
    count; batch-inner and lone-row always run one; a bad value is refused by name."""
    for threads, B, chunks in ((1, 64, 1), (3, 64, 3), (7, 5, 5), (2, 1, 1)):
        assert nb.choose("rows-packed", threads, B, 128, 4, 8, 4, 10).chunks == chunks
        assert nb.choose(None, threads, B, 128, 4, 8, 4, 10).chunks == chunks
    assert nb.choose("batch-inner", 4, 16, 4, 4, 8, 4, 10).chunks == 1
    assert nb.choose("lone-row", 4, 1, 32, 4, 8, 4, 10).chunks == 1
    x, W, R, b = _lstm_args()
    for bad in (0, -1, 1.0, "2", True):
        with pytest.raises(ValueError, match="threads: expected None or an int >= 1"):
            nb.lstm_forward(x, None, None, W, R, b, threads=bad)
    with pytest.raises(ValueError, match="variant: expected None or one of 'rows-fused'"):
        nb.lstm_forward(x, None, None, W, R, b, variant="rows")
    p = make_problem("lstm", T=3, B=5, I=2, H=70, lengths=True, seed=1)
    p.options = {"variant": "rows-packed-stepped", "threads": 3}
    _check(p, np.float64)


@pytest.mark.parametrize("H,fused,packed", [(24, True, False), (32, False, True),
                                             (48, False, True), (7, True, False)])
def test_lone_row_backward_plan(H, fused, packed):
    """lone-row's backward runs on the packed product (rows-packed's) where R.T is whole
    panels, else on the fused loop (rows-fused's), asked for by name or chosen."""
    for variant in (None, "lone-row"):
        plan = nb.choose(variant, None, 1, H, 4, 8, 4, 1000)
        assert tuple(plan) == ("lone-row", 1, fused, packed, False)


def test_blas_thread_count_restored():
    """A call whose products over all steps run on one OpenBLAS thread puts the count back."""
    from rnnkern.backends.numba_cpu import _blas

    if _blas._COUNT is None:
        pytest.skip("SciPy's BLAS is not OpenBLAS")
    get, set_ = _blas._COUNT
    before = get()
    try:
        set_(2)
        p = make_problem("lstm", T=3, B=16, I=8, H=40).astype(np.float32)
        P = p.params
        _, _, cache = nb.lstm_forward(p.inputs["x"], None, None, P["W"], P["R"], P["b"],
                                      variant="rows-fused", threads=1)
        nb.lstm_backward(p.out_grads["dy"], None, cache)
        assert get() == 2
    finally:
        set_(before)


def test_outputs_do_not_share_memory_between_calls():
    """Zero states and full lengths are shared between calls; nothing returned may be."""
    p = make_problem("lstm", T=3, B=16, I=1, H=3).astype(np.float32)
    x, P = p.inputs["x"], p.params
    y1, (h1, c1), cache1 = nb.lstm_forward(x, None, None, P["W"], P["R"], P["b"])
    expected = y1.copy(), h1.copy(), c1.copy()
    for a in (y1, h1, c1):
        a[...] = np.nan
    dx, (dh0, dc0), grads = nb.lstm_backward(None, None, cache1)
    dh0[...] = np.nan
    y2, (h2, c2), _ = nb.lstm_forward(x, None, None, P["W"], P["R"], P["b"])
    for a, b in zip((y2, h2, c2), expected):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n", [3, 3_000_000])  # 12 MB in float32: asks for huge pages
def test_empty_allocates_writable_arrays_of_the_dtype(n):
    memory = nb._memory
    a = memory.empty((n,), np.zeros(1, np.float32))
    assert a.shape == (n,) and a.dtype == np.float32 and a.flags.c_contiguous
    a[:] = 1.5
    assert a.sum(dtype=np.float64) == 1.5 * n
    s0 = np.arange(6, dtype=np.float64).reshape(2, 3)
    s = memory.states(s0, 4)
    assert s.shape == (5, 2, 3) and s.dtype == np.float64
    np.testing.assert_array_equal(s[0], s0)


_REUSE_PROBE = """
import resource
import numpy as np
import rnnkern.backends.numba_cpu  # noqa: F401 (its import sets glibc up)
# count 4 KiB pages (24k per round): NumPy asks for huge pages for big arrays
(getattr(np, '_core', None) or np.core).multiarray._set_madvise_hugepage(False)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):  # the first round maps the heap; what the last faults is the figure
    before = faults()
    arrays = [np.empty(5_000_000, np.float32) for _ in range(5)]  # 20 MB each
    for a in arrays:
        a[:] = 1
    del arrays, a
    n = faults() - before
print(n)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_freed_arrays_are_reused_without_page_faults():
    """Importing the backend has glibc hand the 100 MB of arrays a call frees to the next
    call (the pattern of a kernel's caches and gradients): no page faults the third time;
    RNNKERN_MALLOPT=0 keeps glibc's defaults, which give the memory back and fault it in
    afresh."""
    def probe(env_value):
        env = dict(os.environ, RNNKERN_MALLOPT=env_value)
        out = subprocess.run([sys.executable, "-c", _REUSE_PROBE], env=env, check=True,
                             capture_output=True, text=True).stdout
        return int(out.split()[-1])

    assert nb._memory.reuse_freed_memory()
    # with transparent huge pages always on, glibc's defaults fault ~50 2 MiB pages
    assert probe("1") < 10
    assert probe("0") > 40


COLD_WARM = """
import hashlib
import numpy as np
import rnnkern as rk
from rnnkern import backends, gradcheck
from rnnkern.gradcheck import make_problem

nb = backends.get("numba")


def digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# shapes the default choice sends to every kind of kernel at one or two threads: lone
# rows (packed and fused, input part in the steps or before them), batch innermost,
# fused, fused parallel, micro-kernel serial and stepped parallel
SHAPES = [(5, 1, 3, 32), (5, 1, 20, 13), (4, 8, 2, 4), (9, 16, 32, 32), (3, 5, 4, 48),
          (3, 3, 8, 70), (3, 8, 8, 70)]
for cell in ("rnn", "lstm", "gru"):
    for T, B, I, H in SHAPES:
        p = make_problem(cell, T=T, B=B, I=I, H=H, lengths=B > 2).astype(np.float32)
        y, state, cache = gradcheck.forward(nb, p)
        variant = cache["variant"]
        g = gradcheck.backward(nb, p, cache)
        grads = g.pop("grads")
        print(cell, T, B, I, H, variant, digest(y, *state, *(g[k] for k in sorted(g)),
                                                *(grads[k] for k in sorted(grads))))

# the demo's model: teacher-forced and free-running fit, evaluate, closed-loop generation
rng = np.random.default_rng(0)
x = rng.uniform(-1, 1, (9, 64, 1)).astype(np.float32)
t = np.roll(x, -1, axis=0)
model = rk.Sequential(rk.Dense(1, 32, "tanh"), rk.LSTM(32, 32), rk.Dense(32, 1), seed=0)
opt = rk.Adam(model.parameters(), clip_norm=1.0)
history = [rk.fit(model, opt, x, t, epochs=2, batch_size=16, feedback=fb,
                  validation=(x[:, :16], t[:, :16]), val_feedback=4, progress=False)
           for fb in (0, 4)]
print("demo history", repr(history))
print("demo", digest(*model.parameters().values(), rk.generate(model, x[:5], 5)))
print("ok")
"""


def test_cold_and_warm_cache_give_the_same_bits(tmp_path):
    """A process that compiles the kernels (a fresh cache) and two that load them give
    byte-identical outputs, final states, input and weight gradients for every cell and
    kind of kernel, and the same history, parameters and generated values for the demo's
    model. A function compiled in-process was also a strong symbol of its own, which its
    callers' copies (weak, re-optimised with them) resolved to there; a later process
    ran those copies instead: LSTM gradients differed by up to 1e-7 relative."""
    cold, warm, again = _processes_on_one_cache(tmp_path, COLD_WARM, ("1", "2", "3"))
    assert len(cold) == 3 * 7 + 2
    assert cold == warm == again


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("variant,threads", RUNS, ids=RUN_IDS)
@pytest.mark.parametrize("cell,activation", CELLS)
def test_nan_input_propagates_every_variant(cell, activation, variant, threads, dtype):
    """A NaN in x reaches that row's every later output and its final state, and no other
    row, as in the oracle and torch: the float32 tanh's clamp and relu must not turn it
    into a finite value (a diverged model that looks healthy)."""
    for seed, (T, B, I, H) in enumerate([(1, 1, 2, 7), (5, 3, 4, 13), (4, 8, 5, 16),
                                         (3, 9, 7, 37), (2, 16, 3, 4)]):
        p = make_problem(cell, T=T, B=B, I=I, H=H, activation=activation, seed=seed)
        p = p.astype(dtype)
        t0, n0 = T // 2, B // 2
        p.inputs["x"][t0, n0, 0] = np.nan
        p.options = {"variant": variant, "threads": threads}
        y, state, _ = gradcheck.forward(nb, p)
        others = np.arange(B) != n0
        assert np.isnan(y[t0:, n0]).all(), (cell, activation, variant, T, B, I, H)
        assert np.isfinite(y[:t0]).all() and np.isfinite(y[:, others]).all()
        for s in state:
            assert np.isnan(s[n0]).all() and np.isfinite(s[others]).all()
