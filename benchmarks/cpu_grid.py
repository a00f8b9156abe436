"""Train some runs of a `resnetlab reproduce` grid on the CPU, several processes at once, then let
`reproduce` (same options) write the table, curves and fig. 7 from the finished runs.

`reproduce` runs one run after another on a machine without a GPU, each with all cores; on a small
shared CPU, N processes of one thread each finish a grid sooner (README: one intra-op thread was up to
3x faster than two on a shared CPU). The runs are the grid's own (`reproduce.plan`: same configs, same
folders), so `reproduce` afterwards reuses them instead of training again, and an interrupted run is
resumed by running this again.

    python benchmarks/cpu_grid.py degradation --dataset imagefolder --data-dir /data/cifar10-jpeg \
        --schedule short --iters 4000 --seeds 2 --nets resnet20 plain20 --procs 2 --out runs/real
    resnetlab reproduce degradation ... (the same options, printed at the end)
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time

from resnetlab.analysis.reproduce import WORKER, plan
from resnetlab.config import dump


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("grid")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--schedule", default="short", choices=("paper", "short"))
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=None)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--nets", nargs="+", default=None, help="e.g. resnet20 plain20 (default: the whole grid)")
    p.add_argument("--procs", type=int, default=2, help="runs at once")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per run")
    p.add_argument("--out", required=True)
    p.add_argument("--set", nargs="+", default=[], dest="overrides")
    a = p.parse_args()

    jobs = plan(
        a.grid,
        out=a.out,
        seeds=a.seeds,
        dataset=a.dataset,
        schedule_name=a.schedule,
        iters=a.iters,
        eval_every=a.eval_every,
        device="cpu",
        overrides=a.overrides,
        data_dir=a.data_dir,
    )
    if a.nets:
        jobs = [j for j in jobs if f"{j.kind}{j.depth}" in a.nets]
    jobs.sort(key=lambda j: j.seed)  # seed 0 of every network first: a whole grid as early as possible
    todo = [j for j in jobs if j.state() in ("new", "resume")]
    other = [j.name for j in jobs if j.state() == "other"]
    if other:
        print(f"error: {', '.join(other)} hold runs of another recipe; choose another --out", file=sys.stderr)
        return 2
    print(f"{len(jobs)} runs, {len(todo)} to train, {a.procs} at once with {a.threads} thread(s) each")
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads)}
    running: list[tuple[str, subprocess.Popen, float]] = []
    start = time.perf_counter()
    failed = []
    while todo or running:
        while todo and len(running) < a.procs:
            job = todo.pop(0)
            job.out_dir.mkdir(parents=True, exist_ok=True)
            cfg_path = job.out_dir.parent / f".{job.name}.yaml"
            dump(job.cfg, cfg_path)
            resume = ["--resume"] if job.state() == "resume" else []
            log = open(job.out_dir.parent / f"{job.name}.log", "a")  # noqa: SIM115 (closed with the process)
            proc = subprocess.Popen(
                [*WORKER, str(cfg_path), str(job.out_dir), *resume], stdout=log, stderr=log, env=env
            )
            running.append((job.name, proc, time.perf_counter()))
            print(f"started {job.name}")
        time.sleep(5)
        for item in list(running):
            name, proc, t0 = item
            if proc.poll() is not None:
                running.remove(item)
                status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                print(f"{name}: {status} in {time.perf_counter() - t0:.0f} s")
                if proc.returncode:
                    failed.append(name)
    print(f"all finished in {time.perf_counter() - start:.0f} s")
    cmd = ["resnetlab", "reproduce", a.grid, "--dataset", a.dataset, "--schedule", a.schedule, "--seeds", str(a.seeds)]
    cmd += ["--out", a.out, "--device", "cpu"]
    cmd += ["--data-dir", a.data_dir] if a.data_dir else []
    cmd += ["--iters", str(a.iters)] if a.iters else []
    cmd += ["--eval-every", str(a.eval_every)] if a.eval_every else []
    cmd += ["--set", *a.overrides] if a.overrides else []
    print("the table, curves and fig. 7 (reuses the finished runs):\n  " + shlex.join(cmd))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
