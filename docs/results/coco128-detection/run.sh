#!/bin/bash
# One epoch of COCO128 (every image once in training, every image once at evaluation), CPU, 1 thread.
cd /work/wt/packer
export OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src
SET=(data.name=coco data.dir=/work/data/coco128 'data.train=[train2017]' data.test=val2017 model.freeze_bn=false
     data.min_size=256 data.max_size=320 train.max_iters=64 train.eval_every=64 train.checkpoint_every=64
     optim.warmup_iters=16 'optim.milestones=[48]')
/usr/bin/time -v nice -n 10 /work/main/.venv/bin/python -m resnetlab detect train --preset shapes-resnet18-c4 \
    --out /tmp/coco128-run --quiet --set "${SET[@]}"
/usr/bin/time -v nice -n 10 /work/main/.venv/bin/python -m resnetlab detect evaluate \
    --checkpoint /tmp/coco128-run/final.pt --json --set data.dir=/work/data/coco128
