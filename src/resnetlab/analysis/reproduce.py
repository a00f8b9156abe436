"""Named experiment grids of the paper (`resnetlab reproduce NAME`), run, resumed and tabulated.

A grid is a list of (kind, depth) networks, trained once per seed from the `configs/cifar10-*.yaml`
presets with overrides (dataset, schedule, device, seed). Each run has its own folder
`OUT/<kind><depth>-seed<s>/`: a finished run (`final.pt`) is reused only when its stored config
equals the requested one (outside `lifecycle.PLACE_KEYS`: device, data.dir, workers, ...), one with
only `checkpoint.pt` is resumed, so re-running the same command after an interruption finishes the
grid. A folder holding a run of another recipe is refused with the diff, or, with
`rerun_changed=True`, the run goes to a fresh folder `<kind><depth>-seed<s>-r1` (`-r2`, ...).

Schedules: "paper" is the paper's (lr / 10 at 32k and 48k, stop at 64k). "short" keeps its shape
(milestones at 1/2 and 3/4 of the run) over `iters` iterations, 1/10 of the paper's (6.4k) by default.

Data: a built-in dataset by name, or `imagefolder` with `data_dir` (train/<class>/ + test/ or val/),
trained with the CIFAR recipe (`data.recipe=cifar`, issue 21). A wall-clock budget (`budget_s`) stops
the grid cleanly: no run starts after it, a run in progress gets SIGTERM and checkpoints; the same
command resumes the grid later (in another GPU window, once its folders are brought back).

Batched runs (`batch_runs=K`, issue 23): runs whose networks stack (a net's seeds, a ResNet and its
plain twin of the same depth: option A gives them identical layer shapes) train K at a time as one
computation (`resnetlab.train.batched.train_batched`), each still in its own ordinary folder. Groups
are formed in grid order, so the same command forms the same groups again; a group resumes together
when its runs are at the same point (the same checkpoint iteration, or all new), otherwise its runs
go one by one, and the log says so. A group is one job for the budget and for `jobs_per_gpu`.

Several runs at once on the CPU (`procs=N`): on a small shared CPU, N processes of a few intra-op
threads each finish a grid sooner than one run after another with all cores. They are the same worker
processes as the GPUs' (`_run_parallel`), each slot a CPU slot instead of a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnetlab.analysis.curves import plot_curves
from resnetlab.analysis.grids import DATASETS, GRIDS, PAPER_ITERS, PAPER_MILESTONES, SHORT_FACTOR
from resnetlab.analysis.responses import checkpoint_responses, plot_responses
from resnetlab.analysis.runs import load_run, model_label
from resnetlab.analysis.table import Row, to_markdown, write_csv
from resnetlab.config import Config, apply_overrides, dump, list_presets, load_config, read_yaml
from resnetlab.errors import UserError
from resnetlab.evaluate.checkpoints import read_weights
from resnetlab.train.lifecycle import PLACE_KEYS, config_diff
from resnetlab.utils.device import usable_cores

TrainFn = Callable[..., Any]  # run_training(cfg, out_dir, *, resume=False)
BatchedFn = Callable[..., list[Any]]  # train_batched(cfgs, out_dirs, *, resume=False)


def schedule(name: str, iters: int | None = None) -> tuple[tuple[int, ...], int]:
    """(milestones, max_iters): the paper's, or the same shape scaled to `iters` iterations."""
    if name == "paper" and iters is None:
        return PAPER_MILESTONES, PAPER_ITERS
    total = iters if iters is not None else PAPER_ITERS // SHORT_FACTOR
    if total < 4:
        raise UserError(f"--iters must be at least 4, got {total}")
    # 32k/64k = 1/2 and 48k/64k = 3/4 of the run.
    return (round(total * PAPER_MILESTONES[0] / PAPER_ITERS), round(total * PAPER_MILESTONES[1] / PAPER_ITERS)), total


@dataclass(frozen=True)
class Job:
    kind: str
    depth: int
    seed: int
    out_dir: Path
    cfg: Config

    @property
    def name(self) -> str:
        return self.out_dir.name

    def changed(self) -> str | None:
        """The one-line diff between the folder's stored config and this job's, if it holds a run of
        another recipe (None for the same recipe or an empty folder)."""
        stored = self.out_dir / "config.yaml"
        if not stored.is_file():
            return None
        return config_diff(read_yaml(stored), self.cfg, allowed=PLACE_KEYS)

    def state(self) -> str:
        """`other` (the folder holds a run of another recipe), `done` (final.pt), `resume`
        (checkpoint.pt, or a started run that never checkpointed: `run_training(resume=True)` starts
        it again in place) or `new`."""
        if self.changed():
            return "other"
        if (self.out_dir / "final.pt").is_file():
            return "done"
        if (self.out_dir / "checkpoint.pt").is_file() or (self.out_dir / "config.yaml").is_file():
            return "resume"
        return "new"


def base_config(kind: str, depth: int) -> Config:
    """The preset `cifar10-<kind><depth>`, else the nearest one with the model swapped."""
    presets = set(list_presets())
    name = f"cifar10-{kind}{depth}"
    if name in presets:
        return load_config(name)
    for fallback in (f"cifar10-resnet{depth}", "cifar10-resnet20", "cifar10"):
        if fallback in presets:
            cfg = load_config(fallback, [f"model.name=cifar_{kind}{depth}"])
            if depth >= 110 and cfg.optim.warmup_lr is None:
                cfg = apply_overrides(cfg, ["optim.warmup_lr=0.01"])  # sec. 4.2: warm-up for 110/1202
            return cfg
    raise UserError(f"no configs/cifar10-*.yaml preset found for {name}; presets: {', '.join(sorted(presets))}")


def plan(
    grid: str,
    *,
    out: str | Path,
    seeds: int = 1,
    dataset: str = "cifar10",
    schedule_name: str = "paper",
    iters: int | None = None,
    eval_every: int | None = None,
    device: str = "auto",
    with_1202: bool = False,
    overrides: list[str] | None = None,
    config_fn: Callable[[str, int], Config] = base_config,
    rerun_changed: bool = False,
    data_dir: str | Path | None = None,
    nets: list[str] | None = None,
) -> list[Job]:
    """Every run of grid `grid`, with its resolved config and folder (nothing is started).
    `rerun_changed`: a job whose folder holds a run of another recipe moves to `<folder>-rN`, the
    first such folder that is free or holds this recipe. `data_dir`: data.dir (required for
    `imagefolder`, which also gets the CIFAR recipe and the folder's evaluation split). `nets`: only
    these networks of the grid (`<kind><depth>`, e.g. resnet20), in the grid's order."""
    if grid not in GRIDS:
        raise UserError(f"unknown experiment {grid!r}; choose from {', '.join(GRIDS)}")
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    data = data_overrides(dataset, data_dir)
    if any(o.startswith("data.val_split=") and o.split("=", 1)[1].strip() != "0" for o in overrides or []):
        data = [o for o in data if not o.startswith("data.eval_split=")]  # the error is on held-out training images
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    networks = GRIDS[grid] + ([("resnet", 1202)] if grid == "table6" and with_1202 else [])
    if nets is not None:
        names = [f"{kind}{depth}" for kind, depth in networks]
        unknown = [n for n in nets if n not in names]
        if unknown:
            raise UserError(f"--nets {' '.join(unknown)}: not in {grid}, whose networks are {', '.join(names)}")
        networks = [net for net, name in zip(networks, names) if name in nets]
    milestones, total = schedule(schedule_name, iters)
    # The paper evaluates often enough for smooth curves; a short run keeps ~16 points per curve.
    every = eval_every or (1000 if total == PAPER_ITERS else max(1, total // 16))
    jobs = []
    for kind, depth in networks:
        for seed in range(seeds):
            cfg = apply_overrides(
                config_fn(kind, depth),
                [
                    *data,
                    f"optim.milestones=[{milestones[0]}, {milestones[1]}]",
                    f"train.max_iters={total}",
                    f"train.eval_every={every}",
                    f"train.checkpoint_every={every}",
                    f"train.seed={seed}",
                    f"train.device={device}",
                    *(overrides or []),
                ],
            )
            job = Job(kind, depth, seed, Path(out) / f"{kind}{depth}-seed{seed}", cfg)
            base, n = job.out_dir, 0
            while rerun_changed and job.state() == "other":
                n += 1
                job = dataclasses.replace(job, out_dir=base.with_name(f"{base.name}-r{n}"))
            jobs.append(job)
    return jobs


def data_overrides(dataset: str, data_dir: str | Path | None) -> list[str]:
    """The `data.*` overrides of `--dataset` / `--data-dir`. An ImageFolder trains with the CIFAR recipe
    (the grids are CIFAR networks: on-device per-pixel mean, pad 4 + crop + flip) and is evaluated on
    its test/ split (CIFAR-10's JPEG folder; the 45k/5k protocol is `data.val_split=5000`), else on val/."""
    if data_dir is None:
        if dataset == "imagefolder":
            raise UserError("--dataset imagefolder needs --data-dir DIR (DIR/train/<class>/ and DIR/test/<class>/)")
        return [f"data.name={dataset}"]
    folder = Path(data_dir)
    if dataset != "imagefolder":
        return [f"data.name={dataset}", f"data.dir={folder}"]
    if not (folder / "train").is_dir():
        raise UserError(f"--data-dir {folder}: no train/ folder (an ImageFolder is DIR/train/<class>/*.jpg + test/)")
    split = "test" if (folder / "test").is_dir() else "val" if (folder / "val").is_dir() else None
    if split is None:
        raise UserError(f"--data-dir {folder}: neither test/ nor val/ beside train/ (the evaluation split)")
    return ["data.name=imagefolder", f"data.dir={folder}", "data.recipe=cifar", f"data.eval_split={split}"]


# The budget's SIGTERM again after this long, until the run in progress returns. Short: a first signal
# that comes while a run (or a batched group) is still opening is taken by the grid's handler, and a
# run that then trained on unsignalled would outlive the budget (a repeat only sets flags again).
RESIGNAL_S = 0.5
KILL_AFTER_S = 120.0  # a run given SIGTERM by the budget checkpoints within a step; this is a hang
WORKER = (sys.executable, "-m", "resnetlab.analysis.worker")  # + CONFIG.yaml OUT_DIR [CONFIG OUT ...] [--resume]


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
    budget ([] once the grid is done); the same call later resumes them."""
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
    changed = [job for job in jobs if job.state() == "other"]
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise UserError(
            f"{changed[0].out_dir} holds a run of another recipe: {changed[0].changed()}{more}; "
            "reproduce --rerun-changed trains it again into a fresh folder, or choose another --out"
        )
    todo = []
    for job in jobs:
        state = job.state()
        if state == "done":
            log(f"[skip]   {job.name}: final.pt exists")
        else:
            todo.append(job)
    units = batch_groups(todo, batch_runs, log) if batch_runs > 1 else [[job] for job in todo]
    deadline = time.monotonic() + budget_s if budget_s is not None else None
    with _stop_flag() as stop:
        if gpus >= 1 and gpus * jobs_per_gpu > 1:
            slots = [Slot("gpu", gpu) for gpu in range(gpus) for _ in range(jobs_per_gpu)]
            return _run_parallel(units, slots, log, worker, deadline, stop)
        if procs > 1:
            threads = threads or max(1, usable_cores() // procs)
            if units:
                log(f"[cpu]    {procs} runs at once, {threads} intra-op thread(s) each ({usable_cores()} usable cores)")
            slots = [Slot("cpu", i, threads) for i in range(procs)]
            return _run_parallel(units, slots, log, worker, deadline, stop)
        if todo and train_fn is None:
            from resnetlab.train import run_training as train_fn  # sibling layer, imported only when training
        if any(len(unit) > 1 for unit in units) and batched_fn is None:
            from resnetlab.train.batched import train_batched as batched_fn
        for i, unit in enumerate(units, 1):
            if stop.is_set() or (deadline is not None and time.monotonic() >= deadline):
                return _stopped([job for u in units[i - 1 :] for job in u], log)
            resume = unit[0].state() == "resume"  # a group's runs are all at the same point (batch_groups)
            log(f"[{'resume' if resume else 'train'}] {_label(unit)} ({i}/{len(units)})")
            with _sigterm_at(deadline), _intra_op_threads(threads):
                if len(unit) == 1:
                    summaries = [train_fn(unit[0].cfg, unit[0].out_dir, resume=resume)]
                else:
                    summaries = batched_fn([j.cfg for j in unit], [j.out_dir for j in unit], resume=resume)
            interrupted = next(
                (s["interrupted"] for s in summaries if isinstance(s, dict) and s.get("interrupted")), None
            )
            if interrupted:
                if deadline is not None and time.monotonic() >= deadline:
                    return _stopped([job for u in units[i - 1 :] for job in u], log)
                # SIGTERM / Ctrl-C: the run checkpointed and returned; stop the grid, the same command resumes it.
                raise UserError(f"{_label(unit)} interrupted ({interrupted}); run the same command to resume")
    return []


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
    ckpt = job.out_dir / "checkpoint.pt"
    if not ckpt.is_file():
        return "at iteration 0"  # started, never checkpointed: `resume` starts it again
    from resnetlab.utils.checkpoint import load

    try:
        return f"at iteration {int(load(ckpt)['iteration'])}"
    except (UserError, KeyError, TypeError, ValueError):
        return f"unreadable checkpoint ({job.name})"  # alone: its own resume says what is wrong


def _label(unit: list[Job]) -> str:
    return unit[0].name if len(unit) == 1 else " + ".join(j.name for j in unit) + " (batched)"


def _stopped(left: list[Job], log: Callable) -> list[Job]:
    log(f"[budget] stopped with {len(left)} run(s) unfinished: {', '.join(j.name for j in left)}")
    return left


@contextlib.contextmanager
def _stop_flag() -> Iterator[threading.Event]:
    """While the grid runs, a SIGTERM that reaches it between runs (or a second one during a run: the
    run's own handler takes the first and checkpoints) stops the grid before the next run starts."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        yield stop
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _sigterm_at(deadline: float | None) -> Iterator[None]:
    """SIGTERM to this process at `deadline`, then every RESIGNAL_S s until the block ends: the run in
    progress checkpoints and returns (a first signal that came before the run set its handler up
    is taken by `_stop_flag`; the next one reaches the run)."""
    if deadline is None:
        yield
        return
    done = threading.Event()

    def fire() -> None:
        if done.wait(max(0.0, deadline - time.monotonic())):
            return
        while not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
            done.wait(RESIGNAL_S)

    timer = threading.Thread(target=fire, name="grid-budget", daemon=True)
    timer.start()
    try:
        yield
    finally:
        done.set()
        timer.join()


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


def _run_parallel(
    units: list[list[Job]],
    slots: list[Slot],
    log: Callable,
    worker: tuple[str, ...],
    deadline: float | None = None,
    stop: threading.Event | None = None,
) -> list[Job]:
    """A small pool: each free slot takes the next unit (one job, or a batched group) as a `worker`
    subprocess on the slot's GPU or CPU threads. At `deadline` (or on `stop`) no unit starts and the
    running ones get SIGTERM (they checkpoint and exit 143); returns the jobs left unfinished then."""
    pending, running, failed, left = list(units), {}, [], []
    ending = None  # when the budget (or a SIGTERM) stopped the grid
    while pending or running:
        if ending is None and ((deadline is not None and time.monotonic() >= deadline) or (stop and stop.is_set())):
            ending, left = time.monotonic(), [job for unit in pending for job in unit]
            pending.clear()
            for unit, proc, _, slot in running.values():
                log(f"[{slot}] {_label(unit)}: budget reached, stopping it (it checkpoints)")
                proc.send_signal(signal.SIGTERM)
        for i, slot in enumerate(slots):
            if i not in running and pending:
                unit = pending.pop(0)
                cmd = [*worker]
                for job in unit:
                    job.out_dir.mkdir(parents=True, exist_ok=True)
                    job_cfg = job.out_dir / "job.yaml"
                    dump(apply_overrides(job.cfg, [f"train.device={slot.device}"]), job_cfg)
                    cmd += [str(job_cfg), str(job.out_dir)]
                if unit[0].state() == "resume":  # a group's runs are all at the same point (batch_groups)
                    cmd.append("--resume")
                cmd += slot.flags()
                env = {**os.environ, **slot.env()}
                log_path = unit[0].out_dir / "train.log"
                for job in unit[1:]:  # one process, one log: the others' train.log points to it
                    with open(job.out_dir / "train.log", "a") as f:
                        f.write(f"trained batched with {_label(unit)}: its log is {log_path}\n")
                log_file = open(log_path, "a")  # closed when the unit ends
                log(f"[{slot}] {_label(unit)} ({'resume' if '--resume' in cmd else 'train'})")
                proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
                running[i] = (unit, proc, log_file, slot)
        time.sleep(2 if ending is None else 0.2)
        for i, (unit, proc, log_file, slot) in list(running.items()):
            if ending is not None and time.monotonic() > ending + KILL_AFTER_S and proc.poll() is None:
                log(f"[{slot}] {_label(unit)}: no exit {KILL_AFTER_S:.0f} s after SIGTERM: killed, checkpoint kept")
                proc.kill()
                proc.wait()
            if proc.poll() is not None:
                log_file.close()
                del running[i]
                if ending is not None:
                    left += [job for job in unit if job.state() != "done"]  # stopped by the budget: checkpointed
                elif proc.returncode:
                    failed += [job.name for job in unit]
                    where = unit[0].out_dir / "train.log"
                    log(f"[{slot}] {_label(unit)} failed (exit {proc.returncode}); see {where}")
    if failed:
        raise UserError(f"{len(failed)} run(s) failed: {', '.join(failed)}")
    return _stopped(left, log) if left else []


def report(
    jobs: list[Job],
    out: str | Path,
    *,
    dataset: str,
    device: Any,
    responses: bool = True,
    max_images: int | None = None,
    log: Callable = print,
    quiet: bool = False,
) -> list[Row]:
    """Table (Markdown + CSV), curves and responses figures of the finished jobs, written into `out`."""
    out = Path(out)
    finished = [j for j in jobs if j.state() == "done"]
    if not finished:
        raise UserError(f"no finished runs under {out}")
    by_net: dict[tuple[str, int], list[Job]] = {}
    for job in finished:
        by_net.setdefault((job.kind, job.depth), []).append(job)
    rows, runs = [], []
    for (kind, depth), net_jobs in by_net.items():
        net_runs = [load_run(j.out_dir) for j in net_jobs]
        runs += net_runs
        model = read_weights(net_jobs[0].out_dir / "final.pt", what="checkpoint").build()
        rows.append(
            Row(
                label=model_label(kind, depth),
                kind=kind,
                depth=depth,
                params=sum(p.numel() for p in model.parameters()),
                errors=tuple(r.final_test_error for r in net_runs),
                train_errors=tuple(r.final_train_error for r in net_runs if r.final_train_error is not None),
            )
        )
    val = finished[0].cfg.data.val_split
    eval_set = f"validation ({val} held-out training images)" if val else "test"
    (out / "table.md").write_text(to_markdown(rows, dataset=dataset, eval_set=eval_set))
    write_csv(rows, out / "table.csv")
    plot_curves(runs, out / "curves.png", title=f"{dataset}, {runs[0].metrics[-1]['iter']} iterations")
    log(f"wrote {out / 'table.md'}, {out / 'table.csv'}, {out / 'curves.png'}")
    if responses:
        # Fig. 7 on seed 0 of each network.
        results = []
        for net_jobs in by_net.values():
            job = min(net_jobs, key=lambda j: j.seed)
            results.append(
                checkpoint_responses(job.out_dir / "final.pt", device=device, max_images=max_images, quiet=quiet)
            )
        plot_responses(results, out / "responses.png")
        (out / "responses.json").write_text(json.dumps(results, indent=1) + "\n")
        log(f"wrote {out / 'responses.png'}, {out / 'responses.json'}")
    return rows
