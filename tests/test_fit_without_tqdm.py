"""fit imports tqdm only when it shows a bar (the GPU machines have no tqdm)."""

import builtins
import sys

import numpy as np
import pytest

import rnnkern as rk


@pytest.fixture
def no_tqdm(monkeypatch):
    """Make ``import tqdm`` fail, as where it is not installed."""
    real_import = builtins.__import__

    def blocked(name, *args, **kwargs):
        if name == "tqdm" or name.startswith("tqdm."):
            raise ModuleNotFoundError("No module named 'tqdm'", name="tqdm")
        return real_import(name, *args, **kwargs)

    for mod in [m for m in sys.modules if m == "tqdm" or m.startswith("tqdm.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setattr(builtins, "__import__", blocked)


def _train(progress):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 4, 2))
    model = rk.Sequential(rk.RNN(2, 3, dtype="float64", seed=1),
                          rk.Dense(3, 2, dtype="float64", seed=2), backend="numpy")
    opt = rk.Adam(model.parameters(), lr=1e-2)
    return rk.fit(model, opt, x, np.tanh(x), epochs=2, batch_size=2, progress=progress)


def test_fit_without_a_bar_needs_no_tqdm(no_tqdm):
    hist = _train(progress=False)
    assert len(hist["loss"]) == 2 and all(np.isfinite(hist["loss"]))
    assert "tqdm" not in sys.modules


def test_fit_with_a_bar_needs_tqdm(no_tqdm):
    with pytest.raises(ModuleNotFoundError, match="tqdm"):
        _train(progress=True)


def test_history_is_the_same_with_and_without_a_bar():
    assert _train(progress=True) == _train(progress=False)
