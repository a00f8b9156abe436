"""ImageNet and any ImageFolder tree (`DIR/train/CLASS/*.JPEG`, `DIR/val/CLASS/*.JPEG`), sec. 3.4.

Too large for the device, so it goes through the standard DataLoader with torchvision's ImageFolder
scan and loader (PIL). Workers do the geometry on uint8 images and ship
uint8 (4x less to copy than float); the float work (÷255, colour noise, mean subtraction) runs on the
training device, one batch at a time.

Training augmentation (sec. 3.4, as in fb.resnet.torch / the Caffe release):
  shorter side resized to a random size in [scale_min, scale_max] = [256, 480], random crop x crop
  (224), horizontal flip with probability 1/2, AlexNet PCA lighting noise with std `lighting`
  (ImageNet's RGB eigenvalues/eigenvectors), then the mean subtracted (per pixel by default).
Test view (the "center" protocol): shorter side round(crop * 256 / 224) (256 for 224), central crop.

Determinism (what makes resume exact): the order of epoch e is a permutation seeded with (seed, e);
the draws of image j of global iteration i come from a generator seeded with (seed, i, j). Nothing
depends on where the stream started, on the number of workers, or on the number of processes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader, find_classes, make_dataset
from torchvision.transforms.v2 import functional as TF

from resnetlab.data.bundle import DataBundle, EvalSource, TrainSource
from resnetlab.data.ondevice import Normalizer, fit_stats, mix_seed
from resnetlab.errors import UserError

# AlexNet "standard color augmentation": PCA of ImageNet's RGB pixels (values from fb.resnet.torch).
IMAGENET_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = torch.tensor(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ]
)

_ORDER, _AUGMENT, _MEAN = 11, 12, 13  # seed streams, so order, augmentation and mean sample never share one

Sample = tuple[str, int]  # (path, class index)


# ---- files and views ----------------------------------------------------------------------------


def read_image(path: str) -> Tensor:
    """Decode an image file to uint8 RGB (3, H, W) with ImageFolder's own loader (PIL); an unreadable
    file is a UserError naming it."""
    try:
        return TF.pil_to_tensor(default_loader(path))
    except Exception as e:  # PIL.UnidentifiedImageError / OSError for corrupt, truncated or unreadable files
        raise UserError(f"cannot read image {path} ({type(e).__name__}): corrupt or not an image") from None


def test_resize(crop: int) -> int:
    """Shorter side of the test view: 256 for the paper's 224 crop, the same ratio for other crops."""
    return round(crop * 256 / 224)


def resize_shorter(img: Tensor, size: int) -> Tensor:
    """(C, H, W) -> (C, h, w) with min(h, w) = size, aspect ratio kept (bilinear, antialiased)."""
    return TF.resize(img, [size], antialias=True)


def center_view(img: Tensor, crop: int, resize: int | None = None) -> Tensor:
    """The single test view: shorter side `resize`, then the central crop x crop."""
    return TF.center_crop(resize_shorter(img, resize or test_resize(crop)), [crop, crop])


def scan_split(root: str | Path, class_to_idx: dict[str, int]) -> list[Sample]:
    """(path, label) of every image under root/CLASS/ for the given classes (missing folders are fine)."""
    return make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)


def split_classes(root: str | Path) -> list[str]:
    """Sorted class folder names of one split (ImageFolder's order); a missing/empty split is a UserError."""
    if not Path(root).is_dir():
        raise UserError(f"{root} does not exist (expected an ImageFolder split: {root}/CLASS/IMAGE.JPEG)")
    try:
        classes, _ = find_classes(str(root))
    except FileNotFoundError:
        raise UserError(f"{root} has no class folders (expected {root}/CLASS/IMAGE.JPEG)") from None
    return classes


def lighting_shift(alpha: Tensor) -> Tensor:
    """AlexNet PCA colour noise: (N, 3) draws alpha ~ N(0, std) -> (N, 3) RGB shift eigvec @ (alpha * eigval),
    added to every pixel of the [0, 1] image (fb.resnet.torch's `Lighting`)."""
    return (alpha * IMAGENET_EIGVAL.to(alpha)) @ IMAGENET_EIGVEC.to(alpha).T


# ---- datasets (run in the DataLoader workers) ---------------------------------------------------


class _Views(Dataset):
    """Reads samples[index] and makes one uint8 view of it. Items are (index, seed) for training.

    view "random": the training augmentation; "center": the test view. Returns (image or None, label,
    alpha (3,), skipped paths, error path or None). An unreadable file is never raised inside a worker
    (the DataLoader would wrap it in a traceback): it travels back as `error` and the main process
    raises the one-line UserError. With skip_corrupt, training replaces it by the next readable file
    of the list (the batch keeps its size); evaluation drops it.
    """

    def __init__(
        self,
        samples: list[Sample],
        *,
        crop: int,
        view: str,
        scale=(256, 480),
        lighting=0.0,
        skip_corrupt=False,
        replace_corrupt=False,
    ):
        self.samples, self.crop, self.view, self.scale, self.lighting = samples, crop, view, scale, lighting
        self.skip_corrupt, self.replace_corrupt = skip_corrupt, replace_corrupt

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, index: int) -> tuple[Tensor | None, int, list[str], str | None]:
        skipped: list[str] = []
        tries = len(self.samples) if (self.skip_corrupt and self.replace_corrupt) else 1
        for k in range(tries):
            path, label = self.samples[(index + k) % len(self.samples)]
            try:
                return read_image(path), label, skipped, None
            except UserError:
                if not self.skip_corrupt:
                    return None, label, skipped, path
                skipped.append(path)
        return None, self.samples[index][1], skipped, None

    def __getitem__(self, item: int | tuple[int, int]):
        index, seed = item if isinstance(item, tuple) else (item, 0)
        img, label, skipped, error = self._read(index)
        alpha = torch.zeros(3)
        if img is None:
            return None, label, alpha, skipped, error
        if self.view == "center":
            return center_view(img, self.crop), label, alpha, skipped, None
        g = torch.Generator().manual_seed(seed)
        size = int(torch.randint(self.scale[0], self.scale[1] + 1, (1,), generator=g))
        img = resize_shorter(img, max(size, self.crop))
        h, w = img.shape[-2:]
        top = int(torch.randint(0, h - self.crop + 1, (1,), generator=g))
        left = int(torch.randint(0, w - self.crop + 1, (1,), generator=g))
        img = img[:, top : top + self.crop, left : left + self.crop]
        if bool(torch.rand(1, generator=g) < 0.5):
            img = img.flip(-1)
        if self.lighting > 0:
            alpha = torch.randn(3, generator=g) * self.lighting
        return img.contiguous(), label, alpha, skipped, None


def _collate(items):
    """Stack the readable views; skipped paths and the first error travel alongside."""
    kept = [it for it in items if it[0] is not None]
    imgs = torch.stack([it[0] for it in kept]) if kept else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    labels = torch.tensor([it[1] for it in kept], dtype=torch.int64)
    alphas = torch.stack([it[2] for it in kept]) if kept else torch.empty(0, 3)
    skipped = [p for it in items for p in it[3]]
    errors = [it[4] for it in items if it[4] is not None]
    return imgs, labels, alphas, skipped, errors


def _loader(dataset: Dataset, workers: int, device: torch.device, **kw) -> DataLoader:
    return DataLoader(
        dataset,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        collate_fn=_collate,
        **kw,
    )


def _raise_unreadable(errors: list[str]) -> None:
    if errors:
        raise UserError(
            f"cannot read image {errors[0]}: corrupt or not an image (set data.skip_corrupt=true to skip such files)"
        )


# ---- sources -------------------------------------------------------------------------------------


class _EpochBatches:
    """The DataLoader's batch sampler: this rank's (index, seed) items of iterations start_iter, ...

    Endless; `start_iter` is set before each `iter(loader)`, so persistent workers survive a restart.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world_size: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.local = batch_size // world_size
        self.rank = rank
        self.iters_per_epoch = n // batch_size  # the last incomplete batch of an epoch is dropped
        self.start_iter = 0

    def order(self, epoch: int) -> Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(mix_seed(self.seed, _ORDER, epoch)))

    def items(self, it: int, order: Tensor) -> list[tuple[int, int]]:
        step = it % self.iters_per_epoch
        first = self.rank * self.local  # this rank's rows of the global batch
        rows = range(first, first + self.local)
        idx = order[step * self.batch_size + first : step * self.batch_size + first + self.local].tolist()
        return [(i, mix_seed(self.seed, _AUGMENT, it, row)) for i, row in zip(idx, rows)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        it, epoch, order = self.start_iter, -1, None
        while True:
            if it // self.iters_per_epoch != epoch:
                epoch = it // self.iters_per_epoch
                order = self.order(epoch)
            yield self.items(it, order)
            it += 1


class ImageFolderTrainSource(TrainSource):
    """Augmented training batches through a DataLoader. `skipped` counts corrupt files skipped so far
    (with data.skip_corrupt) and `skipped_files` names them, for the loop to log."""

    def __init__(
        self,
        samples: list[Sample],
        *,
        normalizer: Normalizer,
        device: torch.device,
        batch_size: int,
        seed: int,
        crop: int,
        scale: tuple[int, int],
        augment: bool,
        lighting: float,
        workers: int,
        skip_corrupt: bool,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size % world_size:
            raise UserError(f"train.batch_size={batch_size} is not divisible by the {world_size} processes")
        if len(samples) < batch_size:
            raise UserError(f"train.batch_size={batch_size} is larger than the training split ({len(samples)} images)")
        self.normalize, self.device = normalizer, device
        self.skipped = 0
        self.skipped_files: set[str] = set()
        # augment=False: the test view, still through the (index, seed) sampler (same order, same resume).
        views = _Views(
            samples,
            crop=crop,
            view="random" if augment else "center",
            scale=scale,
            lighting=lighting,
            skip_corrupt=skip_corrupt,
            replace_corrupt=True,
        )
        self.sampler = _EpochBatches(len(samples), batch_size, seed, rank, world_size)
        self.loader = _loader(views, workers, device, batch_sampler=self.sampler)
        self.lighting_scale = self.normalize.scale * 255.0  # a [0, 1]-scale shift, in normalised units

    def batches(self, start_iter: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        self.sampler.start_iter = start_iter
        for imgs, labels, alphas, skipped, errors in self.loader:
            _raise_unreadable(errors)
            self.skipped += len(skipped)
            self.skipped_files.update(skipped)
            x = self.normalize(imgs.to(self.device, non_blocking=True))
            if alphas.any():
                shift = lighting_shift(alphas).to(self.device, non_blocking=True)  # (N, 3)
                x = x + shift[:, :, None, None] * self.lighting_scale
            yield x, labels.to(self.device, non_blocking=True)


class ImageFolderEvalSource(EvalSource):
    """The test view (shorter side 256, central 224) of a whole split, in its scanned order."""

    def __init__(
        self,
        samples: list[Sample],
        *,
        normalizer: Normalizer,
        device: torch.device,
        crop: int,
        batch_size: int,
        workers: int,
        skip_corrupt: bool,
    ):
        self.samples, self.normalize, self.device = samples, normalizer, device
        self.skipped = 0
        views = _Views(samples, crop=crop, view="center", skip_corrupt=skip_corrupt)
        self.loader = _loader(views, workers, device, batch_size=batch_size, shuffle=False)

    def __len__(self) -> int:
        return len(self.samples)

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        for imgs, labels, _alphas, skipped, errors in self.loader:
            _raise_unreadable(errors)
            self.skipped += len(skipped)
            if len(imgs):
                yield self.normalize(imgs.to(self.device, non_blocking=True)), labels.to(self.device)


# ---- the mean ------------------------------------------------------------------------------------


def compute_stats(
    samples: list[Sample], *, crop: int, count: int, per: str, workers: int, skip_corrupt: bool, batch_size: int = 64
) -> tuple[Tensor, Tensor]:
    """Mean and per-channel std, in [0, 1] scale, of `count` training images (a fixed random sample)
    seen through the test view at crop size. mean: (3, crop, crop) per pixel, or (3, 1, 1) per channel."""
    g = torch.Generator().manual_seed(mix_seed(0, _MEAN))
    pick = torch.randperm(len(samples), generator=g)[: max(1, count)].tolist()
    views = _Views([samples[i] for i in pick], crop=crop, view="center", skip_corrupt=skip_corrupt)
    loader = DataLoader(views, batch_size=batch_size, num_workers=workers, collate_fn=_collate)
    s = torch.zeros(3, crop, crop, dtype=torch.float64)
    s2 = torch.zeros(3, 1, 1, dtype=torch.float64)
    n = 0
    for imgs, _labels, _alphas, _skipped, errors in loader:
        _raise_unreadable(errors)
        x = imgs.to(torch.float64) / 255.0
        s += x.sum(0)
        s2 += x.square().sum((0, 2, 3))[:, None, None]
        n += len(x)
    if n == 0:
        raise UserError("no readable training image to compute the mean from")
    mean_pixel = s / n
    mean_channel = mean_pixel.mean((1, 2), keepdim=True)
    std = (s2 / (n * crop * crop) - mean_channel.square()).clamp_min(1e-12).sqrt()
    return (mean_pixel if per == "pixel" else mean_channel).float(), std.float()


def _cached_stats(root: Path, samples: list[Sample], *, rank: int, world_size: int, **kw: Any) -> tuple[Tensor, Tensor]:
    """`compute_stats`, cached beside the data (`.resnetlab-mean-*.pt`) when that folder is writable:
    10,000 ImageNet JPEGs take minutes to decode, and every process and every resume wants them.
    Under torchrun, rank 0 computes and writes first; the others then read its cache (or, if the
    folder is read-only, compute the same deterministic sample themselves)."""
    key = f"{kw['per']}-{kw['crop']}-{kw['count']}-{len(samples)}"
    path = root / f".resnetlab-mean-{key}.pt"
    distributed = world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and rank != 0:
        torch.distributed.barrier()  # wait for rank 0's cache
    stats = _read_cache(path)
    if stats is None:
        stats = compute_stats(samples, **kw)
        if os.access(root, os.W_OK):
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            torch.save({"mean": stats[0], "std": stats[1]}, tmp)
            os.replace(tmp, path)
    if distributed and rank == 0:
        torch.distributed.barrier()
    return stats


def _read_cache(path: Path) -> tuple[Tensor, Tensor] | None:
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, weights_only=True)
        return cached["mean"], cached["std"]
    except Exception:
        return None  # a damaged cache is recomputed


# ---- the builder ---------------------------------------------------------------------------------


def build_imagefolder(
    cfg, device: torch.device, *, rank: int = 0, world_size: int = 1, stats: tuple | None = None
) -> DataBundle:
    """The DataBundle of an ImageFolder tree: data.name "imagenet" reads data.dir/imagenet, "imagefolder"
    reads data.dir. The test source is DIR/val, or data.val_split training images held out.
    `stats` (mean, std or None): a given normalisation (fine-tuning: the weights'), not computed."""
    d, t = cfg.data, cfg.train
    root = Path(d.dir) / "imagenet" if d.name == "imagenet" else Path(d.dir)
    classes = split_classes(root / "train")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    train = scan_split(root / "train", class_to_idx)
    if not train:
        raise UserError(f"{root / 'train'} has no images ({', '.join(IMG_EXTENSIONS)})")
    if d.val_split > 0:
        if d.val_split >= len(train):
            raise UserError(f"data.val_split={d.val_split} leaves no training images (only {len(train)})")
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(mix_seed(0, _ORDER))).tolist()
        test = sorted(train[i] for i in perm[: d.val_split])
        train = sorted(train[i] for i in perm[d.val_split :])
    else:
        unknown = sorted(set(split_classes(root / "val")) - set(classes))
        if unknown:
            raise UserError(f"{root / 'val'} has classes not in {root / 'train'}: {', '.join(unknown[:5])}")
        test = scan_split(root / "val", class_to_idx)
    if d.crop < 1 or d.scale_min < d.crop:
        raise UserError(f"data.scale_min={d.scale_min} must be >= data.crop={d.crop} (both positive)")

    if stats is not None:
        mean, std = fit_stats(*stats, channels=3, size=d.crop)
    else:
        opts = {"crop": d.crop, "count": d.mean_samples, "per": d.mean, "workers": d.workers}
        mean, std = _cached_stats(root, train, rank=rank, world_size=world_size, skip_corrupt=d.skip_corrupt, **opts)
        std = std if d.normalize_std else None
    normalizer = Normalizer(mean, std, device)
    source = ImageFolderTrainSource(
        train,
        normalizer=normalizer,
        device=device,
        batch_size=t.batch_size,
        seed=t.seed,
        crop=d.crop,
        scale=(d.scale_min, d.scale_max),
        augment=d.augment,
        lighting=d.lighting,
        workers=d.workers,
        skip_corrupt=d.skip_corrupt,
        rank=rank,
        world_size=world_size,
    )
    evaluation = ImageFolderEvalSource(
        test,
        normalizer=normalizer,
        device=device,
        crop=d.crop,
        batch_size=t.eval_batch_size,
        workers=d.workers,
        skip_corrupt=d.skip_corrupt,
    )
    meta = {
        "dataset": d.name,
        "classes": classes,
        "num_classes": len(classes),
        "in_channels": 3,
        "image_size": d.crop,
        "mean": mean,
        "std": std,
    }
    return DataBundle(source, evaluation, len(classes), 3, d.crop, classes, meta)
