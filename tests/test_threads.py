"""One thread pool in charge: NumPy's BLAS is held to one thread while a model on the
numba backend runs (``rnnkern._threads``), and given back afterwards."""

import numpy as np
import pytest

import rnnkern as rk
from rnnkern import _threads


def _blas_threads():
    return [c.get_num_threads() for c in _threads._numpy_blas()]


@pytest.fixture
def two_threads():
    libs = _threads._numpy_blas()
    if not libs:
        pytest.skip("NumPy's BLAS is not one threadpoolctl controls")
    before = _blas_threads()
    for c in libs:
        c.set_num_threads(2)
    yield
    for c, n in zip(libs, before):
        c.set_num_threads(n)


def _model(backend):
    return rk.Sequential(rk.Dense(3, 64, "tanh"), rk.GRU(64, 64), rk.Dense(64, 3),
                         backend=backend, seed=0)


def _seen_by_loss(seen):
    def loss(y, target, mask):
        seen.append(_blas_threads())
        return rk.losses.mse(y, target, mask)
    return loss


@pytest.mark.parametrize("backend,inside", [("numba", 1), ("numpy", 2)])
def test_fit_and_value_and_grad_hold_numpy_blas_on_numba_only(two_threads, backend, inside):
    model = _model(backend)
    x = np.random.default_rng(0).standard_normal((50, 32, 3)).astype(np.float32)
    seen = []
    rk.fit(model, rk.Adam(model.parameters()), x, x, epochs=1, batch_size=16,
           progress=False, loss=_seen_by_loss(seen))
    rk.value_and_grad(model, x, x, loss=_seen_by_loss(seen))
    assert seen and all(s == [inside] * len(s) for s in seen)
    assert _blas_threads() == [2] * len(seen[0])  # given back


def test_calls_hold_only_where_blas_would_thread(two_threads):
    model = _model("numba")
    big = np.zeros((50, 32, 3), np.float32)
    seen = []
    real = model.layers[0]._forward

    def spy(*args, **kwargs):
        seen.append(_blas_threads())
        return real(*args, **kwargs)

    model.layers[0]._forward = spy
    model(big)
    model(big[:1, :1])  # 64 x 64 multiply-adds: OpenBLAS runs one thread by itself
    rk.generate(model.__class__(*model.layers), big[:2], 3)
    n = len(_threads._numpy_blas())
    assert seen[0] == [1] * n and seen[1] == [2] * n and seen[2] == [1] * n
    assert _blas_threads() == [2] * n


def test_nested_holds_restore_once(two_threads):
    model = _model("numba")
    n = len(_threads._numpy_blas())
    with _threads.held(model):
        with _threads.held(model):
            assert _blas_threads() == [1] * n
        assert _blas_threads() == [1] * n
    assert _blas_threads() == [2] * n
    with pytest.raises(RuntimeError), _threads.held(model):
        raise RuntimeError
    assert _blas_threads() == [2] * n and _threads._depth == 0


def test_scipy_blas_is_left_to_the_kernels():
    import scipy

    root = scipy.__file__.rsplit("/", 2)[0]
    assert not any(c.filepath.startswith(f"{root}/scipy.libs") for c in _threads._numpy_blas())
