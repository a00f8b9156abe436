"""The runner tests' tiny runs train on fake data, one thread."""

from __future__ import annotations

import pytest


@pytest.fixture
def fake_data(fake_data, one_thread):
    """training reads fake data (`train_fake_data`) in place of a data set, with one intra-op thread."""
    return fake_data
