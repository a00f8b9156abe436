"""SIGTERM and SIGINT stop any command with one line (`terminated`, exit 143; `interrupted`, exit 130):
a real `resnetlab evaluate` process, signalled while it evaluates."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from resnetlab.models import create_model
from resnetlab.utils.checkpoint import save_atomic


def _idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    with open(path, "wb") as f:
        f.write(struct.pack(">" + "I" * (1 + array.ndim), magic, *array.shape) + array.tobytes())


@pytest.fixture(scope="module")
def slow_evaluation(tmp_path_factory) -> list[str]:
    """An `evaluate` of 20,000 Fashion-MNIST-shaped images: long enough to be signalled mid-way."""
    import torch

    w = tmp_path_factory.mktemp("signals")
    raw = w / "fm" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 20_000)):
        _idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        _idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    meta = {"dataset": "fashion-mnist", "classes": [str(i) for i in range(10)], "in_channels": 1, "image_size": 28,
            "mean": torch.zeros(1, 28, 28), "std": None, "model": "cifar_resnet20",
            "model_options": {"num_classes": 10, "in_channels": 1}, "num_classes": 10}  # fmt: skip
    config = {"data": {"name": "fashion-mnist", "dir": str(w / "fm"), "download": False}, "train": {"batch_size": 8}}
    net = create_model("cifar_resnet20", num_classes=10, in_channels=1)
    save_atomic({"model": net.state_dict(), "config": config, "meta": meta}, w / "fm.pt")
    return ["evaluate", "--checkpoint", str(w / "fm.pt"), "--device", "cpu", "--workers", "0", "--batch-size", "50"]


@pytest.mark.parametrize("sig, line, code", [(signal.SIGTERM, "terminated", 143), (signal.SIGINT, "interrupted", 130)])
def test_a_signal_during_evaluate_is_one_line(slow_evaluation, sig, line, code):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnetlab", *slow_evaluation],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stdout.readline()  # "data: ..." once the command runs (torch imported, handler set)
    assert first.startswith("data:"), (first, proc.communicate()[1])
    time.sleep(0.5)  # inside the evaluation
    assert proc.poll() is None, "the evaluation ended before the signal: make it longer"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert err.strip().splitlines() == [line], err[-3000:]
