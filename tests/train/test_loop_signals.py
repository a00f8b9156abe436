"""A real `train` process off a terminal (the CLI with the tiny fake source, CPU): a log line every
`train.log_every` iterations, and a second Ctrl-C during the last evaluation stops it at once.

The command sets its own Ctrl-C disposition (FAKE_SIGINT) before it starts, so these tests check the
same thing whether pytest runs in a terminal or in the background (where SIGINT arrives ignored)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from resnetlab.utils import checkpoint

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_fake_data import TINY  # noqa: E402

EVAL_S = 8  # the last evaluation: 8 batches of 8 test images, a second each (FAKE_EVAL_SLEEP)
LOG_LINE = re.compile(r"iter (\d+): loss \d+\.\d{4}, train error \d+\.\d\d%, lr 0\.1, \d+\.\d{3} s/it")


def start(out: Path, disposition: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "FAKE_SIGINT": disposition}
    env["FAKE_EVAL_SLEEP"] = str(EVAL_S / 8)
    cmd = [sys.executable, str(HERE / "train_fake_data.py"), "train", "--preset", "cifar10-resnet20"]
    tiny = [o for o in TINY if not o.startswith(("train.log_every=", "train.eval_batch_size="))]
    cmd += ["--out", str(out), "--device", "cpu", "--set", *tiny, "train.max_iters=3", "train.log_every=1"]
    cmd += ["train.eval_every=1000", "train.checkpoint_every=1", "train.eval_batch_size=8"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# "ignore": a command a shell script started with `&` (SIGINT ignored when Python starts); the old
# handler gave the second Ctrl-C back to that, so both were ignored. "default": a terminal's.
@pytest.mark.parametrize("disposition", ["ignore", pytest.param("default", marks=pytest.mark.slow)])
def test_off_a_terminal_log_lines_then_a_second_ctrl_c_in_the_last_evaluation_stops_at_once(tmp_path, disposition):
    out = tmp_path / "run"
    proc = start(out, disposition)
    lines = []
    for line in proc.stdout:  # stdout and stderr are pipes: no progress bar, a log line per iteration
        lines.append(line.rstrip("\n"))
        if line.startswith("iter 3: loss"):
            break  # the last step is done and logged: its evaluation starts now
    assert [int(m.group(1)) for m in map(LOG_LINE.fullmatch, lines) if m] == [1, 2, 3], (lines, proc.stderr.read())
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # the last step is done: the run finishes after its evaluation ...
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # ... unless a second Ctrl-C stops it at once
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert err.strip().splitlines() == ["interrupted"], err[-3000:]
    assert "test error" not in rest and not (out / "final.pt").exists()  # the evaluation did not finish
    assert checkpoint.load(out / "checkpoint.pt")["iteration"] == 2  # the last step's comes after its evaluation
