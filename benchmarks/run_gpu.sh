#!/usr/bin/env bash
# The CuPy backend's device run: every check and benchmark a GPU machine is needed for,
# the most telling first, inside a fixed time budget.
#
# Usage, from anywhere:  OUT=/some/dir benchmarks/run_gpu.sh
#   OUT               output folder (default: gpu_results/ in the repository root)
#   RUN_GPU_BUDGET_S  seconds for the whole run (default 480); each step runs under its own
#                     `timeout`: its own limit, cut to what is left of the budget; a step
#                     that would get less than MIN_STEP_S is skipped
#   PYTHON            interpreter (default python3); the run imports rnnkern from this tree
#   RNNKERN_COMMIT    recorded in the results (default: `git rev-parse HEAD`, if it works)
#   DRY_RUN=1         replace every step's command by a stub that prints it (the plumbing
#                     alone: folder layout, order, limits; no GPU needed);
#                     DRY_RUN_HANG=NAME|all makes that stub hang instead, to see it killed
#
# Needs CuPy and a CUDA GPU; torch with CUDA for the cuDNN rows of the benchmark;
# compute-sanitizer for the last step; neither matplotlib nor tqdm (plot from the JSON
# elsewhere: python -m rnnkern.cli.bench_cuda plot chart.png OUT/*-bench-*.json).
#
# Writes, as each step ends: OUT/NN-NAME.txt (its stdout and stderr), OUT/steps.tsv (one
# line per step: number, name, limit, exit status or "skipped", seconds), the benchmark's
# OUT/NN-bench-GROUP.json (rewritten after every shape) and the tests' OUT/NN-tests.xml.
# Every step runs even when an earlier one fails; the exit status is the first failure's.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-gpu_results}"
BUDGET="${RUN_GPU_BUDGET_S:-480}"
PY="${PYTHON:-python3}"
DRY_RUN="${DRY_RUN:-0}"
DRY_RUN_HANG="${DRY_RUN_HANG:-}"
KILL_AFTER=5   # seconds between timeout's TERM and its KILL
MIN_STEP_S=5
mkdir -p "$OUT"
export PYTHONPATH=.
export RNNKERN_COMMIT="${RNNKERN_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
START=$SECONDS
status=0
n=0
printf 'step\tname\tlimit_s\trc\twall_s\n' > "$OUT/steps.tsv"

# step NAME LIMIT_S CMD...: run CMD under `timeout`, output to OUT/NN-NAME.txt; the text
# @TAG@ in CMD's arguments becomes OUT/NN-NAME (for the files a step writes itself).
step() {
    local name=$1 limit=$2
    shift 2
    n=$((n + 1))
    local tag
    tag=$(printf '%02d-%s' "$n" "$name")
    local left=$((BUDGET - (SECONDS - START) - KILL_AFTER))
    ((limit < left)) || limit=$left
    if ((limit < MIN_STEP_S)); then
        echo "skipped: ${left}s left of the ${BUDGET}s budget" > "$OUT/$tag.txt"
        printf '%s\t%s\t0\tskipped\t0\n' "$n" "$name" >> "$OUT/steps.tsv"
        return
    fi
    local args=("${@//@TAG@/$OUT/$tag}")
    if [[ "$DRY_RUN" == 1 ]]; then
        if [[ "$DRY_RUN_HANG" == "$name" || "$DRY_RUN_HANG" == all ]]; then
            args=(bash -c 'echo "DRY_RUN (hangs): $*"; exec sleep 100000' dry-run "${args[@]}")
        else
            args=(bash -c 'echo "DRY_RUN: $*"' dry-run "${args[@]}")
        fi
    fi
    local t0=$SECONDS rc
    echo "== $tag (limit ${limit}s): ${args[*]}" >&2
    timeout -k "$KILL_AFTER" "$limit" "${args[@]}" > "$OUT/$tag.txt" 2>&1
    rc=$?
    ((rc != 124 && rc != 137)) || echo "killed by timeout after ${limit}s" >> "$OUT/$tag.txt"
    printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$name" "$limit" "$rc" "$((SECONDS - t0))" \
        >> "$OUT/steps.tsv"
    ((rc == 0 || status != 0)) || status=$rc
}

CHECK=(-m rnnkern.backends.cupy_cuda.selfcheck)
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)

# 1. environment: device, driver, CUDA runtime, NVRTC, cuBLAS, CuPy, torch
step nvidia-smi 15 nvidia-smi
step env 40 "$PY" "${CHECK[@]}" env
# 2. compile and load every kernel instantiation (fills CuPy's kernel cache for the rest)
step compile 120 "$PY" "${CHECK[@]}" compile
# 3. parity of each variant in its own process: cells, activations, odd sizes, lengths,
#    no initial state, float32/float64, per-step gradients
for variant in cublas-steps fused-steps persistent; do
    step "parity-$variant" 60 "$PY" "${CHECK[@]}" parity --variant "$variant"
done
# 4. finite differences in float64 (and per-step, parity): the gradcheck suite, once
step gradcheck 90 "$PY" -m rnnkern gradcheck --backend cupy
# 5. one large shape: B256 H1024, every variant that takes it
step large 60 "$PY" "${CHECK[@]}" large
# 6. the GPU tests not already run above (parity and the gradcheck command are steps 3, 4)
step tests 120 "$PY" -m pytest tests/test_cupy.py tests/test_cuda_compile.py -q -rs \
    -p no:cacheprovider -k "not test_parity and not gradcheck_command" --junitxml @TAG@.xml
# 7. the benchmark beside cuDNN, one process and one JSON per shape group
for group in small-batch batch64 batch256 h64; do
    step "bench-$group" 90 "$PY" -m rnnkern bench --backend cupy --shapes "$group" \
        --repeat 5 --json @TAG@.json
done
# 8. shared-memory races of a tiny persistent run, if time is left
step racecheck 90 "$SANITIZER" --tool racecheck --print-limit 20 "$PY" "${CHECK[@]}" tiny-persistent

echo "done in $((SECONDS - START))s of ${BUDGET}s; steps: $OUT/steps.tsv" >&2
column -t -s $'\t' "$OUT/steps.tsv" >&2 2>/dev/null || cat "$OUT/steps.tsv" >&2
exit "$status"
