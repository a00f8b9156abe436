#!/usr/bin/env bash
# Imagenette through the paper's ImageNet recipe scaled to half size (issue 21 item 4): ResNet-18,
# scale augmentation [128, 240], random 112 crop, flip, PCA lighting, per-pixel mean; then its val error
# under the center, 10-crop and multi-scale protocols.
set -u
cd /work/main
SEED=${SEED:-0}
OUT=/work/runs/inet/r18-seed$SEED
OMP_NUM_THREADS=1 .venv/bin/resnetlab train --preset imagenet-resnet18 --out $OUT --device cpu --quiet --set \
    data.name=imagefolder data.dir=/work/data/imagenette data.crop=112 data.scale_min=128 data.scale_max=240 \
    data.workers=1 data.mean_samples=2000 train.batch_size=64 train.eval_batch_size=100 train.max_iters=450 \
    optim.schedule=multistep "optim.milestones=[300,400]" train.eval_every=150 train.checkpoint_every=150 \
    train.seed=$SEED > $OUT.log 2>&1 || [ -f $OUT/final.pt ] || exit 1
# every protocol's sizes scale with the training crop (evaluate/protocols.py): 10-crop from shorter side 128,
# multi-scale over the paper's {224, 256, 384, 480, 640} x 112/224
for p in center 10crop multiscale; do
    OMP_NUM_THREADS=1 .venv/bin/resnetlab evaluate --checkpoint $OUT/final.pt --protocol $p --device cpu \
        --workers 1 --quiet --json > $OUT-$p.json 2> $OUT-$p.err
    echo "$p: exit $?"
done
