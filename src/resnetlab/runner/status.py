"""`reproduce --status`: where each run of a grid stands and about how long the rest takes, read from
the run folders (nothing is started, locked or written; a grid may be training meanwhile).

Time left is estimated from the grid's own runs: seconds per layer-iteration over each run's latest
interval between two evaluations (the speed now; a slow start on a loaded machine is forgotten), or
over its training so far where it has no such interval yet, times each run's depth x iterations left
(`Job.cost`), the runs spread over `slots` at once. A run that a live process holds (its folder's lock,
seen in the kernel's lock table) shows as `running`; its iteration is the latest its train.log names
(a worker's log: `--procs`, GPUs), else that of its last checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

from resnetlab.runner.plan import Job
from resnetlab.train.lifecycle.claim import in_use


def progress(job: Job, state: str, rows: list[dict]) -> tuple[int, float | None, float | None]:
    """(iteration reached, training seconds so far, last test error) of a job's folder in `state`,
    given the evaluation rows of its metrics.jsonl. A folder holding another recipe's run (`other`)
    has trained nothing of this job."""
    last = rows[-1] if rows else {}
    if state == "other":
        return 0, None, None
    if state == "done":
        return job.cfg.train.max_iters, last.get("time"), last.get("test_error")
    iteration, seconds = job.checkpoint(state)
    return iteration or 0, seconds, last.get("test_error")


def recent_speed(job: Job, rows: list[dict]) -> tuple[int, float] | None:
    """(layer-iterations, seconds) of the run's latest interval between two evaluations, if any."""
    rows = [r for r in rows if isinstance(r.get("time"), (int, float))]
    if len(rows) < 2:
        return None
    a, b = rows[-2], rows[-1]
    if not (isinstance(a.get("iter"), int) and isinstance(b.get("iter"), int)):
        return None
    iters, seconds = b["iter"] - a["iter"], b["time"] - a["time"]
    return (job.depth * iters, seconds) if iters > 0 and seconds > 0 else None


def _evaluations(metrics: Path) -> list[dict]:
    """The evaluation rows of metrics.jsonl (analysis.runs.read_metrics refuses a line that a kill cut
    short, and the runner does not import the analyses)."""
    rows = []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return [r for r in rows if isinstance(r, dict) and r.get("test_error") is not None]


def _logged_iteration(log: Path) -> int:
    """The latest iteration a run's train.log names ("iter N: ..." lines of the loop, or "resumed at
    iteration N" where a process took the run up again), 0 if none: where a running run is now, ahead
    of its last checkpoint. A run killed past its checkpoint and resumed reads as the resumed
    iteration, not the lost one, until it passes that again."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 16384))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return 0
    found = re.findall(r"^(?:iter (\d+): |resumed at iteration (\d+) )", tail, flags=re.MULTILINE)
    return int("".join(found[-1])) if found else 0


def _hours(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def status_lines(
    jobs: list[Job], slots: int = 1, batch_runs: int = 1, branch_from: Path | None = None
) -> list[str]:
    """`reproduce --status`'s table and time left. `batch_runs` K: runs trained K at a time in one
    computation share one clock (each run's time is its group's), so a run's own share is 1/K of it.
    `branch_from` (`reproduce --branch-from`): a new run that would start from a checkpoint of that grid
    shows as `branch` at its iteration, and that grid's runs' speeds count too."""
    states = [job.state() for job in jobs]
    evaluations = [
        _evaluations(job.out_dir / "metrics.jsonl") if state != "other" else [] for job, state in zip(jobs, states)
    ]
    rows = [(job, state, *progress(job, state, evals)) for job, state, evals in zip(jobs, states, evaluations)]
    timed = [
        recent_speed(job, evals) or ((job.depth * it, s) if it and s else None)
        for (job, _, it, s, _), evals in zip(rows, evaluations)
    ]
    if branch_from is not None:
        from resnetlab.runner.branch import fitting_checkpoint

        for i, (job, state, *_) in enumerate(rows):
            fit = fitting_checkpoint(job, branch_from) if state == "new" else None
            if isinstance(fit, tuple):
                rows[i] = (job, "branch", fit[0], None, None)
        timed += [recent_speed(job, _evaluations(branch_from / job.name / "metrics.jsonl")) for job in jobs]
    timed = [t for t in timed if t]
    per_layer_iter = sum(s for _, s in timed) / sum(w for w, _ in timed) / batch_runs if timed else None
    lines = [f"{'run':<18} {'state':<7} {'iteration':>17} {'test error':>10} {'trained':>8} {'left':>8}"]
    left_total, longest = 0.0, 0.0
    for job, state, it, seconds, error in rows:
        total = job.cfg.train.max_iters
        left = job.depth * (total - it) * per_layer_iter if per_layer_iter is not None else None
        if left is not None:
            left_total, longest = left_total + left, max(longest, left)
        shown = "running" if state in ("new", "resume") and in_use(job.out_dir) else state  # a process holds it now
        if shown == "running":
            it = min(max(it, _logged_iteration(job.out_dir / "train.log")), total)
        lines.append(
            f"{job.name:<18} {shown:<7} {f'{it}/{total} ({100 * it // total}%)':>17} "
            f"{f'{error:.2f}%' if error is not None else '-':>10} {_hours(seconds) if seconds else '-':>8} "
            f"{_hours(left) if left is not None else '?':>8}"
        )
    if per_layer_iter is None:
        lines.append("time left: not known until a run has trained (no checkpoint yet)")
    elif left_total:
        wall = max(left_total / slots, longest)
        lines.append(
            f"time left: about {_hours(wall)} with {slots} run(s) at once ({_hours(left_total)} of one process), "
            "at the speed of the runs' latest evaluation intervals"
        )
    else:
        lines.append("every run is done: the same command without --status writes the report")
    return lines
