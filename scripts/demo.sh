#!/usr/bin/env bash
# `make demo`: ResNet-20 (the paper's CIFAR recipe, sec. 4.2) on Fashion-MNIST on the CPU, about 10
# minutes on 2 cores, no GPU, no internet needed when the Debian dataset package is installable.
# Prints the test error and writes the error curves (training dashed, test bold, as in fig. 6).
#
#   DEMO_OUT=runs/demo-fashion-mnist-resnet20 DEMO_ITERS=1000 DEMO_SEED=0 DEMO_THREADS=1 bash scripts/demo.sh
#   (the defaults)
#
# The model trains on all 60k training images (no validation split), so the error printed is the
# error on the 10k test images. The thread count is pinned (DEMO_THREADS, default 1): the CPU
# convolutions sum in another order with another thread count, which changes the result as a new
# seed would (seed 0, 1 vs 2 threads: mean training loss 1.549 vs 1.633 over the first 50
# iterations), so the figure printed at the end holds for the same setting only; with 1 thread two
# runs gave the same losses to the last bit. One thread is also the fast choice on a shared machine
# (0.25 s per step against 2.4 s with 2 threads, load 1-3; docs/train.md).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON_BIN:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${DEMO_OUT:-runs/demo-fashion-mnist-resnet20}
FIG=${DEMO_FIG:-$OUT/curves.png}
ITERS=${DEMO_ITERS:-1000}
SEED=${DEMO_SEED:-0}
THREADS=${DEMO_THREADS:-1}
export OMP_NUM_THREADS=$THREADS  # torch's intra-op threads (read when torch starts)
# The paper's schedule shape, shortened: lr 0.1, divided by 10 at 70% and 90% of the iterations.
M1=$((ITERS * 7 / 10))
M2=$((ITERS * 9 / 10))
EVAL=$((ITERS / 8))  # 8 points on the curve; each evaluation is the full 10k test set

# 1. Fashion-MNIST: the copy under data.dir, the Debian package's files, apt-get, else the download.
SYSTEM_DIR=/usr/share/datasets/fashion-mnist
DATA_DIR=$("$PY" -c 'from resnetlab.config import default_data_dir; print(default_data_dir())')
if ls "$DATA_DIR"/FashionMNIST/raw/train-images-idx3-ubyte* >/dev/null 2>&1 \
    || [ -f "$SYSTEM_DIR/train-images-idx3-ubyte.gz" ]; then
    echo "Fashion-MNIST: found"
elif command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || command -v sudo >/dev/null 2>&1; }; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo "sudo")
    echo "Fashion-MNIST: installing the Debian package dataset-fashion-mnist"
    install_pkg() { $SUDO apt-get install -y -q dataset-fashion-mnist; }
    # A fresh machine may have no package lists (or old ones naming files the mirror no longer has):
    # when the package is unknown or its install fails, refresh the lists once and try again.
    if ! { apt-cache show dataset-fashion-mnist >/dev/null 2>&1 && install_pkg; }; then
        echo "Fashion-MNIST: refreshing the package lists (apt-get update) and trying again"
        { $SUDO apt-get update -q && install_pkg; } \
            || echo "apt-get could not install it; training will try the download instead"
    fi
else
    echo "Fashion-MNIST: not installed; training will download it (needs internet)"
fi

# 2. Train. A finished demo is reused; an interrupted one continues (Ctrl-C saves a checkpoint).
RESUME=()
if [ -f "$OUT/final.pt" ]; then
    echo "reusing the finished run in $OUT (delete it to train again)"
else
    [ -f "$OUT/config.yaml" ] && RESUME=(--resume)
    echo "training ResNet-20 on Fashion-MNIST for $ITERS iterations (lr /10 at $M1 and $M2), seed $SEED," \
        "$THREADS thread(s) -> $OUT"
    start=$(date +%s)
    "$PY" -m resnetlab train --preset cifar10-resnet20 --out "$OUT" --device cpu "${RESUME[@]}" \
        --set data.name=fashion-mnist "train.max_iters=$ITERS" "optim.milestones=[$M1,$M2]" \
        "train.eval_every=$EVAL" "train.checkpoint_every=$((ITERS / 4))" "train.seed=$SEED"
    echo "wall time: $(($(date +%s) - start)) s"
fi

# 3. The result and the curves.
"$PY" - "$OUT" "$THREADS" <<'PY'
import json, sys
threads = sys.argv[2]
last = json.loads(open(f"{sys.argv[1]}/metrics.jsonl").read().splitlines()[-1])
split = last.get("eval_split", "test")  # all 60k images train, so the 10k test images are evaluated
print(f"ResNet-20 on Fashion-MNIST, {last['iter']} iterations: {split} error {last['test_error']:.2f}% "
      f"(training error {last['train_error']:.2f}% over the last evaluation interval)")
if last["iter"] == 1000:
    # Measured with this script, DEMO_THREADS=1 (README, docs/train.md), seeds 0, 1, 2 with this
    # version; 13.14 % with 2 threads (seed 0, an earlier version).
    print("measured with 1 thread: 12.16 % for seed 0 (the default; the same on every run on the CPU measured), "
          "12.16 / 12.25 / 12.93 % for seeds 0, 1, 2")
    if threads != "1":
        print(f"this run used {threads} threads: the convolutions sum in another order, which moves the result "
              "as another seed would (13.14 % seen with 2 threads): expect 12.1-13.2 %; DEMO_THREADS=1 repeats "
              "the measured setting")
PY
if "$PY" -m resnetlab analyze curves --help >/dev/null 2>&1; then
    "$PY" -m resnetlab analyze curves "$OUT" --out "$FIG"
    echo "curves: $FIG"
else
    echo "resnetlab analyze curves is not available in this checkout; no figure written"
fi
