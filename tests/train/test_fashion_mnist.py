"""The acceptance run: cifar10-resnet20's recipe, 600 iterations on real Fashion-MNIST, CPU."""

from __future__ import annotations

import json
import time

import pytest

from resnetlab.config import load_config
from resnetlab.errors import UserError
from resnetlab.train import run_training


@pytest.mark.slow
def test_resnet20_recipe_600_iterations_on_fashion_mnist(tmp_path):
    """Measured on 2 shared CPU cores: see docs/train.md."""
    cfg = load_config(
        "cifar10-resnet20",
        ["data.name=fashion-mnist", "optim.milestones=[400]", "train.max_iters=600", "train.device=cpu"],
    )
    start = time.time()
    try:
        summary = run_training(cfg, tmp_path)
    except UserError as e:
        if "fashion-mnist" in str(e).lower() or "download" in str(e).lower():
            pytest.skip(f"Fashion-MNIST not available: {e}")
        raise
    print(f"test error {summary['test_error']:.2f}% after 600 iterations, {time.time() - start:.0f} s wall")
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["iter"] == 600
    assert summary["test_error"] < 23.0
