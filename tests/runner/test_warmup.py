"""ResNet-110's warm-up in a grid (sec. 4.2): "we use 0.01 to warm up the training until the training
error is below 80% (about 400 iterations), and then go back to 0.1 and continue training". A grid's
110 (and 1202) run gets it from its preset, also in a shortened schedule; 20 to 56 layers do not.
Expected learning rates written from the paper's rule, not read from the schedule code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from resnetlab.runner.plan import plan
from resnetlab.runner.pool import run_jobs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))


def test_only_the_deepest_jobs_warm_up_also_in_a_short_schedule(tmp_path):
    jobs = plan("table6", out=tmp_path, schedule_name="short", iters=400, with_1202=True)  # the presets
    warm = {j.depth: (j.cfg.optim.warmup_lr, j.cfg.optim.warmup_until_error) for j in jobs}
    assert warm[110] == warm[1202] == (0.01, 80.0)
    assert all(warm[d][0] is None for d in (20, 32, 44, 56))
    by_depth = {j.depth: j.cfg for j in jobs}
    assert by_depth[110].optim.lr == 0.1 and by_depth[110].optim.milestones == (200, 300)  # then 0.1 and the schedule


def test_a_short_110_run_starts_at_0_01_and_a_20_run_at_0_1(tmp_path, fake_data):
    """The real presets of ResNet-20 and ResNet-110 on the fake 8x8 source, 4 iterations (milestones 2
    and 3), the training error logged and evaluated every iteration. `warmup_until_error=100`: any
    training error ends the warm-up at the first log, so the switch back to 0.1 is seen at once."""
    tiny = ["train.batch_size=8", "train.eval_batch_size=64", "train.log_every=1", "train.checkpoint_every=100"]
    tiny += ["optim.warmup_until_error=100"]
    jobs = plan("table6", out=tmp_path, schedule_name="short", iters=4, eval_every=1, device="cpu", overrides=tiny,
                nets=["resnet20", "resnet110"])  # fmt: skip
    assert run_jobs(jobs, log=lambda _: None) == []
    lrs = {j.depth: [row["lr"] for row in map(json.loads, (j.out_dir / "metrics.jsonl").open())] for j in jobs}
    # Row k holds the lr of the update of iteration k - 1: 0.1 (0.01 warming up), / 10 at 2 and at 3.
    assert lrs[20] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert lrs[110] == pytest.approx([0.01, 0.1, 0.01, 0.001])
    assert torch.load(jobs[1].out_dir / "final.pt", weights_only=True)["meta"]["model"] == "cifar_resnet110"
