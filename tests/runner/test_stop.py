"""How a grid stops early: the budget, or a signal (SIGTERM, Ctrl-C) that the run in progress takes
itself or that reaches the grid first (between runs, while a run sets up, the parent of workers).
A budget stop returns the unfinished runs; a signal stop raises what the command's handler raises."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from resnetlab.errors import Terminated, UserError
from resnetlab.runner import pool
from resnetlab.runner.plan import plan
from resnetlab.runner.pool import run_jobs

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runner_stubs import SlowTrainer, tiny_config  # noqa: E402


@pytest.mark.parametrize("sig, raised", [("SIGTERM", Terminated), ("SIGINT", KeyboardInterrupt)])
def test_an_interrupted_run_stops_the_grid(tmp_path, sig, raised):
    """A run that took a signal itself (checkpointed, returned) stops the grid with what the command's
    own handler raises: `terminated` 143 / `interrupted` 130, as every command (not a budget stop)."""
    jobs = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config)
    calls, lines = [], []

    def stopped(cfg, out_dir, *, resume=False):
        calls.append(out_dir)
        return {"interrupted": sig}

    with pytest.raises(raised):
        run_jobs(jobs, train_fn=stopped, log=lines.append)
    assert len(calls) == 1
    assert lines[-1].startswith(f"[stop]   {sig}: 4 run(s) unfinished (checkpointed): plain20-seed0, ")


@pytest.mark.parametrize("late", [0.0, 0.5])
def test_the_budget_stops_a_run_cleanly_and_the_grid_resumes(tmp_path, monkeypatch, late):
    """late=0.5: the first SIGTERM comes before the run set its handler up (it is taken by the grid's),
    the next one, a moment later, stops the run."""
    from resnetlab.runner import stop

    monkeypatch.setattr(stop, "RESIGNAL_S", 0.2)
    jobs = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config)
    trainer = SlowTrainer(late=late)
    lines = []
    left = run_jobs(jobs, train_fn=trainer, log=lines.append, budget_s=0.3)
    assert [j.name for j in left] == [j.name for j in jobs] and trainer.calls == [("plain20-seed0", False)]
    assert "[budget] stopped with 4 run(s) unfinished" in lines[-1]
    assert jobs[0].state() == "resume"
    assert run_jobs(jobs, train_fn=trainer, log=lambda _: None) == []  # the next window
    assert trainer.calls[1] == ("plain20-seed0", True) and all(j.state() == "done" for j in jobs)
    with pytest.raises(UserError, match="--budget-s must be > 0"):
        run_jobs(jobs, train_fn=trainer, log=lambda _: None, budget_s=0)


STOPPABLE_WORKER = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[2])
def stop(*_):
    (out / "checkpoint.pt").write_bytes(b"")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
(out / "started").write_text(" ".join(sys.argv[3:]))
time.sleep(60)
(out / "final.pt").write_bytes(b"")
"""


def test_the_budget_stops_worker_processes(tmp_path):
    jobs = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config)
    (tmp_path / "worker.py").write_text(STOPPABLE_WORKER)
    worker = (sys.executable, str(tmp_path / "worker.py"))
    left = run_jobs(jobs, gpus=1, jobs_per_gpu=2, worker=worker, log=lambda _: None, budget_s=3)
    assert sorted(j.name for j in left) == sorted(j.name for j in jobs)  # no failure raised
    started = [j for j in jobs if (j.out_dir / "started").is_file()]
    assert [j.name for j in started] == ["plain56-seed0", "resnet56-seed0"]  # two slots, the longest; then none
    assert all((j.out_dir / "checkpoint.pt").is_file() for j in started)  # their SIGTERM path ran
    assert (started[0].out_dir / "started").read_text() == ""  # no flags: TF32 is train.tf32 in the config
    assert all(j.state() == "resume" for j in started)


def test_a_run_that_fails_as_the_budget_stops_it_is_named_not_counted_as_checkpointed(tmp_path):
    """Told to stop, a worker exits 1 instead of checkpointing (e.g. its disk is full): the grid says
    which runs failed (exit 1) after the budget's line for the others, instead of returning them among
    the "checkpointed" unfinished runs."""
    jobs = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config)
    (tmp_path / "worker.py").write_text(STOPPABLE_WORKER.replace("sys.exit(143)", "sys.exit(1)"))
    lines = []
    with pytest.raises(UserError, match=r"^2 run\(s\) failed: plain56-seed0, resnet56-seed0$"):
        run_jobs(jobs, procs=2, threads=1, worker=(sys.executable, str(tmp_path / "worker.py")), log=lines.append,
                 budget_s=3)  # fmt: skip
    assert [line for line in lines if line.startswith("[budget]")] == [
        "[budget] stopped with 2 run(s) unfinished: plain20-seed0, resnet20-seed0"
    ]
    assert sum("failed (exit 1)" in line for line in lines) == 2


def test_a_worker_stopped_before_it_set_its_handler_up_is_unfinished_not_failed(tmp_path):
    """The budget's SIGTERM reaches a worker still importing torch (seconds, with no handler yet): it
    dies of the signal (exit -15) with nothing to save. That is a stopped run, as 143 is: the grid
    exits 124 with it among the unfinished, not 2 with "failed"."""
    jobs = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config)
    (tmp_path / "worker.py").write_text("import time\ntime.sleep(60)\n")  # no handler: SIGTERM's default
    lines = []
    left = run_jobs(jobs, procs=2, threads=1, worker=(sys.executable, str(tmp_path / "worker.py")),
                    log=lines.append, budget_s=1)  # fmt: skip
    assert sorted(j.name for j in left) == sorted(j.name for j in jobs)
    assert not any("failed" in line for line in lines)


GRID = """
import sys
sys.path.insert(0, sys.argv[3])
from runner_stubs import tiny_config
from resnetlab.runner.plan import plan
from resnetlab.runner.pool import run_jobs
jobs = plan("degradation", out=sys.argv[1], schedule_name="short", iters=8, config_fn=tiny_config)
run_jobs(jobs, procs=2, threads=1, worker=(sys.executable, sys.argv[2]), log=print)
"""


def test_workers_checkpoint_and_stop_when_the_grid_process_is_killed(tmp_path):
    """kill -9 of the grid (or its terminal closed): its workers, in their own sessions, get SIGTERM
    from the kernel (PR_SET_PDEATHSIG, `stop_with_the_grid`), checkpoint and stop, instead of training
    on alone with their folders locked. The stub workers would otherwise sleep 60 s."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    (tmp_path / "grid.py").write_text(GRID)
    worker = STOPPABLE_WORKER.replace(
        '(out / "started")',
        "from resnetlab.runner.worker import stop_with_the_grid\nstop_with_the_grid()\n"
        '(out / "pid").write_text(str(__import__("os").getpid()))\n(out / "started")',
    )
    (tmp_path / "worker.py").write_text(worker)
    out = tmp_path / "grid"
    argv = [
        sys.executable,
        str(tmp_path / "grid.py"),
        str(out),
        str(tmp_path / "worker.py"),
        str(Path(__file__).parent),
    ]
    grid = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    started = [out / name / "started" for name in ("plain56-seed0", "resnet56-seed0")]
    pids = []
    try:
        deadline = time.monotonic() + 60
        while not all(p.is_file() for p in started) and time.monotonic() < deadline and grid.poll() is None:
            time.sleep(0.05)
        assert all(p.is_file() for p in started), grid.poll()
        pids = [int((p.parent / "pid").read_text()) for p in started]
        grid.kill()
        grid.wait()
        deadline = time.monotonic() + 10
        while not all((p.parent / "checkpoint.pt").is_file() for p in started) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all((p.parent / "checkpoint.pt").is_file() for p in started)  # their SIGTERM path ran
        assert not any((p.parent / "final.pt").exists() for p in started)
    finally:
        grid.kill()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_sigterm_while_a_run_sets_up_still_stops_it(tmp_path, monkeypatch):
    """SIGTERM comes 0.1 s into a run that sets its handler up at 0.5 s (reading data, building the
    net): the grid's handler takes it, and the run is told again once it listens, instead of training
    to its end. No other run starts; `Terminated` is raised. (Ctrl-C there is Python's KeyboardInterrupt
    at once: nothing has trained yet.)"""
    sig, raised = signal.SIGTERM, Terminated
    from resnetlab.runner import stop

    monkeypatch.setattr(stop, "RESIGNAL_S", 0.2)
    jobs = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config)
    trainer = SlowTrainer(late=0.5)
    timer = threading.Timer(0.1, lambda: os.kill(os.getpid(), sig))
    timer.start()
    lines = []
    with pytest.raises(raised):
        run_jobs(jobs, train_fn=trainer, log=lines.append)
    timer.join()
    assert trainer.calls == [("plain20-seed0", False)] and jobs[0].state() == "resume"
    assert lines[-1].startswith(f"[stop]   {sig.name}: 4 run(s) unfinished (checkpointed): plain20-seed0,")


@pytest.mark.parametrize("sig, raised", [(signal.SIGTERM, Terminated), (signal.SIGINT, KeyboardInterrupt)])
def test_a_signal_to_the_parent_of_workers_stops_them_and_is_raised(tmp_path, monkeypatch, sig, raised):
    """`kill` or Ctrl-C reaches the grid's process (its workers sit in their own sessions): no run starts
    after it, each running worker gets one SIGTERM and checkpoints, and the signal's answer is raised:
    not the budget's return (before: `[budget]` and a TypeError in the CLI)."""
    monkeypatch.setattr(pool, "POLL_S", 0.05)
    jobs = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config)
    (tmp_path / "worker.py").write_text(STOPPABLE_WORKER)
    worker = (sys.executable, str(tmp_path / "worker.py"))
    first = [j.out_dir / "started" for j in jobs if j.depth == 56]  # the longest, started first

    def signal_once_started() -> None:
        while not all(p.is_file() for p in first):
            time.sleep(0.05)
        os.kill(os.getpid(), sig)

    timer = threading.Thread(target=signal_once_started, daemon=True)
    timer.start()
    lines = []
    with pytest.raises(raised):
        run_jobs(jobs, procs=2, threads=1, worker=worker, log=lines.append)
    timer.join()
    assert sorted(j.name for j in jobs if (j.out_dir / "started").is_file()) == ["plain56-seed0", "resnet56-seed0"]
    assert all((p.parent / "checkpoint.pt").is_file() for p in first)  # their SIGTERM path ran
    assert not any("budget" in line for line in lines)
    assert lines[-1].startswith(f"[stop]   {sig.name}: 4 run(s) unfinished (checkpointed): ")


def test_an_error_of_the_pool_itself_stops_its_workers_first(tmp_path, monkeypatch):
    """Workers sit in their own sessions, so nothing else would stop them: when the pool fails (here it
    cannot start the second run once the first is training), each running worker gets SIGTERM and
    checkpoints before the error goes up, instead of training on alone."""
    monkeypatch.setattr(pool, "POLL_S", 0.05)
    jobs = plan("degradation", out=tmp_path, schedule_name="short", iters=8, config_fn=tiny_config)
    (tmp_path / "worker.py").write_text(STOPPABLE_WORKER)
    first = next(j for j in jobs if j.name == "plain56-seed0")  # the longest: started first
    real_start = pool._start

    def start(unit, slot, worker, log):
        if unit[0] is first:
            return real_start(unit, slot, worker, log)
        while not (first.out_dir / "started").is_file():  # the first worker is training
            time.sleep(0.05)
        raise OSError("no space left on device")

    monkeypatch.setattr(pool, "_start", start)
    with pytest.raises(OSError, match="no space left"):
        run_jobs(jobs, procs=2, threads=1, worker=(sys.executable, str(tmp_path / "worker.py")), log=lambda _: None)
    assert (first.out_dir / "checkpoint.pt").is_file()  # its SIGTERM path ran before the error went up
