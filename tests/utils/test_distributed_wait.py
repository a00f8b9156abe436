"""Waiting for rank 0 outlives the default group's timeout: two gloo processes whose default group
times out after 1.5 s (standing in for NCCL's 10 minutes, which decoding a large folder outlasts)
wait 3 s for rank 0 in `barrier`, `broadcast_object` and the data cache (rank 0 computes and writes,
rank 1 reads its file); the same wait on the default group times out, which shows the short timeout
is in force."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

CHILD = r"""
import datetime, os, sys, time
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.distributed.distributed_c10d as c10d

from resnetlab.data.cache import cached
from resnetlab.utils import distributed as dist

folder, rank = Path(sys.argv[1]), int(os.environ["RANK"])
(folder / f"ready{rank}").touch()  # start together: the store's rendezvous has the short timeout too
while not all((folder / f"ready{r}").exists() for r in (0, 1)):
    time.sleep(0.01)
c10d.default_pg_timeout = datetime.timedelta(seconds=1.5)
info, _ = dist.init_distributed("cpu")


def rank0_busy():
    if info.rank == 0:
        time.sleep(3)


rank0_busy()
dist.barrier()
print("barrier ok", flush=True)
rank0_busy()
print("broadcast", dist.broadcast_object("from rank 0" if info.rank == 0 else None), flush=True)


def compute():
    rank0_busy()
    return {"x": torch.full((2,), float(info.rank))}


value = cached(folder / "cache.pt", compute, key="k", rank=info.rank)
print("cache holds", value["x"].tolist(), flush=True)
rank0_busy()
try:
    tdist.barrier()  # the default group, its 1.5 s timeout
    print("default group ok", flush=True)
except Exception as e:
    print("default group failed:", type(e).__name__, str(e).splitlines()[0][:100], flush=True)
os._exit(0)  # the process group is broken on purpose: no orderly teardown
"""


def test_waiting_for_rank_0_is_not_cut_short_by_the_default_timeout(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    env["OMP_NUM_THREADS"] = "1"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path)],
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    waiting = outs[1]  # rank 1 waits each time
    assert "barrier ok" in waiting and "broadcast from rank 0" in waiting, outs
    assert "cache holds [0.0, 0.0]" in waiting, outs  # rank 0's file, read after waiting for it
    assert "default group failed" in waiting, outs  # the 1.5 s timeout was in force
    assert all(p.returncode == 0 for p in procs), outs
