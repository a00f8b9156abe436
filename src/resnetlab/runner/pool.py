"""Running a grid's jobs: in this process one after another, or N worker processes at once.

- In this process (the CPU, or one GPU): the jobs in the grid's order, each `run_training` (or
  `train_batched` for a batched group), told to stop by SIGTERM when the grid must (`stop.told_to_the_run`).
- Worker processes (several GPUs, `jobs_per_gpu` > 1, or `procs=N` on the CPU): a small pool of slots,
  each running one job at a time as `python -m resnetlab.runner.worker CONFIG.yaml OUT_DIR ...`. The
  jobs start **longest first** (depth x iterations left, a resumed run counting only what it has left):
  a ResNet-110 started last would leave the other slots idle while it trains alone, so N slots finish
  together only when the long runs go first.

Batched runs (`batch_runs=K`): runs whose networks stack (a net's seeds, a ResNet and its plain twin of
the same depth: option A gives them identical layer shapes) train K at a time as one computation
(`resnetlab.train.batched.train_batched`), each still in its own ordinary folder. Groups are formed in
grid order, so the same command forms the same groups again; a group resumes together when its runs
are at the same point (the same checkpoint iteration, or all new), otherwise its runs go one by one,
and the log says so. A group is one job for the budget, `jobs_per_gpu` and `procs`.

Stopping early (the budget, SIGTERM, Ctrl-C): `resnetlab.runner.stop`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from resnetlab.config import apply_overrides, dump
from resnetlab.errors import UserError, one_line
from resnetlab.runner.plan import Job
from resnetlab.runner.stop import Stop, catching_signals, told_to_the_run
from resnetlab.runner.worker import GRID_PID
from resnetlab.utils.device import usable_cores

TrainFn = Callable[..., Any]  # run_training(cfg, out_dir, *, resume=False)
BatchedFn = Callable[..., list[Any]]  # train_batched(cfgs, out_dirs, *, resume=False)

# A worker given SIGTERM checkpoints after the step, or the evaluation, in progress: ResNet-110's
# evaluation of 10,000 test images takes about 1.5 minutes on a quiet EPYC core, 3 under load (its
# forward pass is about a third of a training step, 3.2 s for 128 images there). Past this, it hangs.
KILL_AFTER_S = 600.0
POLL_S = 0.25  # how often the pool looks at its workers
# A worker's exit once told to stop: done, checkpointed, killed, or ended by the SIGTERM itself before
# its run set a handler up (seconds of imports and data: nothing trained, nothing to save)
STOPPED = (0, 143, -signal.SIGKILL, -signal.SIGTERM)
WORKER = (sys.executable, "-m", "resnetlab.runner.worker")  # + CONFIG.yaml OUT_DIR [CONFIG OUT ...] [--resume]


def run_jobs(
    jobs: list[Job],
    *,
    train_fn: TrainFn | None = None,
    batched_fn: BatchedFn | None = None,
    gpus: int = 0,
    jobs_per_gpu: int = 1,
    procs: int = 1,
    threads: int | None = None,
    batch_runs: int = 1,
    log: Callable = print,
    worker: tuple[str, ...] = WORKER,
    budget_s: float | None = None,
) -> list[Job]:
    """Run every unfinished job: in this process one after another (CPU, one GPU), or as
    subprocesses (`worker CONFIG.yaml OUT_DIR [--resume]` with `CUDA_VISIBLE_DEVICES=i`), `jobs_per_gpu`
    at a time on each GPU, when that makes more than one at a time. Small CIFAR nets leave a large GPU
    mostly idle between their kernels, so several runs sharing one GPU can finish a grid sooner.

    `procs=N` (CPU runs, `gpus=0`): N worker subprocesses at once, each with `threads` intra-op
    threads (default: the usable cores // N, at least 1). With `procs=1` the runs stay in this
    process, with `threads` intra-op threads when given (else torch's default).

    `batch_runs=K`: up to K runs whose networks stack train as one computation (`batch_groups`), with
    `batched_fn` (default `train_batched`) in this process or one worker given all their CONFIG OUT_DIR
    pairs; such a group counts as one job for `jobs_per_gpu` and the budget.
    `budget_s`: wall-clock seconds from now; past them no run starts and the runs in progress get
    SIGTERM (each checkpoints at its next step and stops). Returns the jobs left unfinished by the
    budget ([] once the grid is done); the same call later resumes them. A SIGTERM or SIGINT stops the
    grid the same way and raises `Terminated` or `KeyboardInterrupt` (`resnetlab.runner.stop`)."""
    if jobs_per_gpu < 1:
        raise UserError(f"--jobs-per-gpu must be >= 1, got {jobs_per_gpu}")
    if procs < 1:
        raise UserError(f"--procs must be >= 1, got {procs}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be >= 1, got {threads}")
    if procs > 1 and gpus >= 1:
        raise UserError(f"--procs {procs} runs on the CPU; on GPUs use --jobs-per-gpu N (runs sharing each GPU)")
    if batch_runs < 1:
        raise UserError(f"--batch-runs must be >= 1, got {batch_runs}")
    if budget_s is not None and budget_s <= 0:
        raise UserError(f"--budget-s must be > 0, got {budget_s}")
    refuse_other_recipes(jobs)
    todo = []
    for job in jobs:
        if job.state() == "done":
            log(f"[skip]   {job.name}: final.pt exists")
        else:
            todo.append(job)
    units = batch_groups(todo, batch_runs, log) if batch_runs > 1 else [[job] for job in todo]
    stop = Stop(budget_s)
    if gpus >= 1 and gpus * jobs_per_gpu > 1:
        slots = [Slot("gpu", gpu) for gpu in range(gpus) for _ in range(jobs_per_gpu)]
    elif procs > 1:
        threads = threads or max(1, usable_cores() // procs)
        if units:
            log(f"[cpu]    {procs} runs at once, {threads} intra-op thread(s) each ({usable_cores()} usable cores)")
        slots = [Slot("cpu", i, threads) for i in range(procs)]
    else:
        with catching_signals(stop, ctrl_c=False):
            return _run_here(units, train_fn, batched_fn, threads, log, stop)
    with catching_signals(stop, ctrl_c=True):
        return _run_parallel(longest_first(units, log), slots, log, worker, stop)


def refuse_other_recipes(jobs: list[Job]) -> None:
    """UserError when a run's folder holds a run of another recipe (it would be neither reused nor
    overwritten): before anything is written for the grid."""
    changed = [job for job in jobs if job.state() == "other"]
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise UserError(
            f"{changed[0].out_dir} holds a run of another recipe: {changed[0].changed()}{more}; "
            "reproduce --rerun-changed trains it again into a fresh folder, or choose another --out"
        )


def _run_here(
    units: list[list[Job]],
    train_fn: TrainFn | None,
    batched_fn: BatchedFn | None,
    threads: int | None,
    log: Callable,
    stop: Stop,
) -> list[Job]:
    """The units one after another in this process, in the grid's order (one at a time: the order
    does not change when the grid ends). A run that fails (a NaN loss, unreadable data) is named in
    the log and the next one trains, as with --procs; the failures are raised at the end (before the
    budget's return): one run must not hold every later one back, session after session."""
    if units and train_fn is None:
        from resnetlab.train import run_training as train_fn  # sibling layer, imported only when training
    if any(len(unit) > 1 for unit in units) and batched_fn is None:
        from resnetlab.train.batched import train_batched as batched_fn
    failed: list[str] = []
    for i, unit in enumerate(units):
        if stop.due():
            return _grid_end(_unfinished(units[i:]), failed, stop, log)
        resume = unit[0].state() == "resume"  # a group's runs are all at the same point (batch_groups)
        log(f"[{'resume' if resume else 'train'}] {_label(unit)} ({i + 1}/{len(units)})")
        try:
            with told_to_the_run(stop), _intra_op_threads(threads):
                if len(unit) == 1:
                    summaries = [train_fn(unit[0].cfg, unit[0].out_dir, resume=resume)]
                else:
                    summaries = batched_fn([j.cfg for j in unit], [j.out_dir for j in unit], resume=resume)
        except Exception as e:  # noqa: BLE001 (one line in the log; a signal is a BaseException and ends the grid)
            failed += [job.name for job in unit]
            why = one_line(e) if isinstance(e, UserError) else f"{type(e).__name__}: {one_line(e)}"
            log(f"[fail]   {_label(unit)}: {why}")
            continue
        taken = [s["interrupted"] for s in summaries if isinstance(s, dict) and s.get("interrupted")]
        if taken:  # the run took a signal itself and checkpointed (the budget's, or a user's)
            stop.request(taken[0])
            return _grid_end(_unfinished(units[i:]), failed, stop, log)
    return _grid_end([], failed, stop, log)


def longest_first(units: list[list[Job]], log: Callable = print) -> list[list[Job]]:
    """`units` with the most work left first (`Job.cost`: depth x iterations left, summed over a
    batched group); equal ones keep the grid's order."""
    cost = {id(unit): sum(job.cost() for job in unit) for unit in units}
    ordered = sorted(units, key=lambda unit: -cost[id(unit)])
    if len(ordered) > 1:
        log(f"[order]  longest first (depth x iterations left): {', '.join(_label(u) for u in ordered)}")
    return ordered


def batch_groups(jobs: list[Job], k: int, log: Callable = print) -> list[list[Job]]:
    """`jobs` in units of up to `k` that can train as one computation: each job joins the first group
    (in grid order) whose networks and shared settings it fits (`train.batched.check_batchable`), else
    starts one. A group whose runs are not at the same point (the same checkpoint iteration, or all new)
    is split into single runs, and the log says so: its runs continue one by one."""
    from resnetlab.train.batched import check_batchable  # sibling layer, imported only when grouping

    def fits(group: list[Job]) -> bool:
        try:
            check_batchable([j.cfg for j in group], [j.out_dir for j in group])
        except UserError:
            return False
        return True

    groups: list[list[Job]] = []
    for job in jobs:
        home = next((g for g in groups if len(g) < k and fits([*g, job])), None)
        if home is None:
            groups.append([job])
        else:
            home.append(job)
    units = []
    for group in groups:
        points = {job.name: _point(job) for job in group}
        if len(set(points.values())) > 1:
            at = ", ".join(f"{name} {point}" for name, point in points.items())
            log(f"[batch]  {_label(group)}: not at the same point ({at}); trained one by one")
            units += [[job] for job in group]
        else:
            units.append(group)
    return units


def _point(job: Job) -> str:
    """Where a job would start: "new", "at iteration N" (its checkpoint), or "unreadable checkpoint"."""
    if job.state() == "new":
        return "new"
    start = job.start_iteration()
    return f"unreadable checkpoint ({job.name})" if start is None else f"at iteration {start}"


def _label(unit: list[Job]) -> str:
    return unit[0].name if len(unit) == 1 else " + ".join(j.name for j in unit) + " (batched)"


def _unfinished(units: list[list[Job]]) -> list[Job]:
    return [job for unit in units for job in unit if job.state() != "done"]


@contextlib.contextmanager
def _intra_op_threads(threads: int | None) -> Iterator[None]:
    """`torch.set_num_threads(threads)` for the block (nothing when None)."""
    if threads is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Slot:
    """Where `_run_parallel` starts a worker: GPU `index` (CUDA_VISIBLE_DEVICES, train.device=cuda) or
    CPU slot `index` (train.device=cpu, `threads` intra-op threads)."""

    kind: str  # "gpu" | "cpu"
    index: int
    threads: int = 1  # CPU slots only

    def __str__(self) -> str:
        return f"{self.kind} {self.index}"  # the log's [gpu 0] / [cpu 1]

    @property
    def device(self) -> str:
        return "cuda" if self.kind == "gpu" else "cpu"

    def env(self) -> dict[str, str]:
        if self.kind == "gpu":
            return {"CUDA_VISIBLE_DEVICES": str(self.index)}
        # For the libraries' own pools (OpenMP, MKL) and the run's data-loading processes too.
        return {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}

    def flags(self) -> list[str]:
        # The worker also sets torch's count: OMP_NUM_THREADS alone is capped at the cores torch sees.
        return [] if self.kind == "gpu" else ["--threads", str(self.threads)]


@dataclass
class _Running:
    unit: list[Job]
    proc: subprocess.Popen
    log_file: Any
    slot: Slot


def _start(unit: list[Job], slot: Slot, worker: tuple[str, ...], log: Callable) -> _Running:
    """`worker` for `unit` on `slot`, its output appended to the first run's train.log."""
    cmd = [*worker]
    for job in unit:
        job.out_dir.mkdir(parents=True, exist_ok=True)
        job_cfg = job.out_dir / "job.yaml"
        dump(apply_overrides(job.cfg, [f"train.device={slot.device}"]), job_cfg)
        cmd += [str(job_cfg), str(job.out_dir)]
    if unit[0].state() == "resume":  # a group's runs are all at the same point (batch_groups)
        cmd.append("--resume")
    cmd += slot.flags()
    log_path = unit[0].out_dir / "train.log"
    for job in unit[1:]:  # one process, one log: the others' train.log points to it
        with open(job.out_dir / "train.log", "a") as f:
            f.write(f"trained batched with {_label(unit)}: its log is {log_path}\n")
    log_file = open(log_path, "a")  # closed when the unit ends
    log(f"[{slot}] {_label(unit)} ({'resume' if '--resume' in cmd else 'train'})")
    # Its own session: a signal to the grid's process group (Ctrl-C, `timeout`, killpg) reaches only the
    # grid, which then stops each worker with one SIGTERM (a second one would end a run before it saved).
    env = {**os.environ, **slot.env(), GRID_PID: str(os.getpid())}  # it stops when this process dies
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    return _Running(unit, proc, log_file, slot)


def _run_parallel(
    units: list[list[Job]], slots: list[Slot], log: Callable, worker: tuple[str, ...], stop: Stop
) -> list[Job]:
    """A small pool: each free slot takes the next unit (one job, or a batched group) as a `worker`
    subprocess on the slot's GPU or CPU threads. Once `stop` is due no unit starts and the running ones
    get SIGTERM (they checkpoint and exit 143); then `stop.end` says what is left."""
    pending, running, failed, left = list(units), {}, [], []
    ending = None  # when the grid began to stop
    try:
        while pending or running:
            if ending is None and stop.due():
                ending, left = time.monotonic(), [job for unit in pending for job in unit]
                pending.clear()
                why = "budget reached" if stop.reason == "budget" else stop.reason
                for r in running.values():
                    log(f"[{r.slot}] {_label(r.unit)}: {why}, stopping it (it checkpoints)")
                    r.proc.send_signal(signal.SIGTERM)
            for i, slot in enumerate(slots):
                if i not in running and pending:
                    running[i] = _start(pending.pop(0), slot, worker, log)
            time.sleep(POLL_S)
            for i, r in list(running.items()):
                if ending is not None and time.monotonic() > ending + KILL_AFTER_S and r.proc.poll() is None:
                    log(
                        f"[{r.slot}] {_label(r.unit)}: still running {KILL_AFTER_S:.0f} s after SIGTERM: "
                        "killed, its last checkpoint kept"
                    )
                    r.proc.kill()
                    r.proc.wait()
                if r.proc.poll() is not None:
                    r.log_file.close()
                    del running[i]
                    if ending is not None and r.proc.returncode in STOPPED:
                        left += [job for job in r.unit if job.state() != "done"]  # stopped: checkpointed
                    elif r.proc.returncode:
                        failed += [job.name for job in r.unit]
                        where = r.unit[0].out_dir / "train.log"
                        log(f"[{r.slot}] {_label(r.unit)} failed (exit {r.proc.returncode}); see {where}")
    finally:
        for r in running.values():  # only on an error of the pool itself: its workers checkpoint and stop
            if ending is None:  # one SIGTERM each: a second would end a run before it saved
                r.proc.send_signal(signal.SIGTERM)
            try:
                r.proc.wait(KILL_AFTER_S)
            except subprocess.TimeoutExpired:
                r.proc.kill()
            r.log_file.close()
    return _grid_end(left, failed, stop, log)


def _grid_end(left: list[Job], failed: list[str], stop: Stop, log: Callable) -> list[Job]:
    """How a grid ends, in both pools: `stop.end` says what is left (a signal's stop raises there,
    after the failures were logged), then the failed runs are raised, named; else what is left."""
    left = stop.end(left, log) if left else []
    if failed:
        raise UserError(f"{len(failed)} run(s) failed: {', '.join(failed)}")
    return left
