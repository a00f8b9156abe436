"""`detect train` shares the run lifecycle of `train`: real processes, the CLI, CPU, gloo.

SIGINT stops at a step boundary with a checkpoint (exit 130) and --resume ends bit-identical; a
non-finite loss is one line (and a run that died before its first checkpoint can simply be run
again); two ranks into a used folder both refuse, neither hangs.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from resnetlab.utils import checkpoint


def settings(data_dir: Path, *extra: str) -> list[str]:
    return [
        f"data.dir={data_dir}",
        "data.shapes_images=16",
        "train.batch_size=2",
        "model.box_batch_size_per_image=16",
        "train.eval_every=1000",
        *extra,
    ]


def detect_train(out: Path, data_dir: Path, *extra: str, env: dict | None = None, resume: bool = False):
    cmd = [sys.executable, "-m", "resnetlab", "detect", "train", "--preset", "shapes-cifar-c4", "--out", str(out)]
    cmd += ["--device", "cpu", *(["--resume"] if resume else []), "--set", *settings(data_dir, *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def error_lines(log: str) -> list[str]:
    assert "Traceback" not in log, log
    return [line for line in log.splitlines() if line.startswith("error")]


def test_sigint_then_resume_is_bit_identical(tmp_path):
    data = tmp_path / "data"
    run = ["train.max_iters=30", "train.checkpoint_every=2"]
    code, log = finish(detect_train(tmp_path / "ref", data, *run))  # also generates the shapes once
    assert code == 0, log
    proc = detect_train(tmp_path / "int", data, *run)
    deadline = time.time() + 300
    while not (tmp_path / "int" / "checkpoint.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    code, log = finish(proc)
    assert code == 130, log
    assert "SIGINT: stopped at iteration" in log and "Traceback" not in log
    stopped_at = checkpoint.load(tmp_path / "int" / "checkpoint.pt")["iteration"]
    assert 2 <= stopped_at < 30 and not (tmp_path / "int" / "final.pt").exists()

    code, log = finish(detect_train(tmp_path / "int", data, *run, resume=True))
    assert code == 0, log
    a = checkpoint.load(tmp_path / "ref" / "final.pt")["model"]
    b = checkpoint.load(tmp_path / "int" / "final.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_is_one_line_and_the_run_can_be_run_again(tmp_path):
    # lr 1e6 diverges within a few iterations, before the first checkpoint at 100.
    run = ("optim.lr=1e6", "optim.warmup_iters=0", "train.max_iters=20", "train.checkpoint_every=100")
    for _ in range(2):  # the same command again: no "already holds a run"
        code, log = finish(detect_train(tmp_path / "run", tmp_path / "data", *run))
        assert code == 2, log
        (line,) = error_lines(log)
        assert "loss is nan at iteration" in line or "loss is inf at iteration" in line, line
        assert "no checkpoint was written yet" in line, line
        assert not (tmp_path / "run" / "checkpoint.pt").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_into_a_used_folder_both_refuse(tmp_path):
    """Rank 0 decides; the verdict reaches rank 1, which stops with the same line (no hang)."""
    data = tmp_path / "data"
    code, log = finish(detect_train(tmp_path / "used", data, "train.max_iters=2"))
    assert code == 0, log
    port = free_port()
    ranks = []
    for rank in range(2):
        env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        ranks.append(detect_train(tmp_path / "used", data, "train.max_iters=2", env=env))
    t0 = time.time()
    results = [finish(proc, timeout=120) for proc in ranks]
    for code, log in results:
        assert code == 2, log
        (line,) = error_lines(log)
        assert "already holds a run" in line and "--resume" in line
    # Both processes start Python, torch and the process group; the refusal itself is immediate.
    assert time.time() - t0 < 120  # generous: the shared test machine runs at load 10+
