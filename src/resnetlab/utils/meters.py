"""Running averages for training statistics (one helper, used by train/ and bench/)."""

from __future__ import annotations

import time


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
