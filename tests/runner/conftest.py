"""The runner tests' tiny runs train on fake data, one thread."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
import train_fake_data  # noqa: E402


@pytest.fixture
def fake_data(monkeypatch):
    """training reads fake data (`train_fake_data`) in place of a data set, with one intra-op thread."""
    import resnetlab.train.loop as loop

    monkeypatch.setattr(loop, "build_data", train_fake_data.build_fake_data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
