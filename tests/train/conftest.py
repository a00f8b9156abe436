"""Fixtures for the training tests: the fake data source in place of `resnetlab.data.build_data`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import train_fake_data  # noqa: E402


@pytest.fixture
def fake_data(monkeypatch):
    """Training runs in this test read the tiny fake source (see train_fake_data.py)."""
    import resnetlab.train.loop as loop

    monkeypatch.setattr(loop, "build_data", train_fake_data.build_fake_data)
    return train_fake_data


@pytest.fixture
def tiny_cfg():
    """`tiny_cfg("train.max_iters=20", ...)`: cifar10-resnet20's recipe on a ResNet-8, CPU."""
    from resnetlab.config import load_config

    def make(*overrides: str):
        return load_config("cifar10-resnet20", [*train_fake_data.TINY, "train.device=cpu", *overrides])

    return make


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine is shared: one intra-op thread avoids oversubscription."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
