"""Run the degradation grid's four jobs two at a time (one thread each), exactly as `plan` configures them."""

import os
import subprocess

from resnetlab.config import dump
from resnetlab.runner.plan import plan  # resnetlab.analysis.reproduce when this ran
from resnetlab.runner.pool import WORKER

jobs = plan(
    "degradation",
    out="runs/reproduce/degradation-fashion-mnist-600",
    dataset="fashion-mnist",
    schedule_name="short",
    iters=600,
    eval_every=100,
    device="cpu",
)
env = {**os.environ, "OMP_NUM_THREADS": "1"}
order = sorted(jobs, key=lambda j: -j.depth)  # the two 56-layer nets first, together
for pair in (order[:2], order[2:]):
    procs = []
    for job in pair:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        dump(job.cfg, job.out_dir / "job.yaml")
        extra = ["--resume"] if job.state() == "resume" else []
        if job.state() == "done":
            continue
        log = open(job.out_dir / "log.txt", "a")
        procs.append(
            subprocess.Popen(
                [*WORKER, str(job.out_dir / "job.yaml"), str(job.out_dir), *extra],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    for p in procs:
        print("exit", p.wait(), flush=True)
