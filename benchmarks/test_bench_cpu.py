"""pytest-benchmark suites for the CPU: forward and forward+backward per cell, backend
and shape, with torch.nn.RNN/LSTM/GRU beside them when torch is installed.

Not part of the test run (pyproject's testpaths is tests/). Run from the repository root:

    pytest benchmarks/test_bench_cpu.py --benchmark-group-by=param:cell,param:shape
    pytest benchmarks/test_bench_cpu.py -k "lstm and medium" --benchmark-json out.json

Thread counts follow ``RNNKERN_BENCH_THREADS`` (default: all cores), set alike for Numba,
OpenBLAS and torch as ``rnnkern bench`` does.
"""

import importlib.util
import os

import pytest

from rnnkern import backends
from rnnkern.cli.bench import CELLS, PASSES, SHAPES, backend_runner, set_threads, torch_runner

HAS_TORCH = importlib.util.find_spec("torch") is not None
IMPLS = [b for b in backends.available() if b != "cupy"] + (["torch"] if HAS_TORCH else [])


@pytest.fixture(scope="session", autouse=True)
def _threads():
    set_threads(int(os.environ.get("RNNKERN_BENCH_THREADS", os.cpu_count() or 1)), HAS_TORCH)


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("cell", CELLS)
def test_cpu(benchmark, cell, shape, impl, pass_):
    s = SHAPES[shape]
    runners = torch_runner(cell, s) if impl == "torch" else backend_runner(impl, cell, s, None)
    fn = runners[pass_]
    fn()  # compile or cache load, outside the timing
    benchmark.group = f"{cell} {shape} {pass_}"
    benchmark(fn)
