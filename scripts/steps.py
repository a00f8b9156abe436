"""The step runner both GPU-window scripts share (gpu_acceptance.py, gpu_cifar_section.py): standard
library only, so the CIFAR-section script still starts without torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


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
