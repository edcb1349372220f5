#!/usr/bin/env bash
# One command for a GPU session: the CuPy backend's tests, gradcheck and benchmarks.
# Usage (from the repository root): OUT=/some/dir benchmarks/run_gpu.sh
# Needs: pip install -e '.[cuda,test,compare,plot]' (CuPy, pytest, torch with CUDA, matplotlib).
# Every step runs even when an earlier one fails; the exit status is that of the first failure.
set -uo pipefail
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export PYTHONPATH=.
status=0
step() { "$@" || { rc=$?; [ "$status" -ne 0 ] || status=$rc; }; }
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import cupy; cupy.show_config()" > "$OUT/cupy-config.txt" 2>&1
step python3 -m pytest tests/test_cuda_compile.py tests/test_cuda_indexing.py tests/test_cupy.py \
    -q -rs --junitxml "$OUT/test_cupy.xml" > "$OUT/test_cupy.txt" 2>&1
step python3 -m rnnkern gradcheck --backend cupy > "$OUT/gradcheck_cupy.txt" 2>&1
step python3 -m rnnkern bench --backend cupy --json "$OUT/bench_gpu.json" \
    --plot "$OUT/bench_gpu.png" > "$OUT/bench_gpu.txt" 2>&1
step python3 -m pytest benchmarks/test_bench_cuda.py -q \
    --benchmark-json "$OUT/pytest_bench_gpu.json" > "$OUT/pytest_bench_gpu.txt" 2>&1
tail -n 3 "$OUT"/test_cupy.txt "$OUT"/gradcheck_cupy.txt
exit "$status"
