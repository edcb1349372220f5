"""pytest-benchmark suite of the CuPy backend (skipped without a GPU).

Wall-clock timings of one forward, or forward + backward, per kernel variant, with the
device synchronised inside the timed function. The torch comparison lives in
``rnnkern bench --backend cupy`` (rnnkern/cli/bench_cuda.py), which is what
``benchmarks/run_gpu.sh`` runs; this suite is for comparing variants by hand.

Each test is one (shape, cell, variant, pass): set-up and a synchronised first run happen
before timing, so an error (a CUDA fault is reported asynchronously) fails the test that
caused it and the next test runs; a shape a variant cannot take (ValueError) is a skip.
pytest-benchmark writes its JSON once the whole pytest run ends: to keep what finished when a
run may be killed, run one process per shape (``-k T256-B8``).
"""

import pytest

from rnnkern.backends import cupy_cuda
from rnnkern.backends.cupy_cuda import VARIANTS

GPU = cupy_cuda.is_available()  # the registry's own test for listing "cupy"
pytestmark = pytest.mark.skipif(not GPU, reason="no CUDA GPU answers (or CuPy is not installed)")

SHAPES = [(256, 8, 256, 256), (256, 64, 256, 256), (256, 256, 1024, 1024), (1000, 16, 128, 128)]


@pytest.mark.parametrize("pass_", ("forward", "forward+backward"))
@pytest.mark.parametrize("variant", tuple(VARIANTS))
@pytest.mark.parametrize("cell", ("rnn", "lstm", "gru"))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-I{}-H{}".format(*s))
def test_cupy(benchmark, cell, variant, pass_, shape):
    import cupy
    import numpy as np

    from rnnkern.cli.bench_cuda import Shape, cupy_runner

    def synced():
        fn()
        cupy.cuda.Device().synchronize()

    try:
        fn = cupy_runner(cell, Shape(*shape), variant, None, np.random.default_rng(0))[pass_]
        synced()
    except ValueError as e:  # persistent on a shape whose R does not fit on chip
        pytest.skip(str(e))

    benchmark.group = f"{cell} {pass_} T{shape[0]} B{shape[1]} H{shape[3]}"
    benchmark.pedantic(synced, rounds=10, warmup_rounds=2)
