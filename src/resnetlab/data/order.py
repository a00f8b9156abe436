"""The one deterministic, iteration-keyed sampler of every training loop (CIFAR on the device,
ImageFolder through a DataLoader, detection).

Iteration `it` of a run is a pure function of (seed, it): the global batch is the rows
`step * batch_size ...` of epoch `it // iters_per_epoch`'s permutation, and each process takes its
contiguous share (rank r of w: rows r*B/w .. (r+1)*B/w). Nothing depends on where the stream was
started, so `--resume` replays it exactly, and the global batch does not depend on the number of
processes. Random draws (the permutation, augmentation) come from generators seeded by `mix_seed`
of (seed, stream, epoch or iteration, ...), a splitmix64 hash in the spirit of numpy's
`SeedSequence`: nearby inputs give unrelated seeds, so seed 1's epoch 0 never equals seed 0's epoch
1 (as `seed * K + epoch` did).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from resnetlab.errors import UserError

_MASK64 = (1 << 64) - 1

# Streams, so the order and the augmentation never share a seed.
ORDER, AUGMENT = 1, 2


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (splitmix64 steps), so (seed, 1) and (seed + 1, 0) differ."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


def generator(*parts: int) -> torch.Generator:
    """A CPU generator seeded by `mix_seed(*parts)`: the same stream whatever device the data lives on
    (draws are small; the results move to the device)."""
    return torch.Generator().manual_seed(mix_seed(*parts))


class IterationSampler:
    """Global batch of iteration `it` -> this process's dataset indices; see the module docstring.

    Each epoch is a fresh permutation of the `n` items; the last incomplete batch of an epoch is
    dropped, so every batch has exactly `batch_size` items. Iterating yields this rank's index
    tensors from `start_iter` on (set it before each `iter()`; a DataLoader's batch sampler may be
    re-iterated after a restart).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        if batch_size % world_size:
            raise UserError(f"train.batch_size={batch_size} is not divisible by the {world_size} processes")
        if n < batch_size:
            raise UserError(f"train.batch_size={batch_size} is larger than the training split ({n} images)")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.local = batch_size // world_size
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.iters_per_epoch = n // batch_size
        self.start_iter = 0
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.int64)

    @property
    def rows(self) -> slice:
        """This rank's rows of a global batch."""
        return slice(self.rank * self.local, (self.rank + 1) * self.local)

    def epoch_order(self, epoch: int) -> Tensor:
        """The permutation of epoch `epoch`, (n,) int64 on the sampler's device (cached)."""
        if epoch != self._epoch:
            order = torch.randperm(self.n, generator=generator(self.seed, ORDER, epoch))
            self._epoch, self._order = epoch, order.to(self.device)
        return self._order

    def indices(self, it: int) -> Tensor:
        """Dataset indices of this rank's rows of global iteration `it`."""
        epoch, step = divmod(it, self.iters_per_epoch)
        start = step * self.batch_size + self.rank * self.local
        return self.epoch_order(epoch)[start : start + self.local]

    def augment_generator(self, it: int) -> torch.Generator:
        """The (CPU) generator of iteration `it`'s augmentation draws (draw for the whole global batch,
        then take `rows`, so the draws do not depend on the number of processes)."""
        return generator(self.seed, AUGMENT, it)

    def item_seed(self, it: int, row: int) -> int:
        """A seed for one item (global row `row` of iteration `it`), for per-item augmentation in
        DataLoader workers."""
        return mix_seed(self.seed, AUGMENT, it, row)

    def __iter__(self) -> Iterator[Tensor]:
        it = self.start_iter
        while True:
            yield self.indices(it)
            it += 1
