"""The step runner both GPU-window scripts share (gpu_acceptance.py, gpu_cifar_section.py): standard
library only, so the CIFAR-section script still starts without torch."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_or_stop(proc: subprocess.Popen, timeout: float, *, grace: float) -> int:
    """Wait up to `timeout` s for `proc` (started with start_new_session=True); past it SIGTERM its
    process group (runs checkpoint and stop), SIGKILL `grace` s later. Returns its exit status, or 124
    when the time limit stopped it."""
    try:
        return proc.wait(timeout=max(0.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return 124


def run_steps(
    ctx: Any, steps: list[str], fns: dict[str, Callable], *, write: Callable, summary_md: Callable, out: Path
) -> int:
    """Run `steps` in order while `ctx.left()` leaves >= 5 s, recording each step's result in
    `ctx.results["steps"]` and writing the results after every step; print the summary; exit status
    1 when a step failed."""
    for name in steps:
        if ctx.left() < 5:
            ctx.results["steps"][name] = {"status": "skipped", "why": "out of time"}
            continue
        print(f"[{name}] starting, {ctx.left():.0f} s left", flush=True)
        try:
            ctx.results["steps"][name] = fns[name](ctx)
        except Exception as e:  # one step's failure must not lose the others' results
            ctx.results["steps"][name] = {"status": "failed", "why": f"{type(e).__name__}: {e}"}
        write(ctx)
    write(ctx)
    print(summary_md(ctx.results))
    failed = [n for n, st in ctx.results["steps"].items() if st["status"] == "failed"]
    if failed:
        print(f"failed steps: {', '.join(failed)} (logs in {out})")
    return 1 if failed else 0
