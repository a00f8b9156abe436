"""ImageNet and any ImageFolder tree (`DIR/train/CLASS/*.JPEG`, `DIR/val/CLASS/*.JPEG`), sec. 3.4.

Too large for the device, so it goes through the standard DataLoader. Workers do the geometry on
uint8 images (shorter side drawn in [scale_min, scale_max], random crop, flip; test: the central crop)
and ship uint8; the float work (÷255, PCA lighting, mean subtraction) runs on the training device.
The order of epoch e is seeded with (seed, e), the draws of image j of iteration i with (seed, i, j):
nothing depends on where the stream started or on the number of workers or processes (exact resume).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from resnetlab.data.bundle import DataBundle, EvalSource, TrainSource
from resnetlab.data.cache import cache_path, cached, fingerprint, remove_stale
from resnetlab.data.folders import read_splits
from resnetlab.data.images import (
    Sample,
    TrainRecipe,
    center_view,
    decode_image,
    lighting_shift,
    open_pil,
    read_bytes,
    resized_crop,
    resized_size,
    test_resize,
)
from resnetlab.data.ondevice import FloatScratch, Normalizer, fit_stats
from resnetlab.data.order import IterationSampler, mix_seed
from resnetlab.data.summary import small_for_imagenet, summarize
from resnetlab.errors import UserError
from resnetlab.utils.device import resolve_workers
from resnetlab.utils.loader import data_loader

_MEAN = 13  # seed stream of the mean sample (held-out images: folders.py; training: data.order)

# ---- datasets (run in the DataLoader workers) ---------------------------------------------------


class _Views(Dataset):
    """Reads samples[index] and makes one uint8 view of it. Items are (index, seed) for training.

    view "random": the training augmentation; "center": the test view. Returns (image or None, label,
    alpha (3,), skipped paths, error or None). An unreadable file is never raised inside a worker
    (the DataLoader would wrap it in a traceback): its one-line reason ("cannot read image PATH: why")
    travels back as `error` and the main process raises it as the UserError. With skip_corrupt,
    training replaces it by the next readable file of the list (the batch keeps its size);
    evaluation drops it.
    """

    def __init__(
        self,
        samples: list[Sample],
        *,
        crop: int,
        view: str,
        scale=(256, 480),
        lighting=0.0,
        flip=True,
        skip_corrupt=False,
        replace_corrupt=False,
        encoded=False,
    ):
        self.samples, self.crop, self.view, self.scale, self.lighting = samples, crop, view, scale, lighting
        self.flip = flip
        self.skip_corrupt, self.replace_corrupt = skip_corrupt, replace_corrupt
        self.encoded = encoded  # training view: ship RGB/gray JPEGs undecoded, for decoding on the device

    def __len__(self) -> int:
        return len(self.samples)

    def _read(
        self, index: int, shorter: int
    ) -> tuple[Tensor | bytes | None, tuple[int, int], int, list[str], str | None]:
        """(image decoded at least large enough for shorter side `shorter` -- or, with `encoded`, the
        file's bytes if it is an RGB or grayscale JPEG --, the file's full size, label, skipped, error).
        `read_bytes` reads regular files only, size-capped, and never blocks (a FIFO, /dev/zero)."""
        skipped: list[str] = []
        tries = len(self.samples) if (self.skip_corrupt and self.replace_corrupt) else 1
        for k in range(tries):
            path, label = self.samples[(index + k) % len(self.samples)]
            try:
                data = read_bytes(path)
                with open_pil(data, path) as im:  # the header only
                    full, plain_jpeg = (im.height, im.width), im.format == "JPEG" and im.mode in ("RGB", "L")
                if self.encoded and plain_jpeg:
                    return data, full, label, skipped, None
                img, full = decode_image(data, path, at_least=resized_size(full, shorter))
                return img, full, label, skipped, None
            except UserError as e:  # its one line says why: corrupt, a decompression bomb, not a regular file
                if not self.skip_corrupt:
                    return None, (0, 0), label, skipped, str(e)
                skipped.append(path)
        return None, (0, 0), self.samples[index][1], skipped, None

    def __getitem__(self, item: int | tuple[int, int]):
        """(view uint8 (3, crop, crop) or None, label, alpha (3,), skipped paths, error or None,
        undecoded: None or (JPEG bytes, path, (H', W'), top, left, flip) for the device)."""
        index, seed = item if isinstance(item, tuple) else (item, 0)
        alpha = torch.zeros(3)
        if self.view == "center":
            img, full, label, skipped, error = self._read(index, test_resize(self.crop))
            view = None if img is None else center_view(img, self.crop).contiguous()
            return view, label, alpha, skipped, error, None
        g = torch.Generator().manual_seed(seed)
        size = max(int(torch.randint(self.scale[0], self.scale[1] + 1, (1,), generator=g)), self.crop)
        img, full, label, skipped, error = self._read(index, size)
        if img is None:
            return None, label, alpha, skipped, error, None
        h, w = resized_size(full, size)  # the draws depend on the file's size, not on how it is decoded
        top = int(torch.randint(0, h - self.crop + 1, (1,), generator=g))
        left = int(torch.randint(0, w - self.crop + 1, (1,), generator=g))
        flip = bool(torch.rand(1, generator=g) < 0.5) and self.flip  # drawn either way: the same crops
        if self.lighting > 0:
            alpha = torch.randn(3, generator=g) * self.lighting
        if isinstance(img, bytes):
            path = self.samples[(index + len(skipped)) % len(self.samples)][0]
            return None, label, alpha, skipped, None, (img, path, (h, w), top, left, flip)
        img = resized_crop(img, (h, w), top, left, self.crop)
        return (img.flip(-1) if flip else img).contiguous(), label, alpha, skipped, None, None


def _collate(items):
    """Stack the decoded views; skipped paths and the first error travel alongside. Undecoded JPEGs
    (device decoding) come after the decoded views (labels and alphas are ordered the same way), as
    one uint8 tensor of all their bytes plus (offset, length, path, resized, top, left, flip) each:
    one shared-memory block per batch, not one per image (a file descriptor each)."""
    kept = [it for it in items if it[0] is not None]
    todo = [it for it in items if it[5] is not None]
    imgs = torch.stack([it[0] for it in kept]) if kept else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    labels = torch.tensor([it[1] for it in kept + todo], dtype=torch.int64)
    alphas = torch.stack([it[2] for it in kept + todo]) if kept or todo else torch.empty(0, 3)
    skipped = [p for it in items for p in it[3]]
    errors = [it[4] for it in items if it[4] is not None]
    encoded = None
    if todo:
        lengths = [len(it[5][0]) for it in todo]
        offsets = [sum(lengths[:i]) for i in range(len(lengths))]
        blob = torch.frombuffer(bytearray(b"".join(it[5][0] for it in todo)), dtype=torch.uint8)
        encoded = (blob, [(o, n, *it[5][1:]) for o, n, it in zip(offsets, lengths, todo)])
    return imgs, labels, alphas, skipped, errors, encoded


def _loader(dataset: Dataset, workers: int, device: torch.device, persistent: bool = True, **kw) -> DataLoader:
    return data_loader(
        dataset,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=persistent and workers > 0,
        collate_fn=_collate,
        **kw,
    )


def _raise_unreadable(errors: list[str]) -> None:
    """errors: one-line reasons, "cannot read image PATH: why"."""
    if errors:
        raise UserError(f"{errors[0]} (set data.skip_corrupt=true to skip such files)")


# ---- sources -------------------------------------------------------------------------------------


class _ItemSeeds:
    """The DataLoader's batch sampler: this rank's (index, seed) items of iterations start_iter, ...
    (the shared `IterationSampler`; each item carries its own augmentation seed for the workers).

    Endless; `start_iter` is set before each `iter(loader)`, so persistent workers survive a restart.
    """

    def __init__(self, sampler: IterationSampler) -> None:
        self.sampler = sampler
        self.start_iter = 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        it, rows = self.start_iter, range(self.sampler.rows.start, self.sampler.rows.stop)
        while True:
            idx = self.sampler.indices(it).tolist()
            yield [(i, self.sampler.item_seed(it, row)) for i, row in zip(idx, rows)]
            it += 1


class ImageFolderTrainSource(TrainSource):
    """Augmented training batches through a DataLoader. `skipped` counts corrupt files skipped so far
    (with data.skip_corrupt) and `skipped_files` names them, for the loop to log."""

    def __init__(
        self,
        samples: list[Sample],
        recipe: TrainRecipe,
        *,
        normalizer: Normalizer,
        device: torch.device,
        augment: bool = True,
        decode: str = "workers",
        persistent_workers: bool = True,
    ):
        if decode not in ("workers", "device"):
            raise UserError(f"data.decode: {decode!r} is not one of workers, device")
        r = recipe
        order = IterationSampler(len(samples), r.batch_size, seed=r.seed, rank=r.rank, world_size=r.world_size)
        self.normalize, self.device = normalizer, device
        self.skipped = 0
        self.skipped_files: set[str] = set()
        self.crop, self.skip_corrupt = r.crop, r.skip_corrupt
        self.workers = r.workers  # data.workers resolved: the loop's start line says it
        # augment=False: the test view, still through the (index, seed) sampler (same order, same resume).
        views = _Views(
            samples,
            crop=r.crop,
            view="random" if augment else "center",
            scale=r.scale,
            lighting=r.lighting,
            flip=r.flip,
            skip_corrupt=r.skip_corrupt,
            replace_corrupt=True,
            encoded=decode == "device" and augment,
        )
        self.sampler = _ItemSeeds(order)
        self.loader = _loader(views, r.workers, device, persistent_workers, batch_sampler=self.sampler)
        self.lighting_scale = self.normalize.scale * 255.0  # a [0, 1]-scale shift, in normalised units

    def batches(self, start_iter: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        self.sampler.start_iter = start_iter
        for imgs, labels, alphas, skipped, errors, encoded in self.loader:
            _raise_unreadable(errors)
            imgs = imgs.to(self.device, non_blocking=True)
            if encoded:  # data.decode=device: the JPEGs the workers left undecoded
                imgs, labels, alphas, failed = self._decode_on_device(imgs, labels, alphas, encoded)
                skipped = [*skipped, *failed]
            self.skipped += len(skipped)
            self.skipped_files.update(skipped)
            x = self.normalize(imgs)
            if alphas.any():
                shift = lighting_shift(alphas).to(self.device, non_blocking=True)  # (N, 3)
                x.add_(shift[:, :, None, None] * self.lighting_scale)  # in place: a CPU batch is 38 MB
            yield x, labels.to(self.device, non_blocking=True)

    def _decode_on_device(self, imgs: Tensor, labels: Tensor, alphas: Tensor, encoded: list) -> tuple:
        """Append the device-decoded views to the worker-decoded ones; drop (and name) what no decoder reads."""
        from resnetlab.data.device_decode import device_views

        views, kept, failed = device_views(encoded, self.crop, self.device)
        if failed and not self.skip_corrupt:
            _raise_unreadable([f"cannot read image {failed[0]}: corrupt or not an image"])
        n = len(imgs)
        rows = torch.tensor([*range(n), *(n + i for i in kept)], dtype=torch.int64)
        imgs = torch.cat([imgs, views]) if len(imgs) else views
        return imgs, labels[rows], alphas[rows], failed


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
        self.skipped_files: list[str] = []  # their paths, in the order met
        views = _Views(samples, crop=crop, view="center", skip_corrupt=skip_corrupt)
        self.loader = _loader(views, workers, device, batch_size=batch_size, shuffle=False)

    def __len__(self) -> int:
        return len(self.samples)

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """On the CPU each batch is rewritten into the next one's float tensor (`FloatScratch`): use a
        batch before asking for the next (`.clone()` one to keep it)."""
        scratch = FloatScratch()
        for imgs, labels, _alphas, skipped, errors, _ in self.loader:
            _raise_unreadable(errors)
            self.skipped += len(skipped)
            self.skipped_files += skipped
            if len(imgs):
                x = imgs.to(self.device, non_blocking=True)
                yield self.normalize(x, into=scratch(x)), labels.to(self.device)


# ---- the mean ------------------------------------------------------------------------------------


def mean_sample(samples: list[Sample], count: int) -> list[Sample]:
    """The fixed random sample of `count` training images the mean is computed from."""
    g = torch.Generator().manual_seed(mix_seed(0, _MEAN))
    return [samples[i] for i in torch.randperm(len(samples), generator=g)[: max(1, count)].tolist()]


def compute_stats(
    samples: list[Sample], *, crop: int, count: int, per: str, workers: int, skip_corrupt: bool, batch_size: int = 64
) -> tuple[Tensor, Tensor]:
    """Mean and per-channel std, in [0, 1] scale, of `count` training images (a fixed random sample)
    seen through the test view at crop size. mean: (3, crop, crop) per pixel, or (3, 1, 1) per channel."""
    views = _Views(mean_sample(samples, count), crop=crop, view="center", skip_corrupt=skip_corrupt)
    # generator: the workers' seeds must not draw from the global RNG, which then initialises the weights
    # (a run would otherwise start from other weights when the mean is cached).
    loader = data_loader(
        views,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        generator=torch.Generator(),
    )
    s = torch.zeros(3, crop, crop, dtype=torch.float64)
    s2 = torch.zeros(3, 1, 1, dtype=torch.float64)
    n = 0
    skipped = 0
    for imgs, _labels, _alphas, left_out, errors, _ in loader:
        _raise_unreadable(errors)
        skipped += len(left_out)
        if not len(imgs):  # every image of the batch unreadable and skipped (data.skip_corrupt)
            continue
        x = imgs.to(torch.float64) / 255.0
        s += x.sum(0)
        s2 += x.square().sum((0, 2, 3))[:, None, None]
        n += len(x)
    if n == 0:
        raise UserError(
            f"no readable training image to compute the mean from: the {skipped} sampled were unreadable "
            "and skipped (data.skip_corrupt)"
        )
    mean_pixel = s / n
    mean_channel = mean_pixel.mean((1, 2), keepdim=True)
    std = (s2 / (n * crop * crop) - mean_channel.square()).clamp_min(1e-12).sqrt()
    return (mean_pixel if per == "pixel" else mean_channel).float(), std.float()


def _cached_stats(
    root: Path, samples: list[Sample], *, rank: int, cache: str = "user", **kw: Any
) -> tuple[Tensor, Tensor]:
    """`compute_stats`, cached (`data/cache.py`; `cache`: data.cache): 10,000 ImageNet JPEGs take
    minutes to decode, and every process and every resume wants them. The key is the fingerprint of
    the sampled files (paths, sizes, mtimes, labels) and of the settings: a repainted or replaced
    image, or another number of training images (which changes the sample), is computed afresh. A
    cache whose mean or std is not a finite tensor of the settings' shape is computed afresh too."""
    settings = {"what": "mean", "per": kw["per"], "crop": kw["crop"], "count": kw["count"], "images": len(samples)}
    if kw.get("skip_corrupt"):  # a mean of the readable images only: not one for a run that must read them all
        settings["skip_corrupt"] = True
    key = fingerprint(root, mean_sample(samples, kw["count"]), settings)
    path = cache_path(root, f"mean-{kw['per']}-{kw['crop']}-{kw['count']}-{key[:16]}.pt", cache)

    def compute() -> dict[str, Tensor]:
        mean, std = compute_stats(samples, **kw)
        if path is not None:
            remove_stale(path, path.name.removesuffix(f"{key[:16]}.pt"))
        return {"mean": mean, "std": std}

    def check(value: dict) -> str | None:
        crop = kw["crop"]
        shapes = {"mean": (3, crop, crop) if kw["per"] == "pixel" else (3, 1, 1), "std": (3, 1, 1)}
        for name, shape in shapes.items():
            t = value.get(name)
            if not isinstance(t, Tensor) or not t.is_floating_point() or t.shape != shape or not t.isfinite().all():
                return f"its {name} is not a finite tensor of shape {shape}"
        return None

    stats = cached(path, compute, key=key, check=check, rank=rank)
    return stats["mean"], stats["std"]


# ---- the builder ---------------------------------------------------------------------------------


def build_imagefolder(
    cfg, device: torch.device, *, rank: int = 0, world_size: int = 1, stats: tuple | None = None
) -> DataBundle:
    """The DataBundle of an ImageFolder tree through the ImageNet recipe: data.name "imagenet" reads
    data.dir/imagenet, "imagefolder" reads data.dir. The evaluated source is DIR/<data.eval_split>
    (val by default), or data.val_split training images held out (`folders.py`).
    `stats` (mean, std or None): a given normalisation (fine-tuning: the weights'), not computed."""
    d, t = cfg.data, cfg.train
    splits = read_splits(d.name, d.dir, eval_split=d.eval_split, val_split=d.val_split)
    root, classes = splits.root, splits.classes
    train, test = splits.split_train()
    if d.crop < 1 or d.scale_min < d.crop:
        raise UserError(f"data.scale_min={d.scale_min} must be >= data.crop={d.crop} (both positive)")

    workers = resolve_workers(d.workers)
    if stats is not None:
        mean, std = fit_stats(*stats, channels=3, size=d.crop, adapt=t.init_channels == "adapt")
    else:
        opts = {"crop": d.crop, "count": d.mean_samples, "per": d.mean, "workers": workers}
        mean, std = _cached_stats(root, train, rank=rank, skip_corrupt=d.skip_corrupt, cache=d.cache, **opts)
        std = std if d.normalize_std else None
    normalizer = Normalizer(mean, std, device)
    recipe = TrainRecipe(
        batch_size=t.batch_size,
        seed=t.seed,
        crop=d.crop,
        scale=(d.scale_min, d.scale_max),
        lighting=d.lighting,
        workers=workers,
        skip_corrupt=d.skip_corrupt,
        rank=rank,
        world_size=world_size,
        flip=d.flip is not False,
    )
    if d.loader == "dali":
        if not d.augment or d.flip is False:  # its pipeline is the paper's augmentation, flips included
            key = "data.augment=false" if not d.augment else "data.flip=false"
            raise UserError(f"{key}: data.loader=dali always augments (scale, crop, flip); use data.loader=torch")
        from resnetlab.data.dali import DaliTrainSource

        source = DaliTrainSource(train, recipe, normalizer=normalizer, device=device)
    else:
        source = ImageFolderTrainSource(
            train, recipe, normalizer=normalizer, device=device, augment=d.augment, decode=d.decode
        )
    evaluation = ImageFolderEvalSource(
        test,
        normalizer=normalizer,
        device=device,
        crop=d.crop,
        batch_size=t.eval_batch_size,
        workers=workers,
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
    summary = summarize(
        cfg,
        recipe="imagenet",
        root=str(root),
        train_labels=[label for _, label in train],
        eval_labels=[label for _, label in test],
        eval_name=splits.eval_name,
        input_size=(3, d.crop, d.crop),
        iters_per_epoch=len(train) // t.batch_size,
        flip=recipe.flip,
        extra_warnings=[small_for_imagenet(cfg, train)] if rank == 0 else [],
    )
    return DataBundle(source, evaluation, len(classes), 3, d.crop, classes, meta, summary)
