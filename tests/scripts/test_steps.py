"""scripts/steps.py wait_or_stop: a command past its time is stopped with its whole process group, politely
first (SIGTERM, so a run checkpoints), by force after the grace; the dry runs never reach the limit."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from steps import wait_or_stop  # noqa: E402


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.PIPE, text=True)


def test_a_command_within_its_time_gives_its_own_status():
    assert wait_or_stop(start("import sys; sys.exit(3)"), 30, grace=1) == 3


def test_past_its_time_the_whole_group_gets_sigterm_and_124():
    # The parent starts a child in the same group and prints its pid; both must be gone afterwards.
    proc = start(
        "import subprocess, sys, time\n"
        "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(c.pid, flush=True); time.sleep(60)"
    )
    child = int(proc.stdout.readline())
    t0 = time.monotonic()
    assert wait_or_stop(proc, 0.5, grace=10) == 124
    assert time.monotonic() - t0 < 8  # SIGTERM was enough: no wait for the grace
    for _ in range(50):
        if not alive(child):
            break
        time.sleep(0.1)
    assert not alive(child)


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace():
    proc = start(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    assert wait_or_stop(proc, 0.2, grace=1) == 124
    took = time.monotonic() - t0
    assert 1.0 <= took < 10
    assert proc.returncode == -9
