#!/usr/bin/env bash
# GPU figures of the ImageNet input (issue 15), from the repository root on a CUDA machine with a
# built .venv (`make install`). No internet needed: the JPEGs are generated here first.
#
#   bash benchmarks/gpu_data.sh                   # everything below, about 3-4 minutes
#   WORKERS=14 DIR=/tmp/imagefolder OUT=... bash benchmarks/gpu_data.sh
#
# (a) `bench data`, training input, batch 256: our CPU path (decode + crop in WORKERS DataLoader
#     workers) vs our CUDA path (workers read + draw, nvjpeg batched decode + crop on the GPU) vs the
#     torchvision reference (ImageFolder + transforms.v2 + DataLoader, same workers), alternating.
# (b) end-to-end ResNet-50 training images/s, bf16, channels_last, batch 256: from the JPEG files
#     vs the same step on ready synthetic batches, alternating, once per decode path.
# Each command is bounded by `timeout` (about 60 s of GPU work each when things go as planned).
set -uo pipefail
BIN=${BIN:-.venv/bin}
DIR=${DIR:-/tmp/imagefolder}
OUT=${OUT:-benchmarks/results/gpu_data}
WORKERS=${WORKERS:-$(($(nproc) - 2))}
mkdir -p "$OUT"

if [ ! -d "$DIR/train" ]; then
    # 6,000 + 1,000 JPEGs (~95 KB, ImageNet-like sizes), ~40 ms of one core each: ~20 s on 16 cores
    "$BIN/python" benchmarks/make_imagefolder.py "$DIR" --images 6000 --val-images 1000 --classes 100 \
        2>&1 | tee "$OUT/make_imagefolder.txt"
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; uptime; } | tee "$OUT/machine.txt"

# (a) input alone: warm-up per round = 2 x workers + 2 batches (drains the prefetch queue), then
# 4 x workers timed batches (the workers' batches arrive in bursts of WORKERS); DALI too where installed
DECODE="workers device"
"$BIN/python" -c "import nvidia.dali" 2>/dev/null && DECODE="$DECODE dali"
timeout 240 "$BIN/resnetlab" bench data --data-dir "$DIR" --device cuda --workers "$WORKERS" --batch-size 256 \
    --views train --decode $DECODE --rounds 3 --json >"$OUT/bench_data_train.json" \
    2>"$OUT/bench_data_train.log"
echo "bench data (train view) exit $?"
"$BIN/python" -c "import json,sys; from resnetlab.bench.data import format_data_result as f; print(f(json.load(open(sys.argv[1]))))" \
    "$OUT/bench_data_train.json" | tee "$OUT/bench_data_train.txt"

# test views, CPU path vs the reference (the CUDA path is the training input's)
timeout 150 "$BIN/resnetlab" bench data --data-dir "$DIR" --device cuda --workers "$WORKERS" --batch-size 128 \
    --views center 10crop --rounds 2 2>"$OUT/bench_data_test.log" | tee "$OUT/bench_data_test.txt"

# (b) training from files vs synthetic batches; warm-up 30 steps >= the 2 x workers prefetch queue,
# fresh workers each round.
for decode in workers device; do
    timeout 240 "$BIN/resnetlab" bench train --model resnet50 --batch-size 256 --device cuda --precision bf16 \
        --channels-last --data imagefolder --data-dir "$DIR" --workers "$WORKERS" --decode "$decode" \
        --iters 20 --warmup 30 --rounds 2 2>"$OUT/bench_train_files_$decode.log" | tee "$OUT/bench_train_files_$decode.txt"
    echo "bench train (decode $decode) exit $?"
done
uptime | tee -a "$OUT/machine.txt"
