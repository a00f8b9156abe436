"""`reproduce --status`: each run's iteration, last test error and time, and the time left estimated
from the grid's own speed so far, read from the folders without writing anything."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
from pathlib import Path

import pytest

from resnetlab.cli import main
from resnetlab.config import Config, ModelConfig, apply_overrides, dump
from resnetlab.runner.plan import plan
from resnetlab.runner.status import status_lines
from resnetlab.utils import checkpoint


def stub_config(kind, depth):
    return Config(model=ModelConfig(name=f"cifar_{kind}{depth}"))


def _files(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_status_of_a_grid_part_trained(tmp_path):
    """Table 6 at 8 iterations: ResNet-20 done in 80 s, ResNet-110 checkpointed at iteration 4 after
    220 s. 300 s for 20 x 8 + 110 x 4 = 600 layer-iterations: 0.5 s each. Left: 56 x 8 x 0.5 = 224 s,
    44: 176, 32: 128, 110: 110 x 4 x 0.5 = 220; 748 s in one process, on two slots 374 s."""
    jobs = plan("table6", out=tmp_path, schedule_name="short", iters=8, config_fn=stub_config)
    by_name = {j.name: j for j in jobs}
    r20, r110 = by_name["resnet20-seed0"].out_dir, by_name["resnet110-seed0"].out_dir
    r20.mkdir(parents=True)
    (r20 / "final.pt").write_bytes(b"")
    rows = [{"iter": 4, "test_error": 50.0, "time": 40.0}, {"iter": 8, "test_error": 12.5, "time": 80.0}]
    (r20 / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"iter": 9, "te')
    r110.mkdir(parents=True)
    checkpoint.save_atomic({"model": {}, "iteration": 4, "elapsed": 220.0}, r110 / "checkpoint.pt")
    (r110 / "metrics.jsonl").write_text(json.dumps({"iter": 4, "test_error": 70.25, "time": 220.0}) + "\n")
    before = _files(tmp_path)

    lines = status_lines(jobs, slots=2)

    assert _files(tmp_path) == before
    table = {line.split()[0]: line.split()[1:] for line in lines[1:-1]}
    assert table["resnet20-seed0"] == ["done", "8/8", "(100%)", "12.50%", "0h01m", "0h00m"]
    assert table["resnet110-seed0"] == ["resume", "4/8", "(50%)", "70.25%", "0h04m", "0h04m"]
    assert table["resnet56-seed0"] == ["new", "0/8", "(0%)", "-", "-", "0h04m"]
    assert lines[-1].startswith("time left: about 0h06m with 2 run(s) at once (0h12m of one process)")


def test_a_folder_holding_another_recipes_run_counts_as_untrained(tmp_path):
    """The grid of the first test, and ResNet-44's folder holds a run of another lr, checkpointed at
    iteration 12 (past this grid's 8) after 1 s. `reproduce` refuses that folder (or trains the job
    anew with --rerun-changed): the row says `other`, nothing trained, and neither its iteration nor its
    speed changes the estimate (374 s on two slots, as without it)."""
    jobs = plan("table6", out=tmp_path, schedule_name="short", iters=8, config_fn=stub_config)
    by_name = {j.name: j for j in jobs}
    r20, r110, r44 = (by_name[f"resnet{d}-seed0"] for d in (20, 110, 44))
    r20.out_dir.mkdir(parents=True)
    (r20.out_dir / "final.pt").write_bytes(b"")
    rows = [{"iter": 4, "test_error": 50.0, "time": 40.0}, {"iter": 8, "test_error": 12.5, "time": 80.0}]
    (r20.out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r110.out_dir.mkdir(parents=True)
    checkpoint.save_atomic({"model": {}, "iteration": 4, "elapsed": 220.0}, r110.out_dir / "checkpoint.pt")
    (r110.out_dir / "metrics.jsonl").write_text(json.dumps({"iter": 4, "test_error": 70.25, "time": 220.0}) + "\n")
    r44.out_dir.mkdir(parents=True)
    dump(apply_overrides(r44.cfg, ["optim.lr=0.2"]), r44.out_dir / "config.yaml")
    checkpoint.save_atomic({"model": {}, "iteration": 12, "elapsed": 1.0}, r44.out_dir / "checkpoint.pt")
    rows = [{"iter": 6, "test_error": 5.0, "time": 0.5}, {"iter": 12, "test_error": 4.0, "time": 1.0}]
    (r44.out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert r44.state() == "other"

    lines = status_lines(jobs, slots=2)

    table = {line.split()[0]: line.split()[1:] for line in lines[1:-1]}
    assert table["resnet44-seed0"] == ["other", "0/8", "(0%)", "-", "-", "0h03m"]
    assert lines[-1].startswith("time left: about 0h06m with 2 run(s) at once (0h12m of one process)")


def test_the_estimate_takes_the_speed_of_the_latest_interval(tmp_path):
    """ResNet-20 checkpointed at 8 of 16 after 480 s: 400 s for its first 4 iterations (a loaded machine),
    80 s for the next 4. Its speed now is 80 / (20 x 4) = 1 s a layer-iteration, not 480 / 160 = 3:
    8 iterations left take 20 x 8 x 1 = 160 s."""
    [job] = plan("table6", out=tmp_path, schedule_name="short", iters=16, config_fn=stub_config, nets=["resnet20"])
    job.out_dir.mkdir(parents=True)
    checkpoint.save_atomic({"model": {}, "iteration": 8, "elapsed": 480.0}, job.out_dir / "checkpoint.pt")
    rows = [{"iter": 4, "test_error": 60.0, "time": 400.0}, {"iter": 8, "test_error": 40.0, "time": 480.0}]
    (job.out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    lines = status_lines([job])

    assert lines[1].split()[1:] == ["resume", "8/16", "(50%)", "40.00%", "0h08m", "0h03m"]
    assert lines[-1].startswith("time left: about 0h03m with 1 run(s) at once")


def test_status_from_the_command_line_creates_nothing(tmp_path, capsys):
    out = tmp_path / "grid"
    argv = ["reproduce", "table6", "--out", str(out), "--schedule", "short", "--iters", "8", "--device", "cpu"]
    assert main([*argv, "--status"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed[1:-1]] == [f"resnet{d}-seed0" for d in (20, 32, 44, 56, 110)]
    assert printed[-1] == "time left: not known until a run has trained (no checkpoint yet)"
    assert not out.exists()


def test_runs_trained_k_at_a_time_share_their_clock(tmp_path):
    """The first test's folders, as if trained with --batch-runs 2: each run's time is its group's
    shared clock, so a run's own share is half of it, and so is the time left (it was twice too long)."""
    jobs = plan("table6", out=tmp_path, schedule_name="short", iters=8, config_fn=stub_config)
    by_name = {j.name: j for j in jobs}
    r20, r110 = by_name["resnet20-seed0"].out_dir, by_name["resnet110-seed0"].out_dir
    r20.mkdir(parents=True)
    (r20 / "final.pt").write_bytes(b"")
    (r20 / "metrics.jsonl").write_text(json.dumps({"iter": 8, "test_error": 12.5, "time": 80.0}) + "\n")
    r110.mkdir(parents=True)
    checkpoint.save_atomic({"model": {}, "iteration": 4, "elapsed": 220.0}, r110 / "checkpoint.pt")
    (r110 / "metrics.jsonl").write_text(json.dumps({"iter": 4, "test_error": 70.25, "time": 220.0}) + "\n")
    alone, batched = status_lines(jobs, slots=2)[-1], status_lines(jobs, slots=2, batch_runs=2)[-1]
    assert alone.startswith("time left: about 0h06m with 2 run(s) at once (0h12m of one process)")
    assert batched.startswith("time left: about 0h03m with 2 run(s) at once (0h06m of one process)")


@pytest.mark.skipif(not Path("/proc/locks").is_file(), reason="the kernel's lock table is Linux's /proc/locks")
def test_a_run_that_a_process_holds_shows_as_running(tmp_path):
    """Two checkpointed runs, both with a lock file left by their last process; a second process
    holds ResNet-32's lock now (as a training run does). Only that one is `running`, at the iteration
    its train.log names; the other is `resume`, at its checkpoint's; the held lock is untouched (its
    holder keeps it, and status takes no lock itself)."""
    jobs = plan(
        "table6", out=tmp_path, schedule_name="short", iters=8, config_fn=stub_config, nets=["resnet20", "resnet32"]
    )
    for job in jobs:
        job.out_dir.mkdir(parents=True)
        checkpoint.save_atomic({"model": {}, "iteration": 4, "elapsed": 40.0}, job.out_dir / "checkpoint.pt")
        (job.out_dir / ".lock").write_text("pid 1 on elsewhere (started 2026-01-01 00:00:00)\n")
        # each log is past the checkpoint: where the running one is now, what the stopped one lost
        log = "iter 5: loss 2.3026, train error 90.00%, lr 0.1, 1.000 s/it\niter 6: test error 88.10%, train error"
        (job.out_dir / "train.log").write_text(log + " 89.00%, lr 0.1\nsaving...\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(jobs[1].out_dir / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        lines = status_lines(jobs)
        with open(jobs[0].out_dir / ".lock") as f:  # the idle folder's lock is free for a run to take
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
    states = {line.split()[0]: line.split()[1:3] for line in lines[1:-1]}
    assert states == {"resnet20-seed0": ["resume", "4/8"], "resnet32-seed0": ["running", "6/8"]}
    assert {line.split()[1] for line in status_lines(jobs)[1:-1]} == {"resume"}  # the holder is gone


def test_a_running_run_resumed_behind_its_log_shows_the_resumed_iteration(tmp_path):
    """A run killed at iteration 6 (its log says so) past its checkpoint at 4, then taken up again by a
    process that holds its lock: `running` at 4, where the new process resumed, until its log passes it."""
    (job,) = plan("table6", out=tmp_path, schedule_name="short", iters=8, config_fn=stub_config, nets=["resnet20"])
    job.out_dir.mkdir(parents=True)
    checkpoint.save_atomic({"model": {}, "iteration": 4, "elapsed": 40.0}, job.out_dir / "checkpoint.pt")
    (job.out_dir / ".lock").write_text("")
    log = job.out_dir / "train.log"
    log.write_text(
        "iter 5: loss 2.3026, train error 90.00%, lr 0.1, 1.000 s/it\niter 6: loss 2.3026, train error 89.00%, "
        f"lr 0.1, 1.000 s/it\nintra-op threads: 1\nresumed at iteration 4 from {job.out_dir / 'checkpoint.pt'}\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(job.out_dir / ".lock")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = status_lines([job])[1].split()[1:3]
        with open(log, "a") as f:
            f.write("iter 5: loss 2.3026, train error 90.00%, lr 0.1, 1.000 s/it\n")
        after = status_lines([job])[1].split()[1:3]
    finally:
        holder.kill()
        holder.wait()
    assert before == ["running", "4/8"] and after == ["running", "5/8"]


HOLD = """
import fcntl, sys, time
f = open(sys.argv[1], "r+")
fcntl.flock(f.fileno(), fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""
