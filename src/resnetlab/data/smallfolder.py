"""An ImageFolder tree of small images through the paper's CIFAR recipe (sec. 4.2).

The folder is decoded once into the uint8 tensor (N, C, H, W) the built-in CIFAR-10 uses, which then
goes through the same on-device path (`ondevice.py`): per-pixel mean, pad 4 + random 32x32 crop +
flip per image on the device, `data.val_split` held out, the test on the original images. Decoding
is cached (`cache.py`) under a key of the file list (paths, sizes, mtimes, labels) and of the decode
settings, so a changed folder is decoded afresh and an unchanged one starts in about a second; it is
used only if it holds this file list's labels and tensors of the shapes it claims.

Images must all have one square size (CIFAR's 32x32, Tiny ImageNet's 64x64, ...), or `data.image_size`
says the side to resize every image to once, when decoding: shorter side to that size (antialiased;
a large JPEG is first decoded reduced in the DCT domain, to no less than twice that size), then the
central square. Channels: grey when every
image of the training folder is grey (1 channel, as MNIST), else RGB (grey images replicated), or
those of the weights a fine-tuned network starts from (or of the checkpoint `evaluate` tests). Pixels
are read as `predict` and the ImageNet recipe read them (`images.pil_array`: 16-bit and float images
by their real range).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from resnetlab.data.cache import cache_path, cached, fingerprint, remove_stale
from resnetlab.data.images import Sample, center_view, is_grey, open_pil, pil_array, read_bytes
from resnetlab.data.ondevice import image_moments
from resnetlab.errors import UserError
from resnetlab.utils.device import resolve_workers
from resnetlab.utils.loader import data_loader

CIFAR_SIDE = 32  # the side the CIFAR recipe and its networks were made for (sec. 4.2)


@dataclass(frozen=True)
class Hints:
    """What a refusal tells the user to do, in the terms of the command that runs (train's data.*
    keys, evaluate's flags)."""

    skip: str = "set data.skip_corrupt=true to skip such files"
    size: str = "set data.image_size=N to resize every image to NxN once when decoding, or data.recipe=imagenet"


TRAIN_HINTS = Hints()


class _Decoded(Dataset):
    """Item i: (uint8 (C, H, W), None) or (None, (path, the one-line reason it cannot be read)).
    channels None: 1 for a grey image, 3 else. Pixels as every reader has them (`pil_array`)."""

    def __init__(self, samples: list[Sample], *, image_size: int, channels: int | None):
        self.samples, self.image_size, self.channels = samples, image_size, channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor | None, tuple[str, str] | None]:
        path = self.samples[i][0]
        try:
            data = read_bytes(path)  # a regular file only, size-capped
            with open_pil(data, path) as im:  # corrupt, or a decompression bomb: one line saying which
                grey = self.channels == 1 or (self.channels is None and is_grey(im.mode))
                if self.image_size:  # a large JPEG decoded at 1/2..1/8 size, still >= 2x the target side
                    im.draft(im.mode, (2 * self.image_size, 2 * self.image_size))
                x = torch.from_numpy(pil_array(im, path, grey=grey)).permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
        except UserError as e:
            return None, (path, str(e))
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
    hints: Hints = TRAIN_HINTS,
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
            raise UserError(f"{bad[0][1]} ({hints.skip})")
        skipped += [path for path, _ in bad]
        if not rows:
            continue
        first = first or (samples[rows[0]][0], images[0].shape[-2:])
        # A tensor: one size, so its first image tells; a list (`_collate`): sizes differ, one is refused
        for row, x in zip(rows, images if isinstance(images, list) else images[:1]):
            if x.shape[-2:] != first[1] or x.shape[-1] != x.shape[-2]:
                _refuse_size(folder, first, (samples[row][0], x.shape[-2:]), hints)
        parts.append(images)
        kept += rows
    if not parts:
        raise UserError(f"{folder}: no readable image")
    if any(x.shape[1] == 3 for x in parts):
        parts = [x.expand(-1, 3, -1, -1) for x in parts]
    labels = torch.tensor([samples[i][1] for i in kept], dtype=torch.int64)
    return torch.cat(parts), labels, skipped


def _refuse_size(folder, first: tuple[str, torch.Size], other: tuple[str, torch.Size], hints: Hints) -> None:
    (a, (ha, wa)), (b, (hb, wb)) = first, other
    what = f"{b} is {wb}x{hb}, not square" if hb != wb else f"{a} is {wa}x{ha} but {b} is {wb}x{hb}"
    raise UserError(f"{folder}: the CIFAR recipe needs images of one square size ({what}); {hints.size}")


def decoded_split(
    root: Path,
    split: str,
    samples: list[Sample],
    *,
    image_size: int,
    channels: int | None,
    workers: int | None,
    skip_corrupt: bool,
    cache: str = "user",
    hints: Hints = TRAIN_HINTS,
    rank: int = 0,
    before_decoding: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """`decode_images` of one split of the tree at `root`, through the decoded cache (`cache.py`;
    `cache`: data.cache): {"images", "labels", "skipped", and the split's `image_stats`: "mean_pixel",
    "mean_channel", "std"}. A cache is used only if it holds this list's labels, in order, and tensors
    of the shapes it claims. `before_decoding` runs only when the split is decoded, not when its cache
    is loaded (the memory refusal)."""
    settings = {"what": "decoded", "image_size": image_size, "channels": channels, "skip_corrupt": skip_corrupt}
    key = fingerprint(root, samples, settings)
    stem = f"decoded-{split}-{image_size}-{channels or 'auto'}-"
    path = cache_path(root, f"{stem}{key[:16]}.pt", cache)

    def compute() -> dict:
        if before_decoding is not None:
            before_decoding()
        images, labels, skipped = decode_images(
            samples,
            image_size=image_size,
            channels=channels,
            workers=workers,
            skip_corrupt=skip_corrupt,
            folder=root / split,
            hints=hints,
        )
        if path is not None:
            remove_stale(path, path.name.removesuffix(f"{key[:16]}.pt"))
        # The split's statistics too: on 50,000 images they cost as much as the rest of a cached start.
        stats = image_moments(images, chunk=STATS_CHUNK)
        return {"images": images, "labels": labels, "skipped": skipped, **stats}

    def check(value: dict) -> str | None:
        return _check_decoded(value, samples, channels=channels, image_size=image_size)

    return cached(path, compute, key=key, check=check, rank=rank)


def _check_decoded(value: dict, samples: list[Sample], *, channels: int | None, image_size: int) -> str | None:
    """What is wrong with a decoded cache of `samples`, or None: the images, the labels of the files
    not skipped (in the list's order), the statistics, their types and shapes."""
    images, labels, skipped = value.get("images"), value.get("labels"), value.get("skipped")
    if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        return "it holds no uint8 image tensor (N, C, H, W)"
    if not isinstance(skipped, list) or not all(isinstance(p, str) for p in skipped):
        return "it holds no list of the files left out"
    left_out = set(skipped)
    expected = [label for path, label in samples if path not in left_out]
    if len(expected) + len(left_out) != len(samples):
        return "it leaves out files that are not in the folder"
    if len(images) != len(expected):
        return f"it holds {len(images)} images, the folder {len(expected)}"
    if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.tolist() != expected:
        return "its labels are not those of the folder's files"
    c, h, w = images.shape[1:]
    if c not in (1, 3) or (channels and c != channels) or (image_size and (h, w) != (image_size, image_size)):
        return f"its images are {c}x{h}x{w}"
    shapes = {"mean_pixel": (c, h, w), "mean_channel": (c, 1, 1), "std": (c, 1, 1)}
    for name, shape in shapes.items():
        t = value.get(name)
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.shape != shape or not t.isfinite().all():
            return f"its {name} is not a finite tensor of shape {shape}"
    return None


# What to do about images too large for the CIFAR recipe as they are (a warning and a refusal say it).
SMALLER = (
    "set data.image_size=32 to resize them once when decoding, or use the ImageNet recipe "
    "(data.recipe=imagenet with an ImageNet network, e.g. model.name=resnet18)"
)


def available_memory(proc: Path = Path("/proc"), cgroups: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Bytes of memory a new allocation can get: the machine's MemAvailable, or less where this
    process's memory cgroup (a container's limit, v1 or v2) leaves less; None where neither is known."""
    found = [n for n in (_meminfo_available(proc / "meminfo"), cgroup_headroom(proc / "self" / "cgroup", cgroups)) if n]
    return min(found) if found else None


def _meminfo_available(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


def cgroup_headroom(self_cgroup: Path, root: Path) -> int | None:
    """The memory cgroup's limit less what its processes use, page cache that can be dropped
    (inactive_file) left out; None without a limit. The group's folder is looked up below `root`
    by the path in /proc/self/cgroup, then at `root` itself (a container sees its own group there)."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hid == "0" and controllers == "":  # v2: memory.max, memory.current
            files, base = ("memory.max", "memory.current", "inactive_file"), root
        elif "memory" in controllers.split(","):  # v1
            files, base = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"), root / "memory"
        else:
            continue
        for folder in (base / path.lstrip("/"), base):
            headroom = _headroom(folder, *files)
            if headroom is not None:
                return headroom
    return None


def _headroom(folder: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    try:
        limit_text = (folder / limit_file).read_text().strip()
        if limit_text == "max" or int(limit_text) >= UNLIMITED:
            return None
        used = int((folder / usage_file).read_text())
        stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines() if line.count(" ") == 1)
        return max(0, int(limit_text) - used + int(stat.get(inactive_key, 0)))
    except (OSError, ValueError):
        return None


def first_header(samples: list[Sample]) -> tuple[int, int, int] | None:
    """(width, height, channels: 1 grey, else 3) of the first image, from its header alone; None if it
    cannot be read (decoding then names the file)."""
    if not samples:
        return None
    try:
        with open_pil(read_bytes(samples[0][0]), samples[0][0]) as im:
            return (*im.size, 1 if is_grey(im.mode) else 3)
    except (UserError, OSError):
        return None


STATS_CHUNK = 1024  # images held as float32 at once while a split's statistics are summed (image_moments)


def refuse_beyond_memory(
    splits: list[list[Sample]], *, image_size: int, channels: int | None, available: int | None
) -> None:
    """Before a split is decoded: a one-line refusal when the uint8 tensors of `splits` (it and the
    splits to decode after it, in order) would not fit in the memory available now (what is already
    decoded or loaded is in use, so not counted again). The size: data.image_size, else the first
    image's header (the sizes must agree); its channels unless `channels` is given. At a split's peak,
    its batches and the tensor they are joined into are both held, beside one copy of each split before
    it; then its statistics convert `STATS_CHUNK` images at a time to float32. Before, a folder of
    large photographs under a CIFAR preset decoded until the kernel killed the process."""
    header = first_header(splits[0]) if splits else None
    if available is None or header is None:
        return
    w, h = (image_size, image_size) if image_size else header[:2]
    image = (channels or header[2]) * w * h  # bytes of one decoded image
    need, before = 0, 0
    for samples in splits:
        n = len(samples)
        need = max(need, before + image * max(2 * n, n + 4 * min(n, STATS_CHUNK)))
        before += image * n
    if need > available:
        counts = " + ".join(f"{len(samples):,}" for samples in splits if samples)  # no "+ 0" of a held-out test split
        size = f"at {w}x{h} (data.image_size)" if image_size else f"at their own size ({w}x{h}, as {splits[0][0][0]})"
        raise UserError(
            f"decoding {counts} images {size} needs about {need / 2**30:.1f} GiB of memory, "
            f"{available / 2**30:.1f} GiB is available: {SMALLER}, which reads the files batch by batch"
        )


def large_for_cifar(side: int, *, image_size: int, model: str, nbytes: int) -> str | None:
    """A warning when the CIFAR recipe is about to train on large images as they are (data.image_size
    not given): a network made for 32x32 inputs then runs at the images' size."""
    if image_size or side <= 2 * CIFAR_SIDE:
        return None
    return (
        f"the training images are {side}x{side}, large for the CIFAR recipe: {model} trains on them as they are, "
        f"at about {(side / CIFAR_SIDE) ** 2:.0f}x the compute of a 32x32 image, and the decoded images take "
        f"{nbytes / 2**30:.1f} GiB; {SMALLER}"
    )
