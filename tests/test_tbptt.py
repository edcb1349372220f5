"""Truncated BPTT: fit(tbptt=k) equals plain fit for k >= T, and equals value_and_grad
and an optimiser step per chunk started from the carried state, whose own gradient is
dropped (gradients cut at chunk borders),
with masks, lengths and feedback; long sequences train and generate in bounded memory."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import rnnkern as rk
from rnnkern.generate import STREAM_CHUNK, stream

T, B = 8, 3


def _model(backend, seed=0):
    return rk.Sequential(rk.Dense(1, 3, "tanh"), rk.LSTM(3, 4), rk.Dense(4, 1),
                         backend=backend, dtype="float64", seed=seed)


def _data():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (T, B, 1))
    return x, np.cumsum(x, 0)


@pytest.mark.parametrize("k", [T, T + 5])
def test_tbptt_of_at_least_T_is_plain_fit(backend, k):
    x, target = _data()
    runs = []
    for tbptt in (None, k):
        model = _model(backend)
        h = rk.fit(model, rk.Adam(model.parameters(), lr=1e-2), x, target, epochs=3,
                   batch_size=2, tbptt=tbptt, progress=False)
        runs.append((h, model.parameters()))
    assert runs[0][0] == runs[1][0]
    for k_, v in runs[0][1].items():
        np.testing.assert_array_equal(v, runs[1][1][k_])


def _by_hand(backend, x, target, k, mask=None, lengths=None, feedback=0):
    """One batch, SGD: value_and_grad on each chunk from the carried (detached) state."""
    model = _model(backend)
    opt = rk.SGD(model.parameters(), lr=0.1)
    m = rk.losses.resolve_mask(mask, lengths, T, B, np.float64, np)
    state, total, weight = None, 0.0, 0.0
    for s in range(0, T, k):
        e = min(s + k, T)
        xc, tc, mc = x[s:e], target[s:e], m[s:e]
        lc = None if lengths is None else np.clip(lengths - s, 1, e - s)
        fb = feedback if e == T else 0
        if mc.sum() == 0:
            _, state = model(xc, lengths=lc, state=state, return_state=True)
            continue
        loss, grads = rk.value_and_grad(model, xc, tc, mask=mc, lengths=lc, state=state,
                                        feedback=fb)
        if not fb:  # the state handed on is the one before this chunk's update
            _, state = model(xc, lengths=lc, state=state, return_state=True)
        opt.step(grads)
        total += loss * mc.sum()
        weight += mc.sum()
    return model, total / weight


CASES = {
    "plain": (3, None, None, 0),
    "uneven": (5, None, None, 0),
    "mask-empty-first-chunk": (3, "from_step", None, 0),
    "lengths": (3, None, np.array([8, 5, 2]), 0),
    "feedback-in-last-chunk": (3, None, None, 1),
}


@pytest.mark.parametrize("case", CASES)
def test_chunks_equal_value_and_grad_per_chunk(backend, case):
    k, mask_kind, lengths, feedback = CASES[case]
    x, target = _data()
    mask = None if mask_kind is None else rk.masks.from_step(4, T)
    want, want_loss = _by_hand(backend, x, target, k, mask, lengths, feedback)
    model = _model(backend)
    h = rk.fit(model, rk.SGD(model.parameters(), lr=0.1), x, target, epochs=1, batch_size=B,
               shuffle=False, mask=mask, lengths=lengths, feedback=feedback, tbptt=k,
               progress=False)
    assert h["loss"][0] == pytest.approx(want_loss, rel=1e-12)
    for name, v in model.parameters().items():
        np.testing.assert_allclose(v, want.parameters()[name], rtol=1e-12, atol=1e-15)


def test_unsupported_combinations_raise():
    x, target = _data()
    model = _model("numpy")
    opt = rk.Adam(model.parameters())
    with pytest.raises(ValueError, match="tbptt: with feedback=3"):
        rk.fit(model, opt, x, target, epochs=1, batch_size=B, feedback=3, tbptt=3,
               progress=False)
    with pytest.raises(ValueError, match="tbptt: with feedback=1.*lengths"):
        rk.fit(model, opt, x, target, epochs=1, batch_size=B, feedback=1, tbptt=3,
               lengths=np.array([8, 7, 8]), progress=False)
    with pytest.raises(ValueError, match="tbptt: expected an integer >= 1, got 0"):
        rk.fit(model, opt, x, target, epochs=1, batch_size=B, tbptt=0, progress=False)
    with pytest.raises(TypeError, match="tbptt: expected an integer, got float"):
        rk.fit(model, opt, x, target, epochs=1, batch_size=B, tbptt=2.0, progress=False)


def test_streaming_evaluate_and_generate_equal_one_pass(backend):
    """Past STREAM_CHUNK steps evaluate and generate run in pieces: same results."""
    model = rk.Sequential(rk.GRU(1, 3), rk.Dense(3, 1), backend=backend, dtype="float64",
                          seed=0)
    n = STREAM_CHUNK * 2 + 7
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (n, 2, 1))
    lengths = np.array([n, STREAM_CHUNK + 3])
    y_one = model(x, lengths=lengths)
    y, state = stream(model, x, None, lengths)
    np.testing.assert_allclose(y, y_one, rtol=1e-12, atol=1e-14)
    _, s_one = model(x, lengths=lengths, return_state=True)
    np.testing.assert_allclose(state[0], s_one[0], rtol=1e-12)
    m = rk.masks.all_steps(n, lengths)
    assert rk.evaluate(model, x, x, lengths=lengths) == pytest.approx(
        float(((y_one - x) ** 2 * m[:, :, None]).sum() / m.sum()), rel=1e-12)


MEMORY = textwrap.dedent("""
    import resource, sys, tracemalloc
    import numpy as np
    import rnnkern as rk

    what, T = sys.argv[1], int(sys.argv[2])
    x = np.sin(np.arange(T + 1) * 0.05).astype(np.float32)[:, None, None]
    inp, target = np.ascontiguousarray(x[:-1]), np.ascontiguousarray(x[1:])
    model = rk.Sequential(rk.LSTM(1, 32), rk.Dense(32, 1), seed=0)
    opt = rk.Adam(model.parameters(), lr=1e-3)
    rk.fit(model, opt, inp[:200], target[:200], epochs=1, batch_size=1, tbptt=100,
           progress=False)  # compile (or load) the kernels before measuring
    rk.generate(model, inp[:5], 5)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    if what == "fit":
        rk.fit(model, opt, inp, target, epochs=1, batch_size=1, tbptt=100, progress=False)
    else:
        rk.generate(model, inp[:100], T)
    peak = tracemalloc.get_traced_memory()[1]
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(peak, (rss1 - rss0) * 1024)  # ru_maxrss is in KiB on Linux
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss units differ")
@pytest.mark.parametrize("what,T", [("fit", 100_000), ("generate", 20_000)])
def test_long_sequence_in_bounded_memory(tmp_path, what, T):
    """LSTM H=32, B=1: fit(tbptt=100) over T=100000 steps and generate (20000 steps
    here, for CI time; 100000 in docs/MEMORY.md) grow the peak memory by < 50 MB
    (the caches of all steps at once would take about T * 8H * 4 bytes = 103 MB)."""
    script = tmp_path / "mem.py"
    script.write_text(MEMORY)
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(script), what, str(T)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    traced, rss = map(int, out.stdout.split())
    assert traced < 50e6 and rss < 50e6, (traced, rss)
