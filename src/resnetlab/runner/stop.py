"""Why a grid stops before it is done, and how its runs are told: one `Stop` per `run_jobs` call.

The causes: the wall-clock budget (`--budget-s`), SIGTERM (`kill`, a job scheduler) and SIGINT
(Ctrl-C). The first one wins and is the grid's answer: a budget stop returns the unfinished jobs (the
CLI says so and exits 124); a signal stop raises what the command's own handler would have raised
(`Terminated`: `terminated`, exit 143; `KeyboardInterrupt`: `interrupted`, exit 130). Either way no run
starts after it, and the runs in progress get SIGTERM: each checkpoints at its next step and returns,
so the same command resumes the grid.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from resnetlab.errors import Terminated

# The budget's SIGTERM again after this long, until the run in progress returns. Short: a first signal
# that comes while a run (or a batched group) is still opening is taken by the grid's handler, and a
# run that then trained on unsignalled would outlive the budget (a repeat only sets flags again).
RESIGNAL_S = 0.5
WATCH_S = 0.1  # how often a run's watcher looks at the grid's budget and flag
SIGNALS = ("SIGTERM", "SIGINT")


class Stop:
    """The first cause that stops the grid: None (none yet), "budget", "SIGTERM" or "SIGINT"."""

    def __init__(self, budget_s: float | None = None) -> None:
        self.deadline = time.monotonic() + budget_s if budget_s is not None else None
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    def due(self) -> bool:
        """True once the grid must stop (a signal came, or the budget is spent)."""
        if self.reason is None and self.deadline is not None and time.monotonic() >= self.deadline:
            self.request("budget")
        return self.reason is not None

    def end(self, left: list[Any], log: Callable) -> list[Any]:
        """The grid's answer once it stopped with `left` (jobs) unfinished: returns them for the
        budget, raises for a signal (after a line saying that the same command resumes them)."""
        names = ", ".join(j.name for j in left)
        if self.reason not in SIGNALS:
            log(f"[budget] stopped with {len(left)} run(s) unfinished: {names}")
            return left
        log(f"[stop]   {self.reason}: {len(left)} run(s) unfinished (checkpointed): {names}; run the same command")
        raise Terminated if self.reason == "SIGTERM" else KeyboardInterrupt


@contextlib.contextmanager
def catching_signals(stop: Stop, *, ctrl_c: bool) -> Iterator[None]:
    """While the grid runs, a SIGTERM that reaches it outside a run (between runs in this process, while
    a run sets up, or the parent of worker processes) becomes `stop.request("SIGTERM")`; a run in this
    process takes it with its own handler while it trains and reports it in its summary. Repeats only
    set the flag again. `ctrl_c`: SIGINT too (the parent of workers, which must stop them before it
    ends); in this process Ctrl-C keeps Python's KeyboardInterrupt outside a run, and a second Ctrl-C
    during a run ends it at once, as in `train`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGTERM, signal.SIGINT) if ctrl_c else (signal.SIGTERM,)
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.request(signal.Signals(signum).name))
                for sig in signals}  # fmt: skip
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def told_to_the_run(stop: Stop) -> Iterator[None]:
    """Around a run in this process: once the grid must stop (the budget is spent, or a SIGTERM reached
    the grid's handler because the run had not set its own up yet), SIGTERM to this process every
    RESIGNAL_S s until the block ends, so the run checkpoints and returns (the first may again fall to
    the grid's handler; a later one reaches the run)."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(WATCH_S):
            if stop.due():
                break
        while not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            done.wait(RESIGNAL_S)

    watcher = threading.Thread(target=watch, name="grid-stop", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
