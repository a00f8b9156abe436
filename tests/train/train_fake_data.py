"""A tiny learnable data source that follows the `resnetlab.data` contract (docs/DEVELOPING.md).

Four classes of 1x8x8 images: class k is noise plus a bright quadrant k. The stream is a function of
(seed, iteration) only, like the real sources, so resumed runs see the same batches.

Run as a script it is the `resnetlab` CLI with this source in place of `build_data`:
    python tests/train/train_fake_data.py train --preset cifar10-resnet20 --out DIR --set ...
Environment knobs for tests: FAKE_SLEEP (seconds per batch, to make a run slow enough to kill),
FAKE_NAN_AT (an iteration whose batch is NaN, to make the loss non-finite), FAKE_HOLD_AT and
FAKE_HOLD_FILE (the batch of that iteration waits until the file exists: a run held mid-way),
FAKE_EVAL_SLEEP (seconds per evaluation batch: an evaluation long enough to signal in its middle),
FAKE_SLOW_SAVE (seconds that torch.save pauses half-way through a file: a checkpoint write long
enough to kill in its middle), FAKE_SIGINT (the Ctrl-C disposition, see the end),
FAKE_START_TOGETHER=DIR:N (`run_training` starts once N processes have reached it: a race for one
folder, every command-line step before it already done).
"""

from __future__ import annotations

import io
import os
import sys
import time
from dataclasses import dataclass, field

import torch

NUM_CLASSES, SIZE = 4, 8


def _images(g: torch.Generator, labels: torch.Tensor) -> torch.Tensor:
    x = torch.randn(len(labels), 1, SIZE, SIZE, generator=g) * 0.7  # (N, 1, 8, 8)
    for k in range(NUM_CLASSES):
        r, c = divmod(k, 2)
        x[labels == k, :, r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4] += 1.0
    return x


class FakeTrain:
    def __init__(self, batch_size: int, seed: int, rank: int, world_size: int, device: torch.device):
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.local = batch_size // world_size
        self.rows = slice(rank * self.local, (rank + 1) * self.local)

    def batches(self, start_iter: int):
        sleep = float(os.environ.get("FAKE_SLEEP", 0))
        nan_at = int(os.environ.get("FAKE_NAN_AT", -1))
        hold_at, hold_file = int(os.environ.get("FAKE_HOLD_AT", -1)), os.environ.get("FAKE_HOLD_FILE", "")
        it = start_iter
        while True:
            while it == hold_at and not os.path.exists(hold_file):
                time.sleep(0.05)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + it)
            y = torch.randint(0, NUM_CLASSES, (self.batch_size,), generator=g)  # the global batch
            x = _images(g, y)
            if it == nan_at:
                x.fill_(float("nan"))
            if sleep:
                time.sleep(sleep)
            yield x[self.rows].to(self.device), y[self.rows].to(self.device)
            it += 1


class FakeTest:
    def __init__(self, batch_size: int, device: torch.device, n: int = 64):
        g = torch.Generator().manual_seed(12345)
        self.y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        self.x = _images(g, self.y)
        self.batch_size, self.device = batch_size, device

    def __len__(self) -> int:
        return len(self.y)

    def batches(self):
        sleep = float(os.environ.get("FAKE_EVAL_SLEEP", 0))
        for i in range(0, len(self.y), self.batch_size):
            if sleep:
                time.sleep(sleep)
            yield self.x[i : i + self.batch_size].to(self.device), self.y[i : i + self.batch_size].to(self.device)


@dataclass
class FakeBundle:
    train: FakeTrain
    test: FakeTest
    num_classes: int = NUM_CLASSES
    in_channels: int = 1
    image_size: int = SIZE
    classes: list[str] = field(default_factory=lambda: [f"quadrant{k}" for k in range(NUM_CLASSES)])
    meta: dict = field(default_factory=dict)


def build_fake_data(cfg, device, *, rank: int = 0, world_size: int = 1, stats=None) -> FakeBundle:
    """`stats` (fine-tuning's given normalisation) is recorded in the meta; the images are made normalised."""
    bundle = FakeBundle(
        FakeTrain(cfg.train.batch_size, cfg.train.seed, rank, world_size, device),
        FakeTest(cfg.train.eval_batch_size, device),
    )
    bundle.meta = {
        "dataset": "fake",
        "classes": bundle.classes,
        "num_classes": NUM_CLASSES,
        "in_channels": 1,
        "image_size": SIZE,
        "mean": torch.zeros(1, SIZE, SIZE) if stats is None else stats[0],
        "std": None if stats is None else stats[1],
    }
    return bundle


# Settings for a tiny, fast run on the fake source (a ResNet-8: n=1 block per stage).
TINY = [
    "model.name=cifar_resnet",
    "model.depth=8",
    "train.batch_size=16",
    "train.eval_batch_size=32",
    "train.log_every=5",
]


def install() -> None:
    import resnetlab.train.loop as loop

    loop.build_data = build_fake_data
    pause = float(os.environ.get("FAKE_SLOW_SAVE", 0))
    if pause:
        real_save = torch.save

        def slow_save(obj, f, *args, **kwargs):
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(pause)  # half a file on disk
            f.write(data[len(data) // 2 :])

        torch.save = slow_save
    together = os.environ.get("FAKE_START_TOGETHER")
    if together:
        import resnetlab.train as train

        folder, n = together.rsplit(":", 1)
        real_run = train.run_training

        def run_together(*args, **kwargs):
            open(os.path.join(folder, str(os.getpid())), "w").close()
            deadline = time.time() + 120
            while len(os.listdir(folder)) < int(n) and time.time() < deadline:
                time.sleep(0.001)
            return real_run(*args, **kwargs)

        train.run_training = run_together


if __name__ == "__main__":
    import signal

    # FAKE_SIGINT: the Ctrl-C disposition the command starts with, set here rather than inherited from
    # whoever started the test: "default" (a terminal's foreground process), "ignore" (a shell script's `&`).
    disposition = {"default": signal.default_int_handler, "ignore": signal.SIG_IGN}
    if os.environ.get("FAKE_SIGINT"):
        signal.signal(signal.SIGINT, disposition[os.environ["FAKE_SIGINT"]])
    torch.set_num_threads(1)
    install()
    from resnetlab.cli import main

    raise SystemExit(main(sys.argv[1:]))
