"""DALI's iterator at the ends of epochs, measured inside ResNet-50 training: with epochs (the
iterator bound to its reader: it stops at each epoch's end and is reset) against endless (the reader
wraps around inside the pipeline and the iterator never stops), each against the same step on a
ready synthetic batch. Alternating rounds; each round a fresh DALI pipeline, WARMUP untimed steps,
then STEPS timed steps (several epochs of a small tree, where the ends of epochs are frequent).

    python benchmarks/dali_epochs.py DIR [--device cuda] [--workers 14] [--batch-size 256] [--rounds 2]

DIR from make_imagefolder.py. Prints, per variant, images/s
by total time, the median and the longest step, and the ratio to the synthetic batches.

Measured on an NVIDIA H200 (16 CPU cores, 6,000 images = 23 batches of 256 per epoch, 3 rounds of 60
steps; results/gpu_data/2026-11-30-h200-dali/dali_epochs.txt): epochs 4,364 images/s (0.92x synthetic),
endless 4,404 (0.93x), medians 57.8 ms both against 53.9 ms: the ends of epochs cost nothing measurable;
DALI's own kernels on the training GPU cost ~4 ms a step. `data.loader=dali` runs endless (simpler).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import resnetlab.data.dali as dali
from resnetlab.bench.data import split_samples
from resnetlab.bench.pipelines import ModelSetup, imagenet_train_source
from resnetlab.data.images import TrainRecipe
from resnetlab.data.ondevice import Normalizer
from resnetlab.train.step import make_sgd, make_train_step


def with_epochs():
    """import_dali as the source sees it, with the iterator bound to the reader (stops at epoch ends)."""
    from nvidia.dali.plugin.pytorch import LastBatchPolicy

    fn, types, pipeline_def, iterator = _import_dali()

    class Bound:
        def __init__(self, pipes, names):
            self.it = iterator(
                pipes, names, reader_name="Reader", last_batch_policy=LastBatchPolicy.DROP, auto_reset=True
            )

        def __next__(self):
            try:
                return next(self.it)
            except StopIteration:  # an epoch's end: auto_reset has started the next one
                return next(self.it)

    return fn, types, pipeline_def, Bound


_import_dali = dali.import_dali


def source(variant: str, samples, recipe, device):
    dali.import_dali = with_epochs if variant == "epochs" else _import_dali
    try:
        normalizer = Normalizer(torch.full((3, 224, 224), 0.45), None, device)
        return dali.DaliTrainSource(samples, recipe, normalizer=normalizer, device=device)
    finally:
        dali.import_dali = _import_dali


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=14)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--steps", type=int, default=60)
    args = p.parse_args()
    device = torch.device(args.device)
    setup = ModelSetup(
        args.model, args.batch_size, device, precision="bf16" if device.type == "cuda" else "fp32", channels_last=True
    )
    model, call = setup.prepare(train=True)
    step = make_train_step(
        call,
        make_sgd(model, lr=0.1, momentum=0.9, weight_decay=1e-4),
        device=device,
        precision=setup.precision,
        channels_last=True,
    )
    samples = split_samples(args.dir, "train", args.batch_size)
    recipe = TrainRecipe(args.batch_size, 0, 224, (256, 480), lighting=0.1, workers=args.workers, skip_corrupt=True)
    print(
        f"{args.dir}: {len(samples)} images, {len(samples) // args.batch_size} batches per epoch; {args.model}, "
        f"batch {args.batch_size}, {args.workers} DALI threads, {device}; {args.warmup} + {args.steps} steps a round"
    )
    times: dict[str, list[float]] = {"epochs": [], "endless": [], "synthetic": []}
    for r in range(args.rounds):
        order = list(times) if r % 2 == 0 else list(reversed(times))
        for variant in order:
            if variant == "synthetic":
                stream = imagenet_train_source(device, args.batch_size).batches(0)
            else:
                stream = source(variant, samples, recipe, device).batches(0)
            for _ in range(args.warmup):
                step(*next(stream))
            sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
            sync()
            for _ in range(args.steps):
                t = time.perf_counter()
                step(*next(stream))
                sync()
                times[variant].append(time.perf_counter() - t)
            stream.close()
            rate = args.batch_size * args.steps / sum(times[variant][-args.steps :])
            print(f"round {r + 1}/{args.rounds} {variant}: {rate:.1f} images/s", flush=True)
    base = args.batch_size * len(times["synthetic"]) / sum(times["synthetic"])
    print(f"\n{'variant':10} {'images/s':>9} {'median ms':>10} {'max ms':>8} {'/ synthetic':>12}")
    for variant, ts in times.items():
        rate = args.batch_size * len(ts) / sum(ts)
        print(f"{variant:10} {rate:9.1f} {statistics.median(ts) * 1e3:10.1f} {max(ts) * 1e3:8.1f} {rate / base:11.2f}x")


if __name__ == "__main__":
    main()
