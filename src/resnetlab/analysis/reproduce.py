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
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
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

TrainFn = Callable[..., Any]  # run_training(cfg, out_dir, *, resume=False)


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
) -> list[Job]:
    """Every run of grid `grid`, with its resolved config and folder (nothing is started).
    `rerun_changed`: a job whose folder holds a run of another recipe moves to `<folder>-rN`, the
    first such folder that is free or holds this recipe."""
    if grid not in GRIDS:
        raise UserError(f"unknown experiment {grid!r}; choose from {', '.join(GRIDS)}")
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    networks = GRIDS[grid] + ([("resnet", 1202)] if grid == "table6" and with_1202 else [])
    milestones, total = schedule(schedule_name, iters)
    # The paper evaluates often enough for smooth curves; a short run keeps ~16 points per curve.
    every = eval_every or (1000 if total == PAPER_ITERS else max(1, total // 16))
    jobs = []
    for kind, depth in networks:
        for seed in range(seeds):
            cfg = apply_overrides(
                config_fn(kind, depth),
                [
                    f"data.name={dataset}",
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


WORKER = (sys.executable, "-m", "resnetlab.analysis.worker")  # + CONFIG.yaml OUT_DIR [--resume]


def run_jobs(
    jobs: list[Job],
    *,
    train_fn: TrainFn | None = None,
    gpus: int = 0,
    jobs_per_gpu: int = 1,
    log: Callable = print,
    worker: tuple[str, ...] = WORKER,
) -> None:
    """Run every unfinished job: in this process one after another (CPU, one GPU), or as
    subprocesses (`worker CONFIG.yaml OUT_DIR [--resume]` with `CUDA_VISIBLE_DEVICES=i`), `jobs_per_gpu`
    at a time on each GPU, when that makes more than one at a time. Small CIFAR nets leave a large GPU
    mostly idle between their kernels, so several runs sharing one GPU can finish a grid sooner."""
    if jobs_per_gpu < 1:
        raise UserError(f"--jobs-per-gpu must be >= 1, got {jobs_per_gpu}")
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
    if gpus >= 1 and gpus * jobs_per_gpu > 1:
        _run_parallel(todo, [gpu for gpu in range(gpus) for _ in range(jobs_per_gpu)], log, worker)
        return
    if todo and train_fn is None:
        from resnetlab.train import run_training as train_fn  # sibling layer, imported only when training
    for i, job in enumerate(todo, 1):
        resume = job.state() == "resume"
        log(f"[{'resume' if resume else 'train'}] {job.name} ({i}/{len(todo)})")
        summary = train_fn(job.cfg, job.out_dir, resume=resume)
        if isinstance(summary, dict) and summary.get("interrupted"):
            # SIGTERM / Ctrl-C: the run checkpointed and returned; stop the grid, the same command resumes it.
            raise UserError(f"{job.name} interrupted ({summary['interrupted']}); run the same command to resume")


def _run_parallel(jobs: list[Job], slot_gpus: list[int], log: Callable, worker: tuple[str, ...]) -> None:
    """A small pool: each free slot takes the next job as a `worker` subprocess on the slot's GPU."""
    pending, running, failed = list(jobs), {}, []
    while pending or running:
        for slot, gpu in enumerate(slot_gpus):
            if slot not in running and pending:
                job = pending.pop(0)
                job.out_dir.mkdir(parents=True, exist_ok=True)
                job_cfg = job.out_dir / "job.yaml"
                dump(apply_overrides(job.cfg, ["train.device=cuda"]), job_cfg)
                cmd = [*worker, str(job_cfg), str(job.out_dir)]
                if job.state() == "resume":
                    cmd.append("--resume")
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)}
                log_file = open(job.out_dir / "train.log", "a")  # closed when the job ends
                log(f"[gpu {gpu}] {job.name} ({'resume' if '--resume' in cmd else 'train'})")
                proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
                running[slot] = (job, proc, log_file, gpu)
        time.sleep(2)
        for slot, (job, proc, log_file, gpu) in list(running.items()):
            if proc.poll() is not None:
                log_file.close()
                del running[slot]
                if proc.returncode:
                    failed.append(job.name)
                    log(f"[gpu {gpu}] {job.name} failed (exit {proc.returncode}); see {job.out_dir / 'train.log'}")
    if failed:
        raise UserError(f"{len(failed)} run(s) failed: {', '.join(failed)}")


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
