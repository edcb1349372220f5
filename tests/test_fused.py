"""Adam's fused step (``rnnkern._fused``) against the step written out in float64, on
live parameters that are views into one buffer and on separate arrays alike."""

import numpy as np
import pytest

import rnnkern as rk
from rnnkern.optim import NonFiniteError


def _reference(params, grads_seq, lr, betas, eps, clip):
    """The update as PyTorch documents it (clip_grad_norm_, then Adam), float64."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    b1, b2 = betas
    for t, g in enumerate(grads_seq, 1):
        g = {k: a.astype(np.float64) for k, a in g.items()}
        norm = np.sqrt(sum(float((a * a).sum()) for a in g.values()))
        s = clip / norm if clip is not None and norm > clip else 1.0
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k] * s
            v[k] = b2 * v[k] + (1 - b2) * (g[k] * s) ** 2
            p[k] -= lr / (1 - b1**t) * m[k] / (np.sqrt(v[k]) / np.sqrt(1 - b2**t) + eps)
    return p


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-13), (np.float32, 2e-6)])
@pytest.mark.parametrize("clip", [None, 0.5])
@pytest.mark.parametrize("flat", [False, True])
def test_fused_adam_matches_the_written_out_update(dtype, rtol, clip, flat):
    rng = np.random.default_rng(1)
    shapes = {"a": (3,), "b": (4, 5), "c": (1,), "d": (2, 3, 2)}
    if flat:  # the live parameters are views into one buffer, end to end
        buf = rng.standard_normal(sum(int(np.prod(s)) for s in shapes.values())).astype(dtype)
        params, o = {}, 0
        for k, s in shapes.items():
            n = int(np.prod(s))
            params[k] = buf[o:o + n].reshape(s)
            o += n
    else:
        params = {k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
    start = {k: v.copy() for k, v in params.items()}
    opt = rk.Adam(params, lr=0.05, betas=(0.8, 0.95), eps=1e-7, clip_norm=clip)
    assert opt._flat is not None and (opt._flat.live is not None) == flat
    grads_seq = [{k: rng.standard_normal(s).astype(dtype) for k, s in shapes.items()}
                 for _ in range(4)]
    for g in grads_seq:
        opt.step(g)
    ref = _reference(start, grads_seq, 0.05, (0.8, 0.95), 1e-7, clip)
    for k in params:
        assert params[k].dtype == dtype
        np.testing.assert_allclose(params[k], ref[k], rtol=rtol, atol=rtol)
    assert opt.t == 4


def test_fused_and_per_parameter_paths_agree():
    """The same update on separate arrays (one flat copy per step) and on CuPy-like arrays
    (the per-parameter path) to float64 round-off."""
    rng = np.random.default_rng(2)
    params = {"w": rng.standard_normal((6, 4)), "b": rng.standard_normal(4)}
    other = {k: v.copy() for k, v in params.items()}
    fused, plain = rk.Adam(params, lr=0.01), rk.Adam(other, lr=0.01)
    plain._flat = None  # as for arrays the fused pass does not take
    plain.m, plain.v = plain._zeros(), plain._zeros()
    for _ in range(3):
        g = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        fused.step(g)
        plain.step(g)
    for k in params:
        np.testing.assert_allclose(params[k], other[k], rtol=1e-14)
        np.testing.assert_allclose(fused.m[k], plain.m[k], rtol=1e-14)


def test_fused_step_is_all_or_nothing():
    p = {"a": np.ones(2, np.float32), "b": np.ones(2, np.float32)}
    opt = rk.Adam(p, lr=1e39)  # the first step moves every entry by lr: past float32
    with pytest.raises(NonFiniteError, match="'a'"):
        opt.step({"a": np.full(2, 1.0, np.float32), "b": np.full(2, 1.0, np.float32)})
    np.testing.assert_array_equal(p["a"], 1)
    np.testing.assert_array_equal(p["b"], 1)
    assert opt.t == 0 and not opt.m["a"].any() and not opt.v["b"].any()
    with pytest.raises(NonFiniteError, match="gradient norm is nan"):
        opt.step({"a": np.array([np.nan, 0], np.float32), "b": np.zeros(2, np.float32)})
    assert opt.t == 0


def test_moments_are_views_of_one_buffer_and_state_round_trips():
    model = rk.Sequential(rk.LSTM(2, 3), rk.Dense(3, 1), backend="numpy", seed=0)
    opt = rk.Adam(model.parameters(), lr=0.1)
    x = np.ones((4, 2, 2), np.float32)
    opt.step(rk.value_and_grad(model, x, x[:, :, :1])[1])
    bases = {id(v.base) for v in opt.m.values()}
    assert len(bases) == 1
    state = {"t": opt.t, "m": {k: v.copy() for k, v in opt.m.items()},
             "v": {k: v.copy() for k, v in opt.v.items()}}
    fresh = rk.Adam(model.parameters(), lr=0.1)
    fresh.load_state_dict(state)
    assert fresh._flat.base_of(fresh.m) is not None  # still fused after the load
    for k in opt.m:
        np.testing.assert_array_equal(fresh.m[k], opt.m[k])


def test_a_replaced_moment_is_seen():
    """The buffer check is remembered per dict while it holds the same arrays: replacing
    one array (not a view of the buffer) turns the fused step off, putting a view back on."""
    params = {"w": np.ones((2, 3)), "b": np.ones(3)}
    opt = rk.Adam(params, lr=0.1)
    f = opt._flat
    assert f.base_of(opt.m) is not None
    view = opt.m["w"]
    opt.m["w"] = np.zeros((2, 3))
    assert f.base_of(opt.m) is None
    opt.m["w"] = view
    assert f.base_of(opt.m) is not None
    opt.step({"w": np.ones((2, 3)), "b": np.ones(3)})
    assert opt.t == 1
