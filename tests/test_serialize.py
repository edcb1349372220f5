"""save/load: bit-identical round trips, metadata, clear errors for foreign files."""

import json
import zipfile

import numpy as np
import pytest

import rnnkern as rk


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_bit_identical(tmp_path, backend, dtype):
    m = rk.Sequential(rk.Dense(2, 3, "relu"), rk.LSTM(3, 4), rk.GRU(4, 2), rk.RNN(2, 2, "identity"),
                      rk.Dense(2, 2, "sigmoid"), backend=backend, dtype=dtype, seed=0)
    path = tmp_path / "m.npz"
    rk.save(m, path)
    loaded = rk.load(path, backend=backend)
    assert loaded.spec() == m.spec() and loaded.dtype == m.dtype
    for k, v in m.parameters().items():
        np.testing.assert_array_equal(loaded.parameters()[k], v)
        assert loaded.parameters()[k].dtype == v.dtype
    x = np.random.default_rng(0).standard_normal((5, 3, 2)).astype(dtype)
    np.testing.assert_array_equal(loaded(x), m(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary left behind


def test_single_layer_and_metadata(tmp_path):
    layer = rk.GRU(2, 3, backend="numpy", seed=1)
    rk.save(layer, tmp_path / "g.npz")
    with np.load(tmp_path / "g.npz", allow_pickle=False) as z:
        meta = json.loads(str(z["__rnnkern__"]))
    assert meta["format"] == "rnnkern-model" and meta["version"] == 1
    assert meta["gate_order"] == {"lstm": "i,f,g,o", "gru": "r,z,n"}
    assert meta["dtype"] == "float32" and meta["model"]["type"] == "GRU"
    loaded = rk.load(tmp_path / "g.npz", backend="numpy")
    np.testing.assert_array_equal(loaded.parameters()["b_hn"], layer.parameters()["b_hn"])


def test_corrupt_and_foreign_files(tmp_path):
    m = rk.Sequential(rk.Dense(1, 2), rk.RNN(2, 1), backend="numpy", seed=0)
    good = tmp_path / "m.npz"
    rk.save(m, good)
    truncated = tmp_path / "t.npz"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable"):
        rk.load(truncated)
    text = tmp_path / "x.npz"
    text.write_text("hello")
    with pytest.raises(ValueError, match="not a readable"):
        rk.load(text)
    foreign = tmp_path / "f.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(ValueError, match="not an rnnkern model"):
        rk.load(foreign)
    newer = tmp_path / "n.npz"
    with np.load(good) as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["__rnnkern__"]))
    np.savez(newer, **{**arrays, "__rnnkern__": np.array(json.dumps({**meta, "version": 99}))})
    with pytest.raises(ValueError, match="version"):
        rk.load(newer)
    wrong = tmp_path / "w.npz"
    np.savez(wrong, **{**arrays, "param/1.R": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match="parameters do not match"):
        rk.load(wrong)
    assert zipfile.is_zipfile(good)


def _task(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 10, 2))
    return x, np.roll(x, -1, axis=0)


@pytest.mark.parametrize("make_opt", [
    lambda p: rk.Adam(p, lr=3e-3, betas=(0.8, 0.99), eps=1e-7, clip_norm=1.0),
    lambda p: rk.SGD(p, lr=0.05, momentum=0.9),
    lambda p: rk.SGD(p, lr=0.05)], ids=["adam", "sgd-momentum", "sgd"])
def test_save_with_optimizer_resumes_exactly(tmp_path, backend, make_opt):
    """save(optimizer=) -> load(with_optimizer=True) restores the settings, the step count
    and the buffers bit for bit, and training on from the file equals training on without
    it."""
    x, t = _task()

    def model():
        return rk.Sequential(rk.Dense(2, 4, "tanh"), rk.LSTM(4, 5), rk.Dense(5, 2),
                             backend=backend, dtype="float64", seed=2)

    m = model()
    opt = make_opt(m.parameters())
    rk.fit(m, opt, x, t, epochs=2, batch_size=4, seed=1, progress=False)
    rk.save(m, tmp_path / "m.npz", optimizer=opt)
    m2, opt2 = rk.load(tmp_path / "m.npz", backend=backend, with_optimizer=True)
    assert type(opt2) is type(opt) and opt2.hyperparameters() == opt.hyperparameters()
    assert opt2.t == opt.t == 6
    for key, bufs in opt.state_dict().items():
        if key != "t":
            for k, v in bufs.items():
                np.testing.assert_array_equal(opt2.state_dict()[key][k], v)
    assert all(opt2.params[k] is v for k, v in m2.parameters().items())
    h1 = rk.fit(m, opt, x, t, epochs=2, batch_size=4, seed=2, progress=False)
    h2 = rk.fit(m2, opt2, x, t, epochs=2, batch_size=4, seed=2, progress=False)
    assert h1 == h2
    for k, v in m.parameters().items():
        np.testing.assert_array_equal(m2.parameters()[k], v)


def test_optimizer_files_and_errors(tmp_path):
    x, t = _task()
    m = rk.Sequential(rk.GRU(2, 3), rk.Dense(3, 2), backend="numpy", seed=0)
    rk.save(m, tmp_path / "plain.npz")
    assert isinstance(rk.load(tmp_path / "plain.npz"), rk.Sequential)  # as before
    with pytest.raises(ValueError, match="saved without an optimiser.*optimizer=opt"):
        rk.load(tmp_path / "plain.npz", with_optimizer=True)
    with pytest.raises(TypeError, match="with_optimizer: expected True or False"):
        rk.load(tmp_path / "plain.npz", with_optimizer="yes")
    other = rk.Sequential(rk.GRU(2, 3), rk.Dense(3, 2), backend="numpy", seed=0)
    with pytest.raises(ValueError, match="optimizer: it updates other arrays"):
        rk.save(m, tmp_path / "m.npz", optimizer=rk.Adam(other.parameters()))
    with pytest.raises(TypeError, match="optimizer: expected an rnnkern optimiser"):
        rk.save(m, tmp_path / "m.npz", optimizer="adam")
    # the optimiser of a fit checkpoint loads too
    opt = rk.Adam(m.parameters())
    rk.fit(m, opt, x.astype(np.float32), t.astype(np.float32), epochs=1, batch_size=5,
           checkpoint=tmp_path / "ck.npz", progress=False)
    m2, opt2 = rk.load(tmp_path / "ck.npz", with_optimizer=True)
    assert opt2.t == opt.t == 2
    np.testing.assert_array_equal(opt2.m["1.W"], opt.m["1.W"])
    with np.load(tmp_path / "ck.npz") as z:
        assert "opt/m/1.W" in z.files
