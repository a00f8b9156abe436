"""DataLoader workers that leave SIGTERM and SIGINT to the command.

A job scheduler's cancel, `timeout` and a terminal's Ctrl-C signal the whole process group, the
DataLoader workers too. torch's workers die on a SIGTERM that their parent did not send and stop on
Ctrl-C, so the command lost its data in the middle of a step: training could not finish the step and
checkpoint, and the command's SIGCHLD handler raised a worker error (a traceback) while it unwound.
With `quiet_worker` as `worker_init_fn` the workers ignore both; the command stops as it would with
`--workers 0` and shuts its workers down (they also end when the command dies: torch's watchdog).

Workers that ignore SIGTERM change how the command exits, on any path. A loader's iterator that is
still alive at exit (an error's traceback holds it; torch's re-raised worker errors are a reference
cycle, so it lives until the garbage collector runs) keeps its workers running, and multiprocessing's
exit handler stops daemonic children with SIGTERM and then waits for them: forever.
`_kill_workers_at_exit` runs before that handler and ends them with SIGKILL instead.

A signal that arrives while the workers are forked runs the command's handler inside an at-fork
callback (logging's), which reports the exception it raises as "ignored": the stop was lost and the
command ran on. While a loader starts its workers, SIGTERM and SIGINT are only noted, and raised again
once they are started. (Holding them with a signal mask is not enough: another thread of the command,
TensorBoard's writer say, takes the signal and the handler still runs in the callback.)
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit handler: before ours (atexit)
import signal
import sys
import threading
from typing import Any

from torch.utils.data import DataLoader

STOPS = {signal.SIGTERM, signal.SIGINT}


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
    made here (tests/utils/test_loader.py checks that no other module calls DataLoader itself)."""
    return _Loader(*args, worker_init_fn=quiet_worker, **kwargs)


class _Loader(DataLoader):
    def __iter__(self):  # starts the workers (on the first call, with persistent workers)
        with _stops_noted():
            return super().__iter__()


@contextlib.contextmanager
def _stops_noted():
    """SIGTERM and SIGINT only noted inside, raised again at the end under the handlers of before.
    Python runs handlers in the main thread only: forked from another thread, no handler runs in it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    before = {s: signal.getsignal(s) for s in STOPS}
    before = {s: h for s, h in before.items() if h not in (signal.SIG_IGN, None)}  # None: set outside Python
    for s in before:
        signal.signal(s, lambda signum, frame: noted.append(signum))
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(noted):
            signal.raise_signal(s)


def _kill_workers_at_exit() -> None:
    """End every daemonic child still alive (in this package only DataLoader workers are: no other
    code of ours starts multiprocessing children) with SIGKILL, which they cannot ignore, and reap it:
    what multiprocessing's exit handler does next with SIGTERM, which they ignore."""
    children = [p for p in multiprocessing.active_children() if p.daemon]
    if not children:
        return
    if threading.current_thread() is threading.main_thread():
        # torch's SIGCHLD handler would raise "DataLoader worker ... killed by signal" for each of them
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for p in children:
        p.kill()
    for p in children:
        p.join()


# atexit runs the callback registered last first: ours, then multiprocessing's (imported above).
atexit.register(_kill_workers_at_exit)
