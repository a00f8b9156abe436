#!/usr/bin/env bash
# CPU figures of benchmarks/README.md: CIFAR ResNet-20 training, batch 128, our pipeline vs the reference
# (torchvision transforms in a DataLoader), all in one process per command, rounds alternating A/B.
# Usage: bash benchmarks/cpu_cifar.sh [OUT_DIR]   (about 15-30 minutes on 2 cores; more on a busy machine)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-benchmarks/results/cpu_cifar}
mkdir -p "$OUT"
date -u +%FT%TZ | tee "$OUT/date.txt"
grep -m1 "model name" /proc/cpuinfo | tee "$OUT/cpu.txt"
nproc | tee -a "$OUT/cpu.txt"

# 1. Settings sweep: channels_last on/off x 1/2 threads, and the reference at 1 and 2 threads,
#    interleaved in one process (ratios are to ref:1).
$PY benchmarks/cpu_variants.py --model cifar_resnet20 --batch-size 128 --rounds 3 --iters 10 --warmup 3 \
    --variants ours:cl:1 ours:nchw:1 ours:cl:2 ours:nchw:2 ref:1 ref:2 --json "$OUT/variants.json" \
    | tee "$OUT/variants.txt"

# 2. The chosen CPU setting through the CLI against the reference at the same thread count: images/s,
#    spread, peak RSS, and the data / optimizer / outside-forward+backward breakdown.
$PY -m resnetlab bench train --model cifar_resnet20 --batch-size 128 --device cpu --channels-last --threads 1 \
    --iters 8 --warmup 2 --rounds 8 --vs-reference --json > "$OUT/bench_train.json"
$PY - "$OUT/bench_train.json" <<'PYEOF' | tee "$OUT/bench_train.txt"
import json, sys
from resnetlab.cli.bench import format_result
print(format_result(json.load(open(sys.argv[1]))))
PYEOF

# 3. Where the time goes (torch.profiler), ours and the reference, 1 thread.
$PY benchmarks/profile_step.py --model cifar_resnet20 --batch-size 128 --channels-last --threads 1 --steps 5 \
    | tee "$OUT/profile_ours.txt"
$PY benchmarks/profile_step.py --model cifar_resnet20 --batch-size 128 --reference --threads 1 --steps 5 \
    | tee "$OUT/profile_reference.txt"
