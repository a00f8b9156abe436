"""Multi-node as users launch it: two `torchrun` agents (`--nnodes 2 --nproc_per_node 1`, c10d
rendezvous on 127.0.0.1), gloo, CPU, the tiny fake source. Both finish; and when one node dies (its
agent and worker killed), the other ends within 60 s with one line and a checkpoint that resumes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resnetlab.utils import checkpoint

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_fake_data import TINY  # noqa: E402

pytestmark = pytest.mark.slow  # four Python processes with torch, twice: about a minute on 2 cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agents(out: Path, max_iters: int, sleep: float, logs: Path) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for node in range(2):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
        cmd += ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"test{port}"]
        cmd += [str(HERE / "train_fake_data.py"), "train", "--preset", "cifar10-resnet20", "--out", str(out)]
        cmd += ["--device", "cpu", "--set", *TINY, f"train.max_iters={max_iters}", "train.eval_every=10"]
        cmd += ["train.checkpoint_every=10"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "FAKE_SLEEP": str(sleep)}
        log = open(logs / f"agent{node}.log", "w")
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return procs


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def rank_of(pid: int) -> int | None:
    for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def test_two_torchrun_nodes_train_and_survive_the_loss_of_one(tmp_path):
    # 1. Both nodes train a few iterations and exit 0.
    procs = agents(tmp_path / "ok", 20, 0.0, tmp_path)
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [0, 0], (tmp_path / "agent0.log").read_text()[-3000:]
    assert checkpoint.load(tmp_path / "ok" / "final.pt")["iteration"] == 20

    # 2. Node of rank 1 dies (agent and worker, SIGKILL) after the first checkpoint.
    out = tmp_path / "lost"
    procs = agents(out, 400, 0.05, tmp_path)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists():
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.1)
    workers = {rank_of(w): (agent, w) for agent in procs for w in children(agent.pid)}
    dying_agent, dying_worker = workers[1]
    survivor = next(p for p in procs if p is not dying_agent)
    os.kill(dying_worker, signal.SIGKILL)
    dying_agent.kill()
    t0 = time.time()
    survivor.wait(timeout=60)
    assert time.time() - t0 < 60 and survivor.returncode != 0
    log = (tmp_path / f"agent{procs.index(survivor)}.log").read_text()
    ours = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "lost contact with another process" in ours[0], log[-3000:]
    reached = checkpoint.load(out / "checkpoint.pt")["iteration"]
    assert 10 <= reached < 400 and f"the last checkpoint is at iteration {reached}" in ours[0]

    # 3. The checkpoint resumes (here on one process: the global batch and data stream are the same).
    cmd = [sys.executable, str(HERE / "train_fake_data.py"), "train", "--out", str(out), "--resume"]
    cmd += ["--set", f"train.max_iters={reached + 10}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert checkpoint.load(out / "final.pt")["iteration"] == reached + 10
