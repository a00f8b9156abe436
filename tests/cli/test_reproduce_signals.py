"""SIGTERM to a running `resnetlab reproduce`, in real processes: the runs checkpoint, the command says
`terminated` and exits 143 as every command does (not the budget's 124 or a TypeError, not exit 2),
and the same command resumes the grid. With `--procs 2` the signal reaches the grid's process (or its
whole process group) and the grid stops each worker once; without, the run in the process takes it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_analyze import jpeg_folder  # noqa: E402

# The child sets the dispositions it relies on: a shell starts background jobs (`pytest &`) with SIGINT
# ignored, and an ignored signal stays ignored in every process started from there.
CHILD = (
    "import signal, sys; signal.signal(signal.SIGTERM, signal.SIG_DFL); "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from resnetlab.cli import main; sys.exit(main(sys.argv[1:]))"
)


def reproduce(tmp_path: Path, *flags: str) -> tuple[list[str], Path]:
    data, out = jpeg_folder(tmp_path / "jpeg"), tmp_path / "rep"
    argv = ["reproduce", "degradation", "--dataset", "imagefolder", "--data-dir", str(data), "--out", str(out)]
    argv += ["--schedule", "short", "--iters", "100000", "--eval-every", "2", "--device", "cpu", "--quiet"]
    argv += ["--set", "train.batch_size=4", "train.eval_batch_size=8", "data.workers=0", *flags]
    return argv, out


def start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", CHILD, *argv]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def wait_for(check, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, (what, proc.communicate())
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.1)


def evaluated(run: Path) -> bool:
    log = run / "train.log"
    return log.is_file() and "iter 2:" in log.read_text()


# ~10 s each on an idle 2-core machine (three processes import torch), ~40 s on the loaded one: the
# group and in-process cases are slow-marked; tests/runner/test_stop.py covers their mechanism in seconds.
@pytest.mark.parametrize("to", ["the grid", pytest.param("its process group", marks=pytest.mark.slow)])
def test_sigterm_to_a_grid_of_worker_processes_is_terminated_143(tmp_path, to):
    argv, out = reproduce(tmp_path, "--procs", "2", "--threads", "1", "--nets", "resnet20", "plain20")
    proc = start(argv)
    runs = [out / "plain20-seed0", out / "resnet20-seed0"]
    wait_for(lambda: all(evaluated(r) for r in runs), proc, "evaluation at iteration 2 in both workers' logs")
    if to == "the grid":
        proc.send_signal(signal.SIGTERM)
    else:  # `timeout`, a terminal, a scheduler: the workers (in their own sessions) hear it from the grid
        os.killpg(proc.pid, signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, (stdout[-2000:], stderr[-2000:])
    assert stderr.strip().splitlines() == ["terminated"], stderr[-3000:]
    assert "budget" not in stdout and "[stop]   SIGTERM: 2 run(s) unfinished (checkpointed)" in stdout, stdout
    for run in runs:  # each worker took one SIGTERM, checkpointed and said so in its log
        assert (run / "checkpoint.pt").is_file() and not (run / "final.pt").exists()
        assert "SIGTERM: stopped at iteration" in (run / "train.log").read_text()


@pytest.mark.slow
def test_sigterm_to_a_grid_in_one_process_is_terminated_143(tmp_path):
    argv, out = reproduce(tmp_path, "--nets", "resnet20")
    proc = start(argv)
    lines = []

    def evaluating() -> bool:
        lines.append(proc.stdout.readline())
        return lines[-1].startswith("iter 2:")

    wait_for(evaluating, proc, "evaluation at iteration 2")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, (stdout[-2000:], stderr[-2000:])
    assert stderr.strip().splitlines() == ["terminated"], stderr[-3000:]
    assert "[stop]   SIGTERM: 1 run(s) unfinished (checkpointed): resnet20-seed0" in stdout, stdout
    assert (out / "resnet20-seed0" / "checkpoint.pt").is_file()
