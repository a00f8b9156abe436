"""Datasets -> `DataBundle` (the contract in docs/DEVELOPING.md): `build_data(cfg, device)`.

CIFAR-10/100, MNIST and Fashion-MNIST are held whole on the training device (`ondevice.py`);
ImageNet / ImageFolder go through a DataLoader (`imagenet.py`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from resnetlab.config import Config
from resnetlab.data.bundle import DataBundle, EvalSource, TrainSource
from resnetlab.data.ondevice import DeviceEvalSource, DeviceTrainSource, Normalizer, fit_stats, image_stats
from resnetlab.data.readers import READERS, RawDataset, Split
from resnetlab.errors import UserError

__all__ = ["DataBundle", "EvalSource", "TrainSource", "build_data", "DATASETS"]

# Horizontal flips preserve the label of natural images and clothes, not of handwritten digits.
FLIP = {"cifar10": True, "cifar100": True, "fashion-mnist": True, "mnist": False}
DATASETS = (*READERS, "imagenet", "imagefolder")


def build_data(
    cfg: Config, device: torch.device, *, rank: int = 0, world_size: int = 1, stats: tuple | None = None
) -> DataBundle:
    """The training stream and the test (or held-out validation) split of `cfg.data.name`.
    `stats` (mean, std or None), when given, is the normalisation to use instead of the training
    split's (fine-tuning uses the weights' own)."""
    d = cfg.data
    if d.name in ("imagenet", "imagefolder"):
        from resnetlab.data.imagenet import build_imagefolder

        return build_imagefolder(cfg, device, rank=rank, world_size=world_size, stats=stats)
    if d.name not in READERS:
        raise UserError(f"data.name: unknown dataset {d.name!r}; choose one of {', '.join(DATASETS)}")

    raw = _read_rank0_first(d.name, Path(d.dir).expanduser(), d.download, rank, world_size)
    train, test = raw.train, raw.test
    if d.val_split:
        # The paper's 45k/5k split: the *last* val_split training images become the evaluation set
        # (CIFAR's training batches are already in random order, so no shuffle is needed).
        if d.val_split >= len(train.images):
            raise UserError(f"data.val_split={d.val_split}: must be below the {len(train.images)} training images")
        n = len(train.images) - d.val_split
        test = Split(train.images[n:], train.labels[n:])
        train = Split(train.images[:n], train.labels[:n])

    _, c, h, w = train.images.shape
    if stats is not None:
        mean, std = fit_stats(*stats, channels=c, size=h, adapt=cfg.train.init_channels == "adapt")
    else:
        mean, std = image_stats(train.images, per=d.mean)  # training split only (val excluded)
        std = std if d.normalize_std else None
    normalizer = Normalizer(mean, std, device)
    train_source = DeviceTrainSource(
        train.images.to(device),
        train.labels.to(device),
        normalizer=normalizer,
        batch_size=cfg.train.batch_size,
        seed=cfg.train.seed,
        augment=d.augment,
        pad=d.pad,
        flip=FLIP[d.name],
        rank=rank,
        world_size=world_size,
    )
    test_source = DeviceEvalSource(
        test.images.to(device), test.labels.to(device), normalizer=normalizer, batch_size=cfg.train.eval_batch_size
    )
    meta = {
        "dataset": d.name,
        "classes": list(raw.classes),
        "num_classes": len(raw.classes),
        "in_channels": c,
        "image_size": h,
        "mean": mean,
        "std": std,
    }
    return DataBundle(train_source, test_source, len(raw.classes), c, h, list(raw.classes), meta)


def _read_rank0_first(name: str, root: Path, download: bool, rank: int, world_size: int) -> RawDataset:
    """Rank 0 fetches / unpacks first, the others wait, then read what it wrote."""
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        from resnetlab.utils.distributed import barrier

        if rank == 0:
            raw = READERS[name](name, root, download)
        barrier()
        if rank != 0:
            raw = READERS[name](name, root, False)
        return raw
    return READERS[name](name, root, download)
