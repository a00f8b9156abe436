"""Put published runs back into a `resnetlab reproduce` folder: the inverse of publish_grid.py, for a
grid whose run folders were lost with a machine while its finished runs were committed.

    python scripts/restore_grid.py PUBLISHED RUNS [--only RUN ...]

PUBLISHED is a folder publish_grid.py wrote (e.g. docs/results/cifar10-jpeg-table6/8k), RUNS
reproduce's --out. For every run with both a record (PUBLISHED/runs/RUN/) and weights (PUBLISHED/RUN.pt),
RUNS/RUN/ is made from the record (config.yaml, data.json, metrics.jsonl, train.log) with the weights
as its final.pt: `reproduce` with the same command then counts the run as finished (its config is
compared as for any finished run), trains only the others, and writes the report of the whole grid:
table and curves from the records, fig. 7 from the weights. The weights are fp16 (their meta says
`weights_dtype: fp16`, and the report's responses.json names each checkpoint's), so those responses
are of the rounded network; evaluating it gives the run's test error within publish_grid's tolerance.
PUBLISHED/commands.txt (how the published runs were made) goes first in RUNS/commands.txt, before the
lines RUNS had, so that publishing again keeps the history. A run folder that already exists in RUNS is
left as it is and named; so is a record without weights.
Each folder appears whole or not at all (written aside, then renamed). A restored final.pt holds no
optimizer state and no kept checkpoints: a later `--branch-from` cannot start from it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from publish_grid import RECORD


def published_runs(published: Path) -> tuple[list[str], list[str]]:
    """(runs with a record and weights, runs with a record but no weights), by name."""
    records = sorted(p.name for p in (published / "runs").iterdir() if (p / "config.yaml").is_file())
    return [r for r in records if (published / f"{r}.pt").is_file()], [
        r for r in records if not (published / f"{r}.pt").is_file()
    ]


def restore(published: Path, runs: Path, names: list[str], log=print) -> list[str]:
    """RUNS/RUN for each of `names` that RUNS lacks; the names restored."""
    runs.mkdir(parents=True, exist_ok=True)
    restored = []
    for name in names:
        target = runs / name
        if target.exists():
            log(f"{name}: {target} exists, left as it is")
            continue
        aside = runs / f".{name}.restoring"
        shutil.rmtree(aside, ignore_errors=True)  # a restore killed half-way
        aside.mkdir()
        for file in RECORD:
            if (published / "runs" / name / file).is_file():
                shutil.copy2(published / "runs" / name / file, aside / file)
        shutil.copy2(published / f"{name}.pt", aside / "final.pt")
        aside.rename(target)
        restored.append(name)
        log(f"{name}: restored into {target} (final.pt = {published / f'{name}.pt'})")
    return restored


def merge_commands(published: Path, runs: Path) -> None:
    """RUNS/commands.txt = PUBLISHED's lines, then those of RUNS' own that PUBLISHED lacks."""
    if not (published / "commands.txt").is_file():
        return
    lines = (published / "commands.txt").read_text().splitlines()
    own = (runs / "commands.txt").read_text().splitlines() if (runs / "commands.txt").is_file() else []
    lines += [line for line in own if line not in lines]
    from resnetlab.utils.files import atomic_path

    with atomic_path(runs / "commands.txt") as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("published", type=Path, help="a folder publish_grid.py wrote (runs/RUN/ records, RUN.pt weights)")
    p.add_argument("runs", type=Path, help="reproduce's --out folder to restore the runs into")
    p.add_argument("--only", nargs="+", metavar="RUN", help="restore only these runs (default: all with weights)")
    args = p.parse_args()
    if not (args.published / "runs").is_dir():
        p.error(f"{args.published} holds no runs/ folder (not a folder publish_grid.py wrote)")
    complete, no_weights = published_runs(args.published)
    for name in args.only or []:
        if name not in complete:
            why = "has a record but no weights" if name in no_weights else "is not a published run"
            have = ", ".join(complete) or "none"
            p.error(f"--only {name}: {name} {why} in {args.published}; runs with weights: {have}")
    for name in no_weights if args.only is None else []:
        print(f"{name}: record without weights ({args.published / f'{name}.pt'} missing), not restored")
    done = restore(args.published, args.runs, args.only or complete)
    merge_commands(args.published, args.runs)
    print(f"restored {len(done)} of {len(args.only or complete)} runs into {args.runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
