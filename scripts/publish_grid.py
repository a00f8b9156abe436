"""Copy a `resnetlab reproduce` folder into docs/results: its report, each run's record, and each
finished run's fp16 weights with a check that they give the run's test error.

    python scripts/publish_grid.py RUNS DEST --data-dir DATA [--only RUN ...] [--device cpu] [--tolerance 0.3]

RUNS is reproduce's --out, DEST a folder under docs/results (e.g. .../cifar10-jpeg-table6/8k). For
every run folder with a final.pt: `resnetlab export --format weights-fp16` to DEST/RUN.pt, then
`resnetlab evaluate` of that file on the split the run evaluated (an ImageFolder's eval_split folder, a
built-in data set's test split; a run that held out training images, data.val_split, is evaluated on
the test split and not compared); the run's config.yaml, data.json,
metrics.jsonl and train.log go to DEST/runs/RUN/. DEST/weights.md lists each run's file, size, wall
time, the test error its training ended with and the one its fp16 weights give, and the command that
reproduces it; rows of an earlier weights.md whose weights are still in DEST stay, until their run is
published again. `--only` publishes only the runs named (finished ones: the runs that finished since the
last publication, without evaluating the others again). A difference over --tolerance points exits 1.
Runs without final.pt are named, not copied.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPORT = ("table.csv", "table.md", "curves.png", "responses.png", "responses.json", "commands.txt")
RECORD = ("config.yaml", "data.json", "metrics.jsonl", "train.log")


def resnetlab(*argv: str) -> str:
    r = subprocess.run([sys.executable, "-m", "resnetlab", *argv], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"resnetlab {' '.join(argv[:3])} ...: {r.stderr.strip() or f'exit {r.returncode}'}")
    return r.stdout


def last_test_row(metrics: Path) -> dict:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("test_error") is not None]
    if not rows:
        sys.exit(f"{metrics}: no evaluation recorded")
    return rows[-1]


def evaluated_split(final_pt: Path, last_row: dict) -> tuple[str | None, bool]:
    """(`evaluate --split` for the split the run evaluated, None for a built-in data set's own test
    split; whether the two errors can be compared: not for training images held out by data.val_split)."""
    from resnetlab.utils import checkpoint

    ck = checkpoint.load(final_pt)
    data = (ck.get("config") or {}).get("data") or {}
    folder = ((ck.get("meta") or {}).get("dataset") or data.get("name")) in ("imagefolder", "imagenet")
    if data.get("val_split"):
        return ("test" if folder else None), False
    return (last_row.get("eval_split") or data.get("eval_split") or "test" if folder else None), True


def earlier_rows(dest: Path, published: set[str]) -> dict[str, str]:
    """The rows of an earlier DEST/weights.md whose runs this call does not publish and whose weights
    are still in DEST, by run: a run published from an earlier grid folder (another machine's, now
    gone) keeps its row until the same run finishes again."""
    if not (dest / "weights.md").is_file():
        return {}
    kept = {}
    for line in (dest / "weights.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not cells[1].startswith("`") or cells[0] in published:
            continue
        if (dest / cells[1].strip("`")).is_file():
            kept[cells[0]] = line
    return kept


def run_folders(runs: Path) -> tuple[list[Path], list[str]]:
    """RUNS' run folders: the finished ones (with final.pt), and the names of the others."""
    folders = sorted(p for p in runs.iterdir() if (p / "config.yaml").is_file())
    return [p for p in folders if (p / "final.pt").is_file()], [
        p.name for p in folders if not (p / "final.pt").is_file()
    ]


def chosen(runs: Path, names: list[str] | None) -> list[Path]:
    """The finished runs to publish: every one in RUNS, or those `--only` names."""
    finished, unfinished = run_folders(runs)
    if names is None:
        return finished
    done = [p.name for p in finished]
    for name in names:
        if name not in done:
            why = "has no final.pt (not finished)" if name in unfinished else "is not a run there"
            raise ValueError(f"--only {name}: {runs / name} {why}; finished runs: {', '.join(done) or 'none'}")
    return [p for p in finished if p.name in names]


def publish(runs: Path, folders: list[Path], dest: Path, data_dir: str, device: str, tolerance: float) -> int:
    dest.mkdir(parents=True, exist_ok=True)
    for name in REPORT:
        if (runs / name).is_file():
            shutil.copy2(runs / name, dest / name)
    rows, published, worst = [], set(), 0.0
    unfinished = run_folders(runs)[1]  # all of RUNS', with --only too
    for run in folders:
        (dest / "runs" / run.name).mkdir(parents=True, exist_ok=True)
        for name in RECORD:
            if (run / name).is_file():
                shutil.copy2(run / name, dest / "runs" / run.name / name)
        weights = dest / f"{run.name}.pt"
        resnetlab("export", "--checkpoint", str(run / "final.pt"), "--format", "weights-fp16", "--out", str(weights))
        final = last_test_row(run / "metrics.jsonl")
        split, compared = evaluated_split(run / "final.pt", final)
        argv = ["evaluate", "--checkpoint", str(weights), "--data-dir", data_dir]
        argv += ["--split", split] if split else []
        got = json.loads(resnetlab(*argv, "--device", device, "--workers", "0", "--quiet", "--json"))
        if compared:
            diff = got["top1_error"] - final["test_error"]
            worst, shown = max(worst, abs(diff)), f"{got['top1_error']:.2f} ({diff:+.2f})"
        else:  # the run evaluated training images it held out, which evaluate cannot select again
            shown = f"{got['top1_error']:.2f} on test (not compared: the run's are held-out training images)"
        minutes = final["time"] / 60
        rows.append(
            f"| {run.name} | `{weights.name}` | {weights.stat().st_size / 1e6:.2f} MB | {minutes:.1f} min | "
            f"{final['test_error']:.2f} ({final.get('eval_split', 'test')}) | {shown} | `resnetlab {' '.join(argv)}` |"
        )
        published.add(run.name)
        print(f"{run.name}: final {final['test_error']:.2f} %, fp16 weights {got['top1_error']:.2f} %", flush=True)
    head = [
        "| run | weights | size | wall time | error at the end of training (%, its split) | fp16 weights, evaluate (%) "
        "| command |",
        "|---|---|---|---|---|---|---|",
    ]
    kept = earlier_rows(dest, published)
    tail = [f"\nKept from an earlier publication: {', '.join(kept)}."] if kept else []
    tail += [f"\nStarted, not finished (no final.pt): {', '.join(unfinished)}."] if unfinished else []
    (dest / "weights.md").write_text("\n".join(head + rows + list(kept.values()) + tail) + "\n")
    print(f"wrote {dest / 'weights.md'}: {len(rows)} runs, largest difference {worst:.2f} points")
    if worst > tolerance:
        print(f"a difference over {tolerance} points: see weights.md", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", type=Path, help="reproduce's --out folder")
    p.add_argument("dest", type=Path, help="where the results go (a folder under docs/results)")
    p.add_argument("--data-dir", required=True, help="the data set the runs trained on (its test split)")
    p.add_argument("--only", nargs="+", metavar="RUN", help="publish only these finished runs (default: all)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tolerance", type=float, default=0.3, help="points between the run's and the weights' error")
    args = p.parse_args()
    if not args.runs.is_dir():
        p.error(f"{args.runs} is not a folder")
    try:
        folders = chosen(args.runs, args.only)
    except ValueError as e:
        p.error(str(e))
    return publish(args.runs, folders, args.dest, args.data_dir, args.device, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
