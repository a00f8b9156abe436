"""`reproduce --branch-from GRID`: each new run of this grid starts from the checkpoint that the run of
the same name in GRID kept (`train.keep_checkpoints`) at the latest iteration where the two schedules
still agree, instead of from iteration 0. A 16k grid from an 8k grid that kept iteration 4,000: both
train at lr 0.1 until then, so the 16k runs start at 4,000 and end as if trained from 0."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from resnetlab.errors import UserError
from resnetlab.runner.plan import Job

KEPT = re.compile(r"checkpoint-(\d+)\.pt")


def kept_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """The checkpoints a run folder kept, (iteration, path), latest first."""
    found = [(int(m.group(1)), p) for p in folder.glob("checkpoint-*.pt") if (m := KEPT.fullmatch(p.name))]
    return sorted(found, reverse=True)


def fitting_checkpoint(job: Job, source: Path) -> tuple[int, Path] | str:
    """(iteration, path) of the latest checkpoint that the run `job.name` in the grid folder `source`
    kept and that `job` may start from (`lifecycle.check_branch`), else why none fits."""
    from resnetlab.train.lifecycle.resume import check_branch  # the train layer, imported where it is used

    why = f"{source / job.name} kept no checkpoint at or below iteration {job.cfg.train.max_iters}"
    for it, path in kept_checkpoints(source / job.name):
        if it > job.cfg.train.max_iters:
            continue
        try:
            check_branch(job.cfg, path)
        except UserError as e:
            why = str(e)
            continue
        return it, path
    return why


def check_source(source: Path) -> None:
    if not source.is_dir():
        raise UserError(f"--branch-from {source}: no such grid folder")


def branch_new_jobs(jobs: list[Job], source: Path, log: Callable[[str], None] = print) -> list[str]:
    """Start each `new` job from the latest checkpoint its namesake in `source` kept that fits it
    (`lifecycle.start_branch`); the jobs branched. A job none fits trains from 0, with a line saying why."""
    from resnetlab.train.lifecycle import start_branch

    check_source(source)
    branched = []
    for job in jobs:
        if job.state() != "new":
            continue
        fit = fitting_checkpoint(job, source)
        if isinstance(fit, str):
            log(f"[branch] {job.name} trains from iteration 0: {fit}")
            continue
        start_branch(job.cfg, job.out_dir, fit[1])
        branched.append(job.name)
    return branched
