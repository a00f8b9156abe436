"""Fixtures for the training tests: `tiny_cfg` and one intra-op thread (`fake_data`: tests/conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import train_fake_data  # noqa: E402


@pytest.fixture
def tiny_cfg():
    """`tiny_cfg("train.max_iters=20", ...)`: cifar10-resnet20's recipe on a ResNet-8, CPU."""
    from resnetlab.config import load_config

    def make(*overrides: str):
        return load_config("cifar10-resnet20", [*train_fake_data.TINY, "train.device=cpu", *overrides])

    return make


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The test machine is shared: one intra-op thread avoids oversubscription."""
