#!/usr/bin/env bash
# Run the CuPy backend's GPU tests and benchmarks on a machine with a CUDA GPU.
# Usage (from the repository root): OUT=/some/dir benchmarks/run_gpu.sh
# Needs: pip install -e '.[cuda,test,compare,plot]' (CuPy, pytest, torch with CUDA, matplotlib).
set -euo pipefail
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export PYTHONPATH=.
nvidia-smi | tee "$OUT/nvidia-smi.txt"
python3 -m pytest tests/test_cuda_compile.py tests/test_cupy.py -q -rs 2>&1 | tee "$OUT/test_cupy.txt"
python3 -m rnnkern gradcheck --backend cupy 2>&1 | tee "$OUT/gradcheck_cupy.txt"
python3 -m rnnkern bench --backend cupy --json "$OUT/bench_gpu.json" --plot "$OUT/bench_gpu.png" \
    2>&1 | tee "$OUT/bench_gpu.txt"
python3 -m pytest benchmarks/test_bench_cuda.py -q --benchmark-json "$OUT/pytest_bench_gpu.json" \
    2>&1 | tee "$OUT/pytest_bench_gpu.txt"
