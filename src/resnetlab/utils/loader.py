"""DataLoader workers that leave SIGTERM and SIGINT to the command.

A job scheduler's cancel, `timeout` and a terminal's Ctrl-C signal the whole process group, the
DataLoader workers too. torch's workers die on a SIGTERM that their parent did not send and stop on
Ctrl-C, so the command lost its data in the middle of a step: training could not finish the step and
checkpoint, and the command's SIGCHLD handler raised a worker error (a traceback) while it unwound.
With `quiet_worker` as `worker_init_fn` the workers ignore both; the command stops as it would with
`--workers 0` and shuts its workers down (they also end when the command dies: torch's watchdog).
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from torch.utils.data import DataLoader


def quiet_worker(worker_id: int) -> None:
    """`worker_init_fn` for every DataLoader of ours (it runs after torch set its worker handlers)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.excepthook = _quiet_when_the_command_left


def _quiet_when_the_command_left(kind: type[BaseException], error: BaseException, tb: Any) -> None:
    """A worker hands each batch's shared memory over a connection (multiprocessing's resource sharer
    thread, which reports its errors through sys.excepthook): a command that stops in the middle of a
    hand-over resets it (ConnectionError), which is no error of the worker's. Anything else is printed."""
    if not issubclass(kind, ConnectionError):
        sys.__excepthook__(kind, error, tb)


def data_loader(*args: Any, **kwargs: Any) -> DataLoader:
    """torch's `DataLoader(...)` with `quiet_worker` as its `worker_init_fn`: every loader of ours is
    made here (tests/test_loaders.py checks that no other module calls DataLoader itself)."""
    return DataLoader(*args, worker_init_fn=quiet_worker, **kwargs)
