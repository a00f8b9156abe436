"""One unit of a `reproduce` grid in its own process (one per GPU or CPU slot): `python -m resnetlab.runner.worker
CONFIG.yaml OUT_DIR [CONFIG.yaml OUT_DIR ...] [--resume] [--threads T]`. One pair: `run_training`; several:
a batched group (`train_batched`, one computation). The parent sets CUDA_VISIBLE_DEVICES (a GPU slot) or
OMP_NUM_THREADS / MKL_NUM_THREADS and --threads (a CPU slot). The exit status is the runs' (143 after a
SIGTERM, once every run has checkpointed). When the grid's process dies, the worker gets SIGTERM
(`stop_with_the_grid`)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from resnetlab.config import from_dict, read_yaml

GRID_PID = "RESNETLAB_GRID_PID"  # the pool's process id, which it gives its workers


def stop_with_the_grid() -> None:
    """SIGTERM to this worker once the grid's process (GRID_PID) dies, killed or its terminal closed:
    the run checkpoints and stops, instead of training on alone past the budget and holding its
    folder so that the next `reproduce` finds it in use. Linux's PR_SET_PDEATHSIG; elsewhere nothing."""
    grid = os.environ.get(GRID_PID)
    if not grid or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != grid:  # it died before the call above
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m resnetlab.runner.worker")
    parser.add_argument("runs", nargs="+", type=Path, metavar="CONFIG.yaml OUT_DIR", help="one pair per run")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--threads", type=int, default=None, metavar="T", help="torch.set_num_threads(T)")
    args = parser.parse_args(argv)
    if len(args.runs) % 2:
        parser.error("give CONFIG.yaml OUT_DIR pairs")
    stop_with_the_grid()
    from resnetlab.train import run_training  # TF32 and every other setting: the config's (train.tf32)

    if args.threads is not None:
        import torch

        # Set here, not only through OMP_NUM_THREADS: torch caps that at the cores it sees (3 gave 2 on 2 cores).
        torch.set_num_threads(args.threads)
        print(f"intra-op threads: {torch.get_num_threads()}", flush=True)
    cfgs = [from_dict(read_yaml(path)) for path in args.runs[::2]]
    outs = args.runs[1::2]
    if len(cfgs) == 1:
        summaries = [run_training(cfgs[0], outs[0], resume=args.resume)]
    else:
        from resnetlab.train.batched import train_batched

        summaries = train_batched(cfgs, outs, resume=args.resume)
    return max(s["exit_code"] for s in summaries)


if __name__ == "__main__":
    from resnetlab.errors import guarded  # errors as one line in the run's train.log, as `resnetlab` prints them

    raise SystemExit(guarded(main))
