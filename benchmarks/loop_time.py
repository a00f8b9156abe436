"""Wall time of the real training loop (`resnetlab.train.run_training`) per 1,000 iterations.

The loop, evaluations and checkpoints included, on CIFAR-10-shaped data (50,000 random uint8 32x32
training images and 10,000 test images held on the device, through the same on-device augmentation
as CIFAR-10), so it runs anywhere without the data set. The steady rate is read from the run's
metrics.jsonl, between the first and the last evaluation, so start-up and torch.compile's compilation
stay out of it; the time to the first evaluation is reported separately.

python benchmarks/loop_time.py --model cifar_resnet56 --iters 3000 --eval-every 1000 --device cuda \
    --set train.precision=bf16 train.compile=true train.compile_mode=reduce-overhead
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from resnetlab.config import load_config
from resnetlab.data.bundle import DataBundle
from resnetlab.data.ondevice import DeviceEvalSource, DeviceTrainSource, Normalizer, image_stats
from resnetlab.train import loop

PAPER_ITERS = 64_000


def synthetic_cifar(cfg, device, *, rank=0, world_size=1, train_images=50_000, test_images=10_000) -> DataBundle:
    """CIFAR-10's shapes and sizes, random content, the real on-device sources."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (train_images + test_images, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (train_images + test_images,), generator=g)
    mean, _ = image_stats(x[:train_images])
    norm = Normalizer(mean, None, device)
    train = DeviceTrainSource(
        x[:train_images].to(device),
        y[:train_images].to(device),
        normalizer=norm,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        rank=rank,
        world_size=world_size,
    )
    test = DeviceEvalSource(
        x[train_images:].to(device), y[train_images:].to(device), normalizer=norm, batch_size=cfg.train.eval_batch_size
    )
    classes = [str(i) for i in range(10)]
    meta = {"dataset": "synthetic-cifar10", "classes": classes, "num_classes": 10, "in_channels": 3,
            "image_size": 32, "mean": mean, "std": None}  # fmt: skip
    return DataBundle(train, test, 10, 3, 32, classes, meta)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet56")
    p.add_argument("--iters", type=int, default=3000)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=128, help="the paper's 128")
    p.add_argument("--train-images", type=int, default=50_000)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")
    p.add_argument("--out", help="run folder (default: a temporary one)")
    p.add_argument("--result", help="also write the result JSON to this file")
    args = p.parse_args(argv)
    if args.iters < 2 * args.eval_every:
        p.error("--iters must be at least twice --eval-every (the rate is read between two evaluations)")

    cfg = load_config(
        "cifar10-resnet56",
        [
            f"model.name={args.model}",
            f"train.max_iters={args.iters}",
            f"train.eval_every={args.eval_every}",
            f"train.checkpoint_every={args.eval_every}",
            f"train.batch_size={args.batch_size}",
            f"train.device={args.device}",
            *args.set,
        ],
    )
    loop.build_data = lambda c, device, *, rank, world_size, **_: synthetic_cifar(
        c, device, rank=rank, world_size=world_size, train_images=args.train_images,
        test_images=min(10_000, args.train_images),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or Path(tmp) / "run")
        t0 = time.perf_counter()
        loop.run_training(cfg, out)
        wall = time.perf_counter() - t0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    per_1000 = 1000 * (last["time"] - first["time"]) / (last["iter"] - first["iter"])
    to_first = first["time"]
    result = {
        "model": args.model,
        "batch_size": args.batch_size,
        "iterations": last["iter"],
        "overrides": args.set,
        "device": str(torch.device(args.device)) if args.device != "auto" else "auto",
        "device_name": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "seconds_per_1000_iters": per_1000,  # steady state, evaluations (every --eval-every) included
        "seconds_to_first_eval": to_first,  # start-up, compilation and the first --eval-every iterations
        "wall_seconds": wall,
        "projected_paper_schedule_seconds": to_first + per_1000 * (PAPER_ITERS - first["iter"]) / 1000,
        "note": "steady rate between the first and last evaluation; projection = time to the first "
        "evaluation + the steady rate over the remaining iterations of 64k",
    }
    print(json.dumps(result, indent=2))
    if args.result:
        Path(args.result).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
