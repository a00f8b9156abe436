"""The paper's CIFAR recipe (sec. 4.2) for every dataset small enough to live on the device: the
built-in ones (CIFAR-10/100, MNIST, Fashion-MNIST) and an ImageFolder tree of small images
(`smallfolder.py` decodes it), held whole as uint8 and augmented there (`ondevice.py`)."""

from __future__ import annotations

from pathlib import Path

import torch

from resnetlab.config import Config
from resnetlab.data.bundle import DataBundle
from resnetlab.data.ondevice import DeviceEvalSource, DeviceTrainSource, Normalizer, fit_stats, image_stats
from resnetlab.data.readers import READERS, RawDataset, Split
from resnetlab.data.summary import FOLDERS, summarize
from resnetlab.errors import UserError

# Horizontal flips preserve the label of natural images and clothes, not of handwritten digits.
FLIP = {"cifar10": True, "cifar100": True, "fashion-mnist": True, "mnist": False}


def build_builtin(cfg: Config, device: torch.device, *, rank: int, world_size: int, stats: tuple | None) -> DataBundle:
    """A built-in dataset (`readers.READERS`): its test split, or the held-out `data.val_split`."""
    d = cfg.data
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
    eval_name = "val" if d.val_split else "test"
    return _on_device(cfg, device, train, test, list(raw.classes), flips(d), eval_name, d.dir, rank, world_size, stats)


def flips(d) -> bool:
    """Whether training flips images: data.flip, else the data set's own (FLIP; folders: yes)."""
    return FLIP.get(d.name, True) if d.flip is None else d.flip


def build_small_folder(
    cfg: Config, device: torch.device, *, rank: int, world_size: int, stats: tuple | None
) -> DataBundle:
    """An ImageFolder tree of small images, decoded once (cached) into the built-in datasets' tensor."""
    from resnetlab.data.folders import read_splits
    from resnetlab.data.smallfolder import (
        available_memory,
        decoded_split,
        first_header,
        large_for_cifar,
        refuse_beyond_memory,
    )

    d = cfg.data
    if d.image_size < 0:
        raise UserError(f"data.image_size: must be >= 0 (0: the images' own size), got {d.image_size}")
    splits = read_splits(d.name, d.dir, eval_split=d.eval_split, val_split=d.val_split)
    opts = {
        "image_size": d.image_size,
        "workers": d.workers,
        "skip_corrupt": d.skip_corrupt,
        "cache": d.cache,
        "rank": rank,
    }

    # Each split about to be decoded (not loaded from its cache) is first held against the memory
    # available then; the test split's size too, from a header, against the training split's.
    def train_fits() -> None:
        later = [splits.train, splits.test]
        refuse_beyond_memory(later, image_size=d.image_size, channels=None, available=available_memory())

    def test_fits() -> None:
        header = first_header(splits.test)
        if not d.image_size and header is not None and header[:2] != (x.shape[-1], x.shape[-2]):
            raise UserError(_other_size(splits, header[:2], x))
        refuse_beyond_memory([splits.test], image_size=d.image_size, channels=x.shape[1], available=available_memory())

    # The images' own channels, also when fine-tuning: weights of another channel count are refused or
    # adapted (train.init_channels) by `fit_stats`, not met by decoding RGB images as grey or the reverse
    decoded = decoded_split(splits.root, "train", splits.train, channels=None, before_decoding=train_fits, **opts)
    x, y, skipped = decoded["images"], decoded["labels"], list(decoded["skipped"])
    if splits.held_out is not None:
        keep, held = _decoded_rows(splits.held_out, splits.train, skipped, d.val_split)
        train, test = Split(x[keep], y[keep]), Split(x[held], y[held])
    else:
        t = decoded_split(
            splits.root, splits.eval_name, splits.test, channels=x.shape[1], before_decoding=test_fits, **opts
        )
        if t["images"].shape[-2:] != x.shape[-2:]:  # a cache of another size, loaded
            raise UserError(_other_size(splits, (t["images"].shape[-1], t["images"].shape[-2]), x))
        train, test, skipped = Split(x, y), Split(t["images"], t["labels"]), skipped + list(t["skipped"])
        if stats is None:  # the whole training folder: its statistics were computed with the decoding
            mean, std = decoded[f"mean_{d.mean}"], decoded["std"]
            stats = (mean, std if d.normalize_std else None)
    left_out = (
        f"{len(skipped)} unreadable images left out (data.skip_corrupt=true), e.g. {skipped[0]}" if skipped else None
    )
    large = large_for_cifar(x.shape[-1], image_size=d.image_size, model=cfg.model.name, nbytes=x.nbytes)
    root, name = str(splits.root), splits.eval_name
    warnings = [left_out, large]
    return _on_device(cfg, device, train, test, splits.classes, flips(d), name, root, rank, world_size, stats, warnings)


def _other_size(splits, size: tuple[int, int], x: torch.Tensor) -> str:
    w, h = size
    return (
        f"{splits.root / splits.eval_name} holds {w}x{h} images, {splits.root / 'train'} {x.shape[-1]}x{x.shape[-2]}; "
        "set data.image_size=N to resize both"
    )


def _decoded_rows(held_out, samples: list, skipped: list[str], count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """data.val_split's (kept, held-out) indices into the training files, as rows of their decoded
    tensor, which leaves out the files skipped as unreadable (the same files are held out either way)."""
    left_out, rows = set(skipped), {}
    for i, (path, _) in enumerate(samples):
        if path not in left_out:
            rows[i] = len(rows)
    keep, held = ([rows[i] for i in part if i in rows] for part in held_out)
    if not held:
        raise UserError(
            f"data.val_split={count}: every held-out image is unreadable (data.skip_corrupt=true left it out)"
        )
    return torch.tensor(keep, dtype=torch.int64), torch.tensor(held, dtype=torch.int64)


def _on_device(
    cfg: Config,
    device: torch.device,
    train: Split,
    test: Split,
    classes: list[str],
    flip: bool,
    eval_name: str,
    root: str,
    rank: int,
    world_size: int,
    stats: tuple | None,
    warnings: list[str | None] = (),
) -> DataBundle:
    """The CIFAR recipe on uint8 splits (N, C, H, W): held on the device, augmented there (sec. 4.2)."""
    d = cfg.data
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
        flip=flip,
        rank=rank,
        world_size=world_size,
    )
    test_source = DeviceEvalSource(
        test.images.to(device), test.labels.to(device), normalizer=normalizer, batch_size=cfg.train.eval_batch_size
    )
    meta = {
        "dataset": d.name,
        "classes": list(classes),
        "num_classes": len(classes),
        "in_channels": c,
        "image_size": h,
        "mean": mean,
        "std": std,
    }
    if d.name in FOLDERS:
        meta["recipe"] = "cifar"  # evaluation tests such a checkpoint on the original images too
    summary = summarize(
        cfg,
        recipe="cifar",
        root=root,
        train_labels=train.labels,
        eval_labels=test.labels,
        eval_name=eval_name,
        input_size=(c, h, w),
        iters_per_epoch=train_source.iters_per_epoch,
        flip=flip,
        extra_warnings=warnings,
    )
    return DataBundle(train_source, test_source, len(classes), c, h, list(classes), meta, summary)


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
