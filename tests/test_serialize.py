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
