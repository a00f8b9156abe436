#!/usr/bin/env bash
# Fine-tuning (issue 21 item 4): CIFAR-10 (JPEG) ResNet-20 -> Imagenette at 32 px, against training from scratch.
set -u
cd /work/main
CKPT=/work/runs/cifar-jpeg-1k/resnet20-seed0/final.pt
COMMON=(--preset cifar10-resnet20 --device cpu --quiet --set data.name=imagefolder data.dir=/work/data/imagenette
        data.image_size=32 data.eval_split=val train.max_iters=300 "optim.milestones=[150,225]" train.eval_every=100
        train.checkpoint_every=100)
job() {  # kind seed
    local extra=(); [ "$1" = finetune ] && extra=(--init-from "$CKPT")
    OMP_NUM_THREADS=1 .venv/bin/resnetlab train --out /work/runs/ft/$1-seed$2 "${extra[@]}" "${COMMON[@]}" train.seed=$2 \
        > /work/runs/ft/$1-seed$2.log 2>&1
    echo "$1 seed $2: exit $?"
}
for s in 0 1 2; do job finetune $s & job scratch $s; wait; done
