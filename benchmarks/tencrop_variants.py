"""Where the 10-crop input's normalisation runs, measured: in the training process on the uint8 views
the workers ship (ours), or in the workers straight into a shared-memory float batch (no copy into
shared memory, no fresh batch in the training process), against the reference (torchvision TenCrop
in the workers). Alternating rounds, 2 workers, batch 64; images/s over 10 timed batches per round.

    python benchmarks/tencrop_variants.py DIR [--rounds 3]     # DIR from make_imagefolder.py
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from resnetlab.bench.data import CROP, DataSpec, _Cycle, reference, split_samples
from resnetlab.data.ondevice import Normalizer
from resnetlab.evaluate.run import _collate, _ProtocolViews

BATCH, WORKERS = 64, 2
NORM = Normalizer(torch.full((3, CROP, CROP), 0.45), None, torch.device("cpu"))


def shared_float_collate(items):
    """In the worker: the normalised views of the batch, written straight into shared memory."""
    kept = [it for it in items if it[0] is not None]
    out = torch.empty((len(kept), *kept[0][0].shape), dtype=torch.float32).share_memory_()
    for into, it in zip(out, kept):
        torch.addcmul(NORM.shift, it[0], NORM.scale, out=into)
    return out, torch.tensor([it[1] for it in kept]), []


def ours(samples, in_workers: bool):
    loader = DataLoader(
        _ProtocolViews(samples, "10crop", CROP),
        batch_size=BATCH,
        num_workers=WORKERS,
        collate_fn=shared_float_collate if in_workers else _collate,
        sampler=_Cycle(len(samples), False),
        drop_last=True,
    )
    while True:
        for views, _, _ in loader:
            yield views.flatten(0, 1) if in_workers else NORM(views.flatten(0, 1))


def images_per_s(stream, iters: int = 10, warmup: int = 2 * WORKERS + 2) -> float:
    for _ in range(warmup):
        next(stream)
    start = time.perf_counter()
    for _ in range(iters):
        next(stream)
    rate = BATCH * iters / (time.perf_counter() - start)
    stream.close()
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    samples = split_samples(args.dir, "val", BATCH)
    spec = DataSpec(root=args.dir, views=("10crop",), batch_size=BATCH, workers=WORKERS)
    makers = {
        "ours": lambda: ours(samples, False),
        "in-workers-shm": lambda: ours(samples, True),
        "reference": lambda: reference("10crop", spec)(),
    }
    for r in range(args.rounds):
        load = os.getloadavg()[0]
        names = list(makers) if r % 2 == 0 else list(makers)[::-1]
        rates = {name: images_per_s(makers[name]()) for name in names}
        ref = rates["reference"]
        print(
            f"round {r + 1} (load {load:.1f}): "
            + ", ".join(f"{n} {rates[n]:.0f}" for n in makers)
            + f" images/s; ours/ref {rates['ours'] / ref:.2f}, in-workers-shm/ref {rates['in-workers-shm'] / ref:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
