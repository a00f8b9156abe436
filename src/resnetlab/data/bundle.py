"""What every dataset builder returns: a `DataBundle` of a `TrainSource` and an `EvalSource`.

The contract is in docs/DEVELOPING.md ("The data contract"). The small datasets implement it with
tensors held on the device (`resnetlab.data.device`); ImageNet with a DataLoader (`resnetlab.data.imagenet`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


class TrainSource:
    """Endless, deterministic stream of training batches (this process's share of each global batch)."""

    def batches(self, start_iter: int) -> Iterator[tuple[Tensor, Tensor]]:
        """(x, y) for iterations start_iter, start_iter+1, ...: x normalised float32 (N,C,H,W) on the
        device, y int64. Iteration i's data and augmentation depend only on (seed, i)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}  # the iteration number is all the state there is

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EvalSource:
    """The whole test (or held-out validation) split, un-augmented and normalised."""

    def batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        """(images, labels) batches. A batch is valid until the next one is drawn (a source may write
        the next into the same memory, as the ImageFolder source does on the CPU): `.clone()` to keep one."""
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


@dataclass
class DataBundle:
    train: TrainSource
    test: EvalSource  # the test split, or the held-out val split when data.val_split > 0
    num_classes: int
    in_channels: int
    image_size: int  # training input size (32 CIFAR, 28 MNIST, 224 ImageNet)
    classes: list[str]
    # Saved in checkpoints: {"dataset", "classes", "num_classes", "in_channels", "image_size",
    # "mean" (Tensor), "std" (Tensor | None)}.
    meta: dict[str, Any]
    # What was found and what runs (`summary.py`): images and classes per split, input size, recipe,
    # augmentation, iterations per epoch, warnings; printed and written to data.json at the start of a run.
    summary: dict[str, Any] = field(default_factory=dict)
