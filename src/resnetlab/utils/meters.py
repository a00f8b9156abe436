"""Running averages for training statistics (one helper, used by train/ and bench/)."""

from __future__ import annotations

import time

import torch

from resnetlab.utils import distributed as dist


class Average:
    """Mean loss and error (%) over a span of iterations: `add(loss_sum, errors, images, iters)`.

    Holds plain Python numbers; the loop accumulates on the device and adds here only when it reads
    the values anyway (log, evaluation, checkpoint), so there is no host sync per iteration.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum = 0.0  # sum of per-iteration mean losses
        self.iters = 0
        self.errors = 0  # misclassified training images
        self.images = 0

    def add(self, loss_sum: float, errors: int, images: int, iters: int) -> None:
        self.loss_sum += loss_sum
        self.errors += errors
        self.images += images
        self.iters += iters

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.iters, 1)

    @property
    def error(self) -> float:
        """Error in percent."""
        return 100.0 * self.errors / max(self.images, 1)

    def state_dict(self) -> dict[str, float | int]:
        return {"loss_sum": self.loss_sum, "iters": self.iters, "errors": self.errors, "images": self.images}

    def load_state_dict(self, d: dict[str, float | int]) -> None:
        self.loss_sum = float(d["loss_sum"])
        self.iters = int(d["iters"])
        self.errors = int(d["errors"])
        self.images = int(d["images"])


class Throughput:
    """Images per second since the last `rate()` call (wall clock)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.images = 0

    def add(self, images: int) -> None:
        self.images += images

    def rate(self) -> float:
        now = time.perf_counter()
        value = self.images / max(now - self.start, 1e-9)
        self.start, self.images = now, 0
        return value


class LossWindow:
    """Per-iteration losses and error counts of the iterations not yet read, kept on the device so the
    loop never waits for it; `drain` reads them (summed over processes) and checks the losses."""

    def __init__(self, device: torch.device, world_size: int) -> None:
        self.device, self.world_size = device, world_size
        self.losses: list[torch.Tensor] = []
        self.errors = torch.zeros((), dtype=torch.float64, device=device)
        self.images = 0

    @property
    def count(self) -> int:
        return len(self.losses)

    def add(self, loss: torch.Tensor, errors: torch.Tensor, images: int) -> None:
        self.losses.append(loss.float())
        self.errors += errors
        self.images += images

    def drain(self) -> tuple[list[float], int, int]:
        """(per-iteration mean losses, errors, images) over all processes since the last drain."""
        if not self.losses:
            return [], 0, 0
        packed = torch.cat([torch.stack(self.losses).double(), self.errors.view(1)])  # (iters + 1,)
        values = dist.all_reduce_sum(packed).tolist()
        result = ([v / self.world_size for v in values[:-1]], round(values[-1]), self.images * self.world_size)
        self.losses, self.images = [], 0
        self.errors.zero_()
        return result
