"""Stopping a run: SIGINT / SIGTERM agreed across ranks at a step boundary, and a lost peer process
reported in one line."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from resnetlab.errors import UserError
from resnetlab.utils import distributed as dist

if TYPE_CHECKING:
    from resnetlab.train.lifecycle.run import Run


class StopSignal:
    """SIGTERM / SIGINT set a flag; `poll()` returns the agreed signal name at a step boundary.

    With many processes each rank posts its flag (the signal number, 0 for none) in an asynchronous
    all-reduce (max) on a CPU-side gloo group and reads the result one step later, so no step waits on
    it and every rank stops at the same iteration. A second one falls through to Python's default.
    """

    def __init__(self, info: dist.DistInfo) -> None:
        self.info = info
        self.signum = 0
        self._previous: dict[int, Any] = {}
        self._pending = None
        self._vote = None
        self._group = dist.cpu_group() if info.enabled else None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = max(self.signum, signum)
        signal.signal(signum, self._second(signum))

    def _second(self, signum: int) -> Any:
        """What a second signal meets: the handler below every run's (K runs in one process each set
        one: the next one down would only set its flag again), and for a Ctrl-C that was ignored before
        (a process a shell started with `&`), Python's own: a second Ctrl-C stops at once."""
        previous = self._previous.get(signum)
        while isinstance(getattr(previous, "__self__", None), StopSignal):
            previous = previous.__self__._previous.get(signum)
        if previous in (None, signal.SIG_IGN):
            return signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        return previous

    def poll(self) -> str | None:
        agreed = self.signum
        if self.info.enabled:
            agreed = 0
            if self._pending is not None:
                self._pending.wait()
                agreed = int(self._vote.item())
            self._vote = torch.tensor([self.signum], dtype=torch.int64)
            self._pending = torch.distributed.all_reduce(
                self._vote, op=torch.distributed.ReduceOp.MAX, group=self._group, async_op=True
            )
        return signal.Signals(agreed).name if agreed else None

    def close(self) -> None:
        if self._pending is not None:
            with contextlib.suppress(Exception):
                self._pending.wait()
            self._pending = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


@contextlib.contextmanager
def lost_peers(run: Run) -> Iterator[None]:
    """A collective that fails because another process died becomes one line (no traceback)."""
    try:
        yield
    except torch.distributed.DistError as e:
        raise UserError(_lost_message(run, e)) from None
    except RuntimeError as e:
        if run.info.enabled and any(s in str(e) for s in ("gloo", "Connection", "NCCL", "closed", "timed out")):
            raise UserError(_lost_message(run, e)) from None
        raise


def _lost_message(run: Run, e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    where = (
        f"the last checkpoint is at iteration {run.last_checkpoint}: the same command with --resume continues it"
        if run.last_checkpoint is not None
        else "no checkpoint was written yet: the same command starts the run again"
    )
    return f"rank {run.info.rank}: lost contact with another process of this run ({first[:160]}); {where}"
