"""Small datasets held whole on the training device as uint8, augmented there (airbench style).

A batch is an index slice of the epoch's permutation; pad + random crop + horizontal flip is one
`gather` over the whole batch with per-image offsets (no Python loop per image, no host sync).

Determinism (what makes resume exact): the order of epoch e comes from a generator seeded with
(seed, e); the augmentation of global iteration i from a generator seeded with (seed, i). Nothing
depends on where the stream started, on how many processes share the batch (the draws are made for
the whole global batch and each rank keeps its rows) or on the device: the draws come from a CPU
generator and are then moved, so a run on a GPU sees the same images, crops and flips as on the CPU
(CUDA's generator is a different algorithm; the draws are a few hundred integers per iteration).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from resnetlab.data.bundle import EvalSource, TrainSource
from resnetlab.data.order import IterationSampler
from resnetlab.errors import UserError


def image_stats(images: Tensor, *, per: str = "pixel", chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Mean and std of uint8 images (N,C,H,W) in [0, 1] scale, as float32, computed exactly.

    mean: (C,H,W) for per="pixel" (the paper), (C,1,1) for per="channel". std is always per
    channel (C,1,1): a per-pixel std is 0 on MNIST's always-black border.
    """
    moments = image_moments(images, chunk=chunk)
    return moments[f"mean_{per}"], moments["std"]


def image_moments(images: Tensor, *, chunk: int = 1024) -> dict[str, Tensor]:
    """`image_stats` of both kinds in one pass: {"mean_pixel": (C,H,W), "mean_channel": (C,1,1),
    "std": (C,1,1)}, float32. At the peak, `chunk` images are held as float32 beside `images`."""
    n, c, h, w = images.shape
    # Per-pixel sums in float32 chunks: exact (1024 * 255 < 2**24), and 15x faster on CPU than
    # `images.sum(0, dtype=...)`, which does not vectorise over the strided reduction.
    total = torch.zeros(c * h * w, dtype=torch.float64, device=images.device)
    for part in images.reshape(n, -1).split(chunk):
        total += part.float().sum(0)
    mean_pixel = (total / (n * 255.0)).view(c, h, w)
    # Per-channel moments from each channel's histogram of the 256 values (exact integer counts).
    counts = torch.stack([torch.bincount(images[:, i].reshape(-1), minlength=256) for i in range(c)]).double()
    values = torch.arange(256, dtype=torch.float64, device=images.device) / 255.0
    mean_channel = (counts @ values) / counts.sum(1)
    var_channel = (counts @ values.square()) / counts.sum(1) - mean_channel.square()
    std = var_channel.clamp_min(1e-12).sqrt().view(c, 1, 1)
    return {"mean_pixel": mean_pixel.float(), "mean_channel": mean_channel.view(c, 1, 1).float(), "std": std.float()}


def fit_stats(
    mean: Tensor, std: Tensor | None, *, channels: int, size: int, adapt: bool = False
) -> tuple[Tensor, Tensor | None]:
    """A given normalisation (e.g. of pretrained weights) for images of `channels` x `size` x `size`:
    a per-pixel mean of another size becomes its per-channel average. Grey <-> RGB with `adapt`
    (`train.init_channels=adapt`): RGB statistics averaged over the channels for grey images, grey
    ones repeated for RGB images; other channel counts are an error."""
    have = mean.shape[0]
    if have != channels or (std is not None and std.shape[0] != channels):
        if not adapt or {have, channels} != {1, 3}:
            hint = "; --set train.init_channels=adapt converts grey <-> RGB" if {have, channels} == {1, 3} else ""
            raise UserError(f"the weights were trained on {have}-channel images, the data has {channels}{hint}")
        mean = mean.mean(0, keepdim=True) if have == 3 else mean.expand(3, *mean.shape[1:])
        if std is not None:
            std = std.reshape(have, 1, 1).mean(0, keepdim=True) if have == 3 else std.reshape(1, 1, 1).expand(3, 1, 1)
    if mean.shape[-2:] not in ((1, 1), (size, size)):
        mean = mean.mean((1, 2), keepdim=True)
    return mean.float().contiguous(), None if std is None else std.float().reshape(channels, 1, 1).contiguous()


class Normalizer:
    """x = (uint8 / 255 - mean) [/ std], the contract's normalisation, as one fused multiply-add.

    The multiply-add is done in place on the float copy of the batch: one batch-sized float tensor
    instead of two. On the CPU each fresh one costs its page faults (a 10-crop batch of 64 images is
    385 MB): measured 1.9x faster there (benchmarks/README.md "ImageNet input"), the same numbers."""

    def __init__(self, mean: Tensor, std: Tensor | None, device: torch.device):
        scale = (1.0 / std) if std is not None else torch.ones_like(mean[:, :1, :1])
        self.scale = (scale / 255.0).to(device)  # (C,1,1)
        self.shift = (-mean * scale).to(device)  # (C,H,W) or (C,1,1)

    def __call__(self, x: Tensor, *, into: Tensor | None = None) -> Tensor:
        """into: a float tensor of x's shape to write the result into (a `FloatScratch`'s) instead of a
        fresh one; never the caller's x, even when x is float already."""
        out = x.to(torch.float32, copy=True) if into is None else into.copy_(x)
        return torch.addcmul(self.shift, out, self.scale, out=out)


class FloatScratch:
    """One float batch rewritten batch after batch on the CPU, for a consumer done with each batch
    before it asks for the next (evaluation). There a fresh batch-sized tensor costs its page faults:
    normalising a 10-crop batch of 64 images (385 MB) takes ~170 ms into a fresh tensor, ~35 ms into
    this one (benchmarks/README.md "ImageNet input"). Off the CPU: None, a fresh tensor (the CUDA
    caching allocator reuses memory by itself)."""

    def __init__(self) -> None:
        self.tensor: Tensor | None = None

    def __call__(self, like: Tensor) -> Tensor | None:
        if like.device.type != "cpu":
            return None
        if self.tensor is None or self.tensor.shape != like.shape:
            self.tensor = None  # the old one freed before the new one is made
            self.tensor = torch.empty(like.shape, dtype=torch.float32)
        return self.tensor


def crop_flip(x: Tensor, dx: Tensor, dy: Tensor, flip: Tensor, pad: int) -> Tensor:
    """Each image's own crop of its zero-padded self, mirrored where `flip`: one gather, no loop.

    x (N,C,H,W) float, already normalised (so the zero padding is the mean, as when a normalised
    image is padded); dx, dy (N,) int offsets in [0, 2*pad]; flip (N,) bool. Returns (N,C,H,W).
    """
    n, c, h, w = x.shape
    wp = w + 2 * pad
    xp = F.pad(x, (pad, pad, pad, pad)).flatten(2)  # (N, C, Hp*Wp)
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = dy[:, None] + ar_h  # (N, H)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)  # (N, W)
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return xp.gather(2, index).view(n, c, h, w)


class DeviceTrainSource(TrainSource):
    """The training split on the device; global batch `batch_size`, of which this rank gets 1/world_size.

    Each epoch is a fresh permutation; the last incomplete batch of an epoch is dropped (so every
    batch has exactly `batch_size` images and iteration i maps to epoch i // iters_per_epoch).
    """

    def __init__(
        self,
        images: Tensor,  # (N,C,H,W) uint8 on the device
        labels: Tensor,  # (N,) int64 on the device
        *,
        normalizer: Normalizer,
        batch_size: int,
        seed: int,
        augment: bool = True,
        pad: int = 4,
        flip: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if pad < 0:
            raise UserError(f"data.pad: must be >= 0, got {pad}")
        self.sampler = IterationSampler(
            len(images), batch_size, seed=seed, rank=rank, world_size=world_size, device=images.device
        )
        self.images, self.labels = images, labels
        self.normalize = normalizer
        self.batch_size = batch_size  # global
        self.local_batch_size = batch_size // world_size
        self.seed, self.augment, self.pad, self.flip = seed, augment, pad, flip
        self.device = images.device
        self.iters_per_epoch = self.sampler.iters_per_epoch

    def __len__(self) -> int:
        return len(self.images)

    def indices(self, it: int) -> Tensor:
        """Dataset indices of this rank's rows of global iteration `it`."""
        return self.sampler.indices(it)

    def augmentation(self, it: int) -> tuple[Tensor, Tensor, Tensor]:
        """(dx, dy, flip) of this rank's rows of iteration `it`, drawn for the whole global batch."""
        k = 2 * self.pad + 1
        # One draw per image, uniform over the k*k offsets x 2 flips, decoded with div/mod.
        g = self.sampler.augment_generator(it)  # CPU: the same draws on every device
        r = torch.randint(0, 2 * k * k, (self.batch_size,), generator=g).to(self.device, non_blocking=True)
        flip = (r % 2).bool() & self.flip
        dx, dy = (r // 2) % k, r // (2 * k)
        rows = self.sampler.rows
        return dx[rows], dy[rows], flip[rows]

    def batch(self, it: int) -> tuple[Tensor, Tensor]:
        idx = self.indices(it)
        x = self.normalize(self.images.index_select(0, idx))  # index_select: ~10x faster than images[idx] on CPU
        if self.augment:
            x = crop_flip(x, *self.augmentation(it), pad=self.pad)
        return x, self.labels.index_select(0, idx)

    def batches(self, start_iter: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        it = start_iter
        while True:
            yield self.batch(it)
            it += 1


class DeviceEvalSource(EvalSource):
    """A whole split on the device, in its stored order, normalised, never augmented."""

    def __init__(self, images: Tensor, labels: Tensor, *, normalizer: Normalizer, batch_size: int = 1000):
        self.images, self.labels = images, labels
        self.normalize = normalizer
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.images)

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self.images), self.batch_size):
            end = start + self.batch_size
            yield self.normalize(self.images[start:end]), self.labels[start:end]
