#!/usr/bin/env bash
# GPU figures of the ImageNet input (issue 15), from the repository root on a CUDA machine with a
# built .venv (`make install`) or a python3 that has torch, torchvision, PyYAML, tqdm and Pillow (the lent
# machine's). No internet needed: the JPEGs are generated here first. DALI is measured too where it
# imports (on the lent machine: scripts/carry_wheels.sh, then PYTHONPATH=/tmp/carried).
#
#   bash benchmarks/gpu_data.sh                   # everything below, about 4-5 minutes
#   WORKERS=14 DIR=/tmp/imagefolder OUT=... TEST_VIEWS=0 FEW_WORKERS=4 bash benchmarks/gpu_data.sh
#
# (a) `bench data`, training input, batch 256: our CPU path (decode + crop in WORKERS DataLoader
#     workers) vs our CUDA path (workers read + draw, nvjpeg batched decode + crop on the GPU) vs the
#     torchvision reference (ImageFolder + transforms.v2 + DataLoader, same workers), alternating.
# (b) end-to-end ResNet-50 training images/s, bf16, channels_last, batch 256: from the JPEG files
#     vs the same step on ready synthetic batches, alternating, once per decode path (DALI's threads
#     = WORKERS); then, with FEW_WORKERS set, the same with that many workers / DALI threads (where
#     CPU cores are scarce, as on a node of 8 GPUs).
# Each command is bounded by `timeout` (about 60 s of GPU work each when things go as planned).
set -uo pipefail
PY=${PYTHON_BIN:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
RESNETLAB="$PY -m resnetlab"
DIR=${DIR:-/tmp/imagefolder}
OUT=${OUT:-benchmarks/results/gpu_data}
WORKERS=${WORKERS:-$(($(nproc) - 2))}
mkdir -p "$OUT"

if [ ! -d "$DIR/train" ]; then
    # 6,000 + 1,000 JPEGs (~95 KB, ImageNet-like sizes), ~40 ms of one core each: ~20 s on 16 cores;
    # with the five odd files, which every path leaves out or decodes (the 2026-11-30 figures: without)
    "$PY" benchmarks/make_imagefolder.py "$DIR" --images 6000 --val-images 1000 --classes 100 \
        2>&1 | tee "$OUT/make_imagefolder.txt"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; uptime; } | tee "$OUT/machine.txt"

# (a) input alone: warm-up per round = 2 x workers + 2 batches (drains the prefetch queue), then
# 4 x workers timed batches (the workers' batches arrive in bursts of WORKERS); DALI too where installed
DECODE="workers device"
# DALI where it imports and one short run of it works (else the figures below go on without it)
if "$PY" -c "import nvidia.dali" 2>"$OUT/dali_check.log" &&
    timeout 120 $RESNETLAB bench data --data-dir "$DIR" --device cuda --workers 4 --batch-size 64 --views train \
        --decode dali --rounds 1 --no-reference >>"$OUT/dali_check.log" 2>&1; then
    DECODE="$DECODE dali"
fi
echo "decode paths: $DECODE"
timeout 240 $RESNETLAB bench data --data-dir "$DIR" --device cuda --workers "$WORKERS" --batch-size 256 \
    --views train --decode $DECODE --rounds 3 --json >"$OUT/bench_data_train.json" \
    2>"$OUT/bench_data_train.log"
echo "bench data (train view) exit $?"
"$PY" -c "import json,sys; from resnetlab.bench.data import format_data_result as f; print(f(json.load(open(sys.argv[1]))))" \
    "$OUT/bench_data_train.json" | tee "$OUT/bench_data_train.txt"

# test views, CPU path vs the reference (the CUDA path is the training input's)
[ "${TEST_VIEWS:-1}" = 1 ] && timeout 150 $RESNETLAB bench data --data-dir "$DIR" --device cuda --workers "$WORKERS" --batch-size 128 \
    --views center 10crop --rounds 2 2>"$OUT/bench_data_test.log" | tee "$OUT/bench_data_test.txt"

# (b) training from files vs synthetic batches; warm-up 30 steps >= the 2 x workers prefetch queue,
# fresh workers each round.
train_from_files() {  # decode workers name
    timeout 240 $RESNETLAB bench train --model resnet50 --batch-size 256 --device cuda --precision bf16 \
        --channels-last --data imagefolder --data-dir "$DIR" --workers "$2" --decode "$1" \
        --iters 20 --warmup 30 --rounds 2 2>"$OUT/bench_train_files_$3.log" | tee "$OUT/bench_train_files_$3.txt"
    echo "bench train (decode $1, $2 workers) exit ${PIPESTATUS[0]}"
}
for decode in $DECODE; do train_from_files "$decode" "$WORKERS" "$decode"; done
if [ -n "${FEW_WORKERS:-}" ]; then
    for decode in $DECODE; do
        [ "$decode" = device ] || train_from_files "$decode" "$FEW_WORKERS" "$decode-$FEW_WORKERS"
    done
fi
uptime | tee -a "$OUT/machine.txt"
