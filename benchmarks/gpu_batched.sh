#!/usr/bin/env bash
# Issue 23 item 2 on a lent GPU: the batched-runs CUDA tests, then the benchmark that chooses between
# K runs batched, K runs as separate processes, and one run alone (benchmarks/batched_runs.py).
#
#   bash benchmarks/gpu_batched.sh [OUT]        # OUT: results folder (default $OUT or results/gpu_batched)
#
# Sized for about 8 minutes of an H200 (estimates: tests 1-2 min; each compiled configuration
# 20-60 s of compilation, the wide network compiling once per K). STAGES picks a subset:
#   STAGES="tests r56 r20 eager" (default all), ITERS (timed iterations, default 100).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-benchmarks/results/gpu_batched}}
STAGES=${STAGES:-tests r56 r20 eager}
ITERS=${ITERS:-100}
PY=${PYTHON:-python}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
fast=(--precision bf16 --channels-last --compile --compile-mode reduce-overhead --iters "$ITERS" --warmup 15)

for stage in $STAGES; do
  case $stage in
    tests)  # CUDA batched == CUDA separate (fp32, TF32 off), and the compiled bf16 path end to end
      $PY -m pytest -q -m cuda tests/train/test_batched.py tests/models/test_stacked.py -p no:cacheprovider \
        2>&1 | tee "$OUT/tests.log" ;;
    r56)  # ResNet-56, the fast settings: one run alone, K batched, K processes
      $PY benchmarks/batched_runs.py --device cuda --model cifar_resnet56 "${fast[@]}" --ks 1 --modes sequential \
        --json "$OUT/r56-one.json" 2>&1 | tee "$OUT/r56-one.log"
      $PY benchmarks/batched_runs.py --device cuda --model cifar_resnet56 "${fast[@]}" --ks 2 4 8 --modes batched \
        --json "$OUT/r56-batched.json" 2>&1 | tee "$OUT/r56-batched.log"
      $PY benchmarks/batched_runs.py --device cuda --model cifar_resnet56 "${fast[@]}" --ks 4 --modes processes \
        --json "$OUT/r56-processes.json" 2>&1 | tee "$OUT/r56-processes.log" ;;
    r20)  # ResNet-20 and plain-20 twins (fig. 6's pairs), batched
      $PY benchmarks/batched_runs.py --device cuda --model cifar_resnet20 --plain-twins "${fast[@]}" --ks 1 4 8 16 \
        --modes batched --json "$OUT/r20-twins-batched.json" 2>&1 | tee "$OUT/r20-twins-batched.log" ;;
    eager)  # no compilation: does batching also pay without CUDA graphs?
      $PY benchmarks/batched_runs.py --device cuda --model cifar_resnet56 --channels-last --precision bf16 \
        --iters 50 --warmup 10 --ks 1 4 --modes batched sequential \
        --json "$OUT/r56-eager.json" 2>&1 | tee "$OUT/r56-eager.log" ;;
    *) echo "unknown stage $stage (tests, r56, r20, eager)" >&2; exit 2 ;;
  esac
done
