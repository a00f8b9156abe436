"""Nothing lost, nothing mixed: a run killed with SIGKILL (or stopped by SIGTERM) and resumed ends
bit-identical to an uninterrupted run, with each step once in metrics.jsonl and TensorBoard; a second
process on a folder in use stops at once. Real processes, the CLI, the tiny fake source, CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnetlab.utils import checkpoint

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_fake_data import TINY  # noqa: E402

SETTINGS = [
    *TINY,
    "train.max_iters=60",
    "train.eval_every=10",
    "train.checkpoint_every=10",
    "optim.warmup_lr=0.02",  # warm-up and a milestone inside the run: their state must survive
    "optim.warmup_until_error=60",
    "optim.milestones=[45]",
]


def train(
    out: Path, *extra: str, sleep: float = 0.0, env: dict | None = None, settings: list[str] = SETTINGS
) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAKE_SLEEP": str(sleep), **(env or {})}
    cmd = [sys.executable, str(HERE / "train_fake_data.py"), "train", "--preset", "cifar10-resnet20"]
    cmd += ["--out", str(out), "--device", "cpu", "--set", *settings, *extra]  # extra: more "--set K=V" (new keys)
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    """Exit code and stdout + stderr."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.02)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return checkpoint.load(run / "final.pt")["model"]


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit for bit, BN running statistics included


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted, unshared run of SETTINGS."""
    out = tmp_path_factory.mktemp("ref") / "run"
    code, log = finish(train(out))
    assert code == 0, log
    return out


def tensorboard_steps(run: Path, tag: str) -> list[int]:
    """The steps TensorBoard shows for `tag` (its own reader: purges and all)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_killed_or_stopped_runs_resume_bit_identical(tmp_path, reference):
    killed = train(tmp_path / "killed", sleep=0.05)  # slow batches: time to stop it mid-run
    stopped = train(tmp_path / "stopped", sleep=0.05)

    # SIGKILL: no chance to save; the run continues from the last periodic checkpoint.
    wait_for(tmp_path / "killed" / "checkpoint.pt", killed)
    time.sleep(0.3)  # past the checkpoint: metrics and TensorBoard points that the resume must drop
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "final.pt").exists()
    assert 10 <= checkpoint.load(tmp_path / "killed" / "checkpoint.pt")["iteration"] < 60

    # SIGTERM (what schedulers send): checkpoint at the current iteration, exit 143, no traceback.
    wait_for(tmp_path / "stopped" / "checkpoint.pt", stopped)
    time.sleep(0.2)  # between two periodic checkpoints
    stopped.send_signal(signal.SIGTERM)
    code, log = finish(stopped)
    assert code == 128 + signal.SIGTERM, log
    assert "Traceback" not in log and "SIGTERM: stopped at iteration" in log
    assert checkpoint.load(tmp_path / "stopped" / "checkpoint.pt")["iteration"] < 60
    assert not (tmp_path / "stopped" / "final.pt").exists()

    at = {name: checkpoint.load(tmp_path / name / "checkpoint.pt")["iteration"] for name in ("killed", "stopped")}
    resumed = [train(tmp_path / name, "--resume") for name in ("killed", "stopped")]
    for name, proc in zip(("killed", "stopped"), resumed):
        code, log = finish(proc)
        assert code == 0, log
        assert f"resumed at iteration {at[name]} from {tmp_path / name / 'checkpoint.pt'}" in log, log
    ref_metrics = (reference / "metrics.jsonl").read_text().splitlines()
    for name in ("killed", "stopped"):
        assert_identical(final_weights(reference), final_weights(tmp_path / name))
        run_metrics = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["iter"] for x in run_metrics] == [10, 20, 30, 40, 50, 60]
        assert [drop_time(x) for x in run_metrics] == [drop_time(x) for x in ref_metrics]
        for tag in ("train/loss", "test/error"):
            assert tensorboard_steps(tmp_path / name, tag) == tensorboard_steps(reference, tag), (name, tag)
    assert tensorboard_steps(reference, "train/loss") == list(range(5, 61, 5))


def drop_time(line: str) -> dict:
    row = json.loads(line)
    row.pop("time")
    return row


def test_second_process_on_a_folder_in_use_stops_at_once(tmp_path, reference):
    """Two `train` processes on one --out: the second refuses with one line naming the first (and
    writes nothing); the first finishes exactly as a solo run. Then --resume beside it is refused too."""
    go = tmp_path / "go"
    first = train(tmp_path / "run", env={"FAKE_HOLD_AT": "25", "FAKE_HOLD_FILE": str(go)})
    wait_for(tmp_path / "run" / "checkpoint.pt", first)  # running, held at iteration 25
    for extra in ((), ("--resume",)):
        t0 = time.time()
        code, log = finish(train(tmp_path / "run", *extra))
        assert code == 2, log
        lines = [x for x in log.strip().splitlines() if x.startswith("error")]
        assert lines == [log.strip().splitlines()[-1]] and "Traceback" not in log, log
        assert f"is in use by pid {first.pid}" in lines[0], lines[0]
        assert time.time() - t0 < 60
    go.touch()
    code, log = finish(first)
    assert code == 0, log
    assert_identical(final_weights(reference), final_weights(tmp_path / "run"))
    ref_metrics = (reference / "metrics.jsonl").read_text().splitlines()
    run_metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [drop_time(x) for x in run_metrics] == [drop_time(x) for x in ref_metrics]


def temp_files(run: Path) -> set[str]:
    """save_atomic's temp files in `run` (`.checkpoint.pt.<random>.tmp`, ...)."""
    return {p.name for p in run.glob(".*.tmp")}


@pytest.mark.parametrize("kills", [pytest.param(5, marks=pytest.mark.slow), 2])
def test_kill_9_during_checkpoint_writes_then_resume_is_bit_identical(tmp_path, reference, kills):
    """SIGKILL at random moments of checkpoint writing (each write paused half-way, so the moments fall
    inside it), `--resume` after each: at most one temp file is ever left, the resume removes it, and
    the run ends bit-identical to the uninterrupted one with no temp file left."""
    import random

    rng = random.Random(kills)
    run = tmp_path / "run"
    env = {"FAKE_SLOW_SAVE": "0.3"}
    for k in range(kills):
        often = [s.replace("train.checkpoint_every=10", "train.checkpoint_every=5") for s in SETTINGS]
        proc = train(run, *(["--resume"] if k else []), env=env, settings=often)
        before = temp_files(run) if run.exists() else set()
        deadline = time.time() + 300
        while not (temp_files(run) - before if run.exists() else set()):  # a new write has begun
            assert proc.poll() is None, finish(proc)[1]
            assert time.time() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.35))  # somewhere in the write, or just after its rename
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(temp_files(run)) <= 1, temp_files(run)
        assert not (run / "final.pt").exists()
        if (run / "checkpoint.pt").exists():
            checkpoint.load(run / "checkpoint.pt")  # whole: the rename is the only way in
    code, log = finish(train(run, "--resume"))
    assert code == 0, log
    assert temp_files(run) == set()
    assert_identical(final_weights(reference), final_weights(run))
    ref_metrics = (reference / "metrics.jsonl").read_text().splitlines()
    assert [drop_time(x) for x in (run / "metrics.jsonl").read_text().splitlines()] == [
        drop_time(x) for x in ref_metrics
    ]
