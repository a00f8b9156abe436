"""Two processes with torchrun on CPU (gloo): DDP runs, only rank 0 writes, and the model learns."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_fake_data import TINY  # noqa: E402

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not installed")
def test_torchrun_two_processes_on_cpu(tmp_path):
    out = tmp_path / "run"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", str(HERE / "train_fake_data.py"), "train"]
    cmd += ["--preset", "cifar10-resnet20", "--out", str(out), "--device", "cpu", "--set", *TINY]
    cmd += ["train.max_iters=40", "train.eval_every=10", "train.checkpoint_every=20"]  # global batch 16 = 2 x 8
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["iter"] for m in metrics] == [10, 20, 30, 40]  # one writer: no duplicated lines
    assert metrics[-1]["train_loss"] < 0.7 * metrics[0]["train_loss"]
    assert metrics[-1]["test_error"] < 30  # 4 classes: chance is 75%
    assert (out / "final.pt").exists()
    assert proc.stdout.count("done:") == 1  # only rank 0 prints the summary
