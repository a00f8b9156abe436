"""An ImageFolder tree of small images through the paper's CIFAR recipe (sec. 4.2).

The folder is decoded once into the uint8 tensor (N, C, H, W) the built-in CIFAR-10 uses, which then
goes through the same on-device path (`ondevice.py`): per-pixel mean, pad 4 + random 32x32 crop +
flip per image on the device, `data.val_split` held out, the test on the original images. Decoding
is cached (`cache.py`) under a key of the file list (paths, sizes, mtimes, labels) and of the decode
settings, so a changed folder is decoded afresh and an unchanged one starts in about a second.

Images must all have one square size (CIFAR's 32x32, Tiny ImageNet's 64x64, ...), or `data.image_size`
says the side to resize every image to once, when decoding: shorter side to that size (antialiased;
a large JPEG is first decoded reduced in the DCT domain, to no less than twice that size), then the
central square. Channels: grey when every
image of the training folder is grey (1 channel, as MNIST), else RGB (grey images replicated), or
those of the weights a fine-tuned network starts from.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from resnetlab.data.cache import cache_path, cached, fingerprint, remove_stale
from resnetlab.data.images import Sample, center_view, read_bytes
from resnetlab.data.ondevice import image_stats
from resnetlab.errors import UserError
from resnetlab.utils.device import resolve_workers
from resnetlab.utils.loader import data_loader

GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class _Decoded(Dataset):
    """Item i: (uint8 (C, H, W), None) or (None, (path, the reason read_bytes gave or None)).
    channels None: 1 for a grey image, 3 else."""

    def __init__(self, samples: list[Sample], *, image_size: int, channels: int | None):
        self.samples, self.image_size, self.channels = samples, image_size, channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor | None, tuple[str, str | None] | None]:
        path = self.samples[i][0]
        try:
            data = read_bytes(path)
        except UserError as e:  # not a regular file, unreadable: read_bytes says which, in one line
            return None, (path, str(e))
        try:
            with Image.open(io.BytesIO(data)) as im:
                grey = self.channels == 1 or (self.channels is None and im.mode in GREY_MODES)
                mode = "L" if grey else "RGB"
                if self.image_size:  # a large JPEG decoded at 1/2..1/8 size, still >= 2x the target side
                    im.draft(im.mode, (2 * self.image_size, 2 * self.image_size))
                x = torch.from_numpy(np.array(im.convert(mode)))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None, (path, None)
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)  # (H, W) or (H, W, 3) -> (C, H, W)
        if self.image_size:
            x = center_view(x, self.image_size, resize=self.image_size)
        return x.contiguous(), None


def _collate(items):
    """One uint8 tensor per batch when the images agree in size (a list of tensors would cost a file
    descriptor each on the way back from a worker); grey images among RGB ones replicated to RGB (as
    PIL's L -> RGB). Returns (images, the error (path, reason) or None of every item)."""
    kept = [x for x, _ in items if x is not None]
    if any(x.shape[0] == 3 for x in kept):
        kept = [x.expand(3, -1, -1) for x in kept]
    if kept and all(x.shape == kept[0].shape for x in kept):
        kept = torch.stack(kept)
    return kept, [error for _, error in items]


def decode_images(
    samples: list[Sample],
    *,
    image_size: int = 0,
    channels: int | None = None,
    workers: int | None = 0,
    skip_corrupt: bool = False,
    folder: Path | str = "",
) -> tuple[Tensor, Tensor, list[str]]:
    """(images uint8 (N, C, S, S), labels int64 (N,), unreadable paths skipped) of `samples`, in order.

    An unreadable file stops with a one-line error naming it (or, with skip_corrupt, is left out and
    named); images of different or non-square sizes without `image_size` are refused in one line."""
    loader = data_loader(
        _Decoded(samples, image_size=image_size, channels=channels),
        batch_size=256,
        num_workers=min(resolve_workers(workers), os.cpu_count() or 1),  # None (data.workers' default): per core
        collate_fn=_collate,
        generator=torch.Generator(),  # its worker seeds must not draw from the global RNG (the weights' init)
    )
    parts, kept, skipped, first, start = [], [], [], None, 0
    for images, errors in loader:
        rows = [start + i for i, error in enumerate(errors) if error is None]
        start += len(errors)
        bad = [error for error in errors if error is not None]
        if bad and not skip_corrupt:
            path, reason = bad[0]
            hint = "set data.skip_corrupt=true to skip such files"
            raise UserError(
                f"{reason} ({hint})" if reason else f"cannot read image {path}: corrupt or not an image ({hint})"
            )
        skipped += [path for path, _ in bad]
        if not rows:
            continue
        first = first or (samples[rows[0]][0], images[0].shape[-2:])
        for row, x in zip(rows, images if isinstance(images, list) else images[:1]):
            if x.shape[-2:] != first[1] or x.shape[-1] != x.shape[-2]:
                _refuse_size(folder, first, (samples[row][0], x.shape[-2:]))
        if isinstance(images, list):  # sizes agree, channels not: cannot happen after _collate
            images = torch.stack(images)
        if images.shape[-2:] != first[1]:
            _refuse_size(folder, first, (samples[rows[0]][0], images.shape[-2:]))
        parts.append(images)
        kept += rows
    if not parts:
        raise UserError(f"{folder}: no readable image")
    if any(x.shape[1] == 3 for x in parts):
        parts = [x.expand(-1, 3, -1, -1) for x in parts]
    labels = torch.tensor([samples[i][1] for i in kept], dtype=torch.int64)
    return torch.cat(parts), labels, skipped


def _refuse_size(folder, first: tuple[str, torch.Size], other: tuple[str, torch.Size]) -> None:
    (a, (ha, wa)), (b, (hb, wb)) = first, other
    what = f"{b} is {wb}x{hb}, not square" if hb != wb else f"{a} is {wa}x{ha} but {b} is {wb}x{hb}"
    raise UserError(
        f"{folder}: the CIFAR recipe needs images of one square size ({what}); set data.image_size=N to "
        "resize every image to NxN once when decoding, or data.recipe=imagenet"
    )


def decoded_split(
    root: Path,
    split: str,
    samples: list[Sample],
    *,
    image_size: int,
    channels: int | None,
    workers: int | None,
    skip_corrupt: bool,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """`decode_images` of one split of the tree at `root`, through the decoded cache (see module doc):
    {"images", "labels", "skipped", and the split's `image_stats`: "mean_pixel", "mean_channel", "std"}."""
    settings = {"what": "decoded", "image_size": image_size, "channels": channels, "skip_corrupt": skip_corrupt}
    key = fingerprint(root, samples, settings)[:16]
    path = cache_path(root, f".resnetlab-decoded-{split}-{image_size}-{channels or 'auto'}-{key}.pt")

    def compute() -> dict:
        images, labels, skipped = decode_images(
            samples,
            image_size=image_size,
            channels=channels,
            workers=workers,
            skip_corrupt=skip_corrupt,
            folder=root / split,
        )
        remove_stale(path, path.name.removesuffix(f"{key}.pt"))
        # The split's statistics too: on 50,000 images they cost as much as the rest of a cached start.
        (mean_pixel, std), (mean_channel, _) = image_stats(images, per="pixel"), image_stats(images, per="channel")
        stats = {"mean_pixel": mean_pixel, "mean_channel": mean_channel, "std": std}
        return {"images": images, "labels": labels, "skipped": skipped, **stats}

    return cached(path, compute, rank=rank, world_size=world_size)
