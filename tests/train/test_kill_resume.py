"""Nothing lost: a run killed with SIGKILL (or stopped by SIGTERM) and resumed ends bit-identical to an
uninterrupted run. Real processes, the CLI, the tiny fake source, CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from resnetlab.utils import checkpoint

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_fake_data import TINY  # noqa: E402

SETTINGS = [
    *TINY,
    "train.max_iters=60",
    "train.eval_every=10",
    "train.checkpoint_every=10",
    "optim.warmup_lr=0.02",  # warm-up and a milestone inside the run: their state must survive
    "optim.warmup_until_error=60",
    "optim.milestones=[45]",
]


def train(out: Path, *extra: str, sleep: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAKE_SLEEP": str(sleep)}
    cmd = [sys.executable, str(HERE / "train_fake_data.py"), "train", "--preset", "cifar10-resnet20"]
    cmd += ["--out", str(out), "--device", "cpu", *extra, "--set", *SETTINGS]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    """Exit code and stdout + stderr."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.02)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run / "final.pt")["model"]


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit for bit, BN running statistics included


def test_killed_or_stopped_runs_resume_bit_identical(tmp_path):
    reference = train(tmp_path / "ref")
    killed = train(tmp_path / "killed", sleep=0.05)  # slow batches: time to stop it mid-run
    stopped = train(tmp_path / "stopped", sleep=0.05)

    # SIGKILL: no chance to save; the run continues from the last periodic checkpoint.
    wait_for(tmp_path / "killed" / "checkpoint.pt", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "final.pt").exists()
    assert 10 <= checkpoint.load(tmp_path / "killed" / "checkpoint.pt")["iteration"] < 60

    # SIGTERM (what schedulers send): checkpoint at the current iteration, clean exit, no traceback.
    wait_for(tmp_path / "stopped" / "checkpoint.pt", stopped)
    time.sleep(0.2)  # between two periodic checkpoints
    stopped.send_signal(signal.SIGTERM)
    code, log = finish(stopped)
    assert code == 128 + signal.SIGTERM, log
    assert "Traceback" not in log and "SIGTERM: stopped at iteration" in log
    assert checkpoint.load(tmp_path / "stopped" / "checkpoint.pt")["iteration"] < 60
    assert not (tmp_path / "stopped" / "final.pt").exists()

    resumed = [train(tmp_path / name, "--resume") for name in ("killed", "stopped")]
    for proc in (reference, *resumed):
        code, log = finish(proc)
        assert code == 0, log
    for name in ("killed", "stopped"):
        assert_identical(final_weights(tmp_path / "ref"), final_weights(tmp_path / name))
        ref_metrics = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
        run_metrics = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        assert run_metrics == [line for line in run_metrics if line] and len(run_metrics) == len(ref_metrics) == 6
