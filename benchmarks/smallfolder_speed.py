"""Per-iteration training time of a small-image ImageFolder through the CIFAR recipe against the
built-in CIFAR-10 path, on the same pixels, same network, batch and threads (issue 21 item 1).

The folder goes through `build_data` (data.name=imagefolder: decoding, its cache, the on-device
sources). The built-in path is `build_data` with data.name=cifar10 fed the same decoded tensor as its
reader's output (the reader itself only unpickles the official batches, once, before the run). Then
one training iteration (next batch: index slice + on-device pad/crop/flip + mean; forward, backward,
SGD step) is timed for each, alternating step by step in one process; the medians are printed with their
ratio. Also printed: the first build (a cold decode unless the folder's cache exists) and three cached
starts.

python benchmarks/smallfolder_speed.py --folder /work/data/cifar10-jpeg --threads 1
python benchmarks/smallfolder_speed.py              # a generated folder of 2,000 random 32x32 JPEGs
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from resnetlab.config import load_config
from resnetlab.data import build_data, readers
from resnetlab.models import create_model
from resnetlab.train.step import make_sgd, make_train_step


def generated_folder(root: Path, per_class: int = 200, classes: int = 10) -> Path:
    g = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", per_class // 4)):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                small = g.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(small).resize((32, 32), Image.BILINEAR).save(root / split / f"c{c}" / f"{i}.jpg")
    return root


class Timed:
    """One path's network, optimizer and batch stream; `__call__` times one iteration (next batch,
    forward, backward, SGD step)."""

    def __init__(self, bundle, model_name: str) -> None:
        torch.manual_seed(0)
        model = create_model(model_name, num_classes=bundle.num_classes, in_channels=bundle.in_channels)
        model.to(memory_format=torch.channels_last).train()
        sgd = make_sgd(model, lr=0.1, momentum=0.9, weight_decay=1e-4)
        self.step = make_train_step(model, sgd, device=torch.device("cpu"))
        self.batches = bundle.train.batches(0)
        self.times: list[float] = []
        self(record=False)  # warm-up, not timed

    def __call__(self, record: bool = True) -> None:
        t0 = time.perf_counter()
        x, y = next(self.batches)
        loss, _ = self.step(x, y)
        float(loss)
        if record:
            self.times.append(time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", help="an ImageFolder of 32x32 images with train/ and test/ (default: generated)")
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=30, help="timed steps per path")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (data.workers)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    folder = Path(args.folder) if args.folder else generated_folder(Path(tmp.name) / "folder")
    common = [f"model.name={args.model}", f"train.batch_size={args.batch_size}", "train.device=cpu"]
    cfg = load_config(
        None,
        [
            *common,
            "data.name=imagefolder",
            f"data.dir={folder}",
            "data.eval_split=test",
            f"data.workers={args.workers}",
        ],
    )
    t0 = time.perf_counter()
    build_data(cfg, torch.device("cpu"))
    first = time.perf_counter() - t0
    cached = []
    for _ in range(3):  # scan + fingerprint (a stat per file) + cache read
        t0 = time.perf_counter()
        ours = build_data(cfg, torch.device("cpu"))
        cached.append(round(time.perf_counter() - t0, 2))

    # The built-in path from its reader's output on: the same pixels as CIFAR-10's tensors.
    raw = readers.RawDataset(
        readers.Split(ours.train.images.clone(), ours.train.labels.clone()),
        readers.Split(ours.test.images.clone(), ours.test.labels.clone()),
        list(ours.classes),
    )
    readers.READERS["cifar10"] = lambda name, root, download: raw
    builtin = build_data(load_config(None, [*common, "data.name=cifar10", "data.download=false"]), torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(ours.train.batch(3), builtin.train.batch(3)))

    # Alternate the paths step by step (ABBA), so a load change on the shared machine hits both alike.
    paths = {"folder": Timed(ours, args.model), "builtin": Timed(builtin, args.model)}
    for i in range(args.steps):
        for name in ("folder", "builtin")[:: 1 if i % 2 == 0 else -1]:
            paths[name]()
    timed = {name: path.times for name, path in paths.items()}
    med = {k: statistics.median(v) for k, v in timed.items()}
    print(
        json.dumps(
            {
                "folder": str(folder),
                "images": {"train": len(ours.train), "test": len(ours.test)},
                "model": args.model,
                "batch_size": args.batch_size,
                "threads": args.threads,
                "first_build_s": round(first, 2),
                "cached_start_s": cached,
                "median_step_ms": {k: round(1000 * v, 1) for k, v in med.items()},
                "min_max_step_ms": {k: [round(1000 * min(v), 1), round(1000 * max(v), 1)] for k, v in timed.items()},
                "folder_over_builtin": round(med["folder"] / med["builtin"], 3),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
