"""The CIFAR section of the paper (sec. 4.2) in GPU windows: table 6's ResNet-20/32/44/56/110 and fig. 6's
plain-20/32/44/56, one seed, 64k iterations each, on the CIFAR-10 JPEG folder carried in with
scripts/carry_data.py; then table 6 beside the paper's, the fig. 6 curves and the fig. 7 responses.

    bash scripts/gpu_cifar_section.sh --out "$OUT"              # on the lent GPU (a window of ~12 minutes)
    bash scripts/gpu_cifar_section.sh --dry-run --out /tmp/cs   # every step on the CPU, tiny sizes

Steps (`--steps` picks some; each is a subprocess with its own log, bounded by the time left):
  unpack      .carry/DATA_PACK (default cifar10-jpeg) -> --data-dir, every part checked (SHA-256)
  restore     .carry/RESTORE_PACK (default cifar-runs), the run folders an earlier window sent back,
              unpacked and merged into --grid-dir: a run folder is taken when the grid's copy is missing
              or has got less far (a warm machine's newer one stays)
  bf16-check  ResNet-20 and plain-20, 10k iterations, 2 seeds, bf16 vs fp32 (TF32 off): the grid trains
              in bf16 only when each net's mean test error is within seed noise of fp32's, else in fp32 with
              TF32 off. The decision is written once (GRID/bf16-check.json) and kept by later windows, so a
              resumed run never changes precision.
  grid        `resnetlab reproduce cifar-section` with a budget (the time left less --reserve-s): the runs
              share the GPU (--jobs-per-gpu; with --batch-runs K, stackable runs train K at a time as
              one computation, each group one job: ResNet-n with plain-n for K=2); at the budget they
              checkpoint and stop (exit 124), and the next window resumes them. When all nine are
              done: table.md (beside the paper's), curves.png, responses.png.
After every step the run folders' small files and one checkpoint each (final.pt when done, else
checkpoint.pt; never both, no TensorBoard) are copied into OUT/runs/, which is what comes back; the
total is printed (it must stay under the 64 MiB a call returns). For the next window, pack what came back:
`python3 scripts/carry_data.py pack FILES_AT/runs cifar-runs` and carry its parts (benchmarks/README.md).

Writes into --out: results.json, summary.md (rewritten after every step), one log per step, runs/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import carry_data  # noqa: E402  (scripts/, stdlib only)
from steps import run_steps, wait_or_stop  # noqa: E402  (scripts/, stdlib only)

STEPS = ("unpack", "restore", "bf16-check", "grid")
NOISE_FLOOR = 0.5  # points of test error: two seeds of a 10k-iteration run differ by about this much
GRAPHS = ["train.compile=true", "train.compile_mode=reduce-overhead"]  # fastest on the H200 (benchmarks/README.md)
RETURN_LIMIT = 64 * 2**20  # what one call of the device tool brings back


@dataclass
class Ctx:
    args: argparse.Namespace
    out: Path
    grid: Path
    dry: bool
    deadline: float
    env: dict[str, str]
    results: dict = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def py(self) -> str:
        return sys.executable


def run(ctx: Ctx, name: str, cmds: list[list[str]], *, timeout: float | None = None) -> tuple[list[int], float]:
    """Run `cmds` at the same time, each in its own process group, output to OUT/name[-i].log; at the
    time limit SIGTERM every group (runs checkpoint and stop), SIGKILL 90 s later. Returns (exit
    statuses, seconds); 124 for a command the time limit stopped."""
    limit = max(1.0, min(timeout if timeout is not None else ctx.left(), ctx.left()))
    t0 = time.monotonic()
    procs = []
    for i, cmd in enumerate(cmds):
        log = open(ctx.out / (f"{name}.log" if len(cmds) == 1 else f"{name}-{i}.log"), "w")
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=ctx.env, cwd=ROOT, start_new_session=True
        )
        procs.append((proc, log))
    codes = []
    for proc, log in procs:
        rc = wait_or_stop(proc, limit - (time.monotonic() - t0), grace=90)
        log.close()
        codes.append(rc)
    seconds = time.monotonic() - t0
    print(f"[{name}] exit {codes} after {seconds:.0f} s", flush=True)
    return codes, seconds


def reproduce(ctx: Ctx, grid: str, out: Path, precision: str, *, iters: int | None, extra: list[str]) -> list[str]:
    """The `resnetlab reproduce GRID` command of this run's data, device and speed settings."""
    a = ctx.args
    cmd = [ctx.py, "-m", "resnetlab", "reproduce", grid, "--dataset", a.dataset, "--out", str(out)]
    cmd += ["--data-dir", str(a.data_dir), "--device", "cpu" if ctx.dry else "cuda", *extra]
    overrides = [f"train.precision={precision}", "train.tf32=false"]  # the paper's fp32 (the default), recorded
    if ctx.dry:  # a few iterations of tiny batches; the real schedule's shape
        cmd += ["--schedule", "short", "--iters", str(iters or 4), "--eval-every", "2", "--max-images", "16"]
        overrides += ["train.batch_size=8", "train.eval_batch_size=64"]
    else:
        cmd += ["--schedule", "short", "--iters", str(iters)] if iters else ["--schedule", "paper"]
        cmd += ["--jobs-per-gpu", str(a.jobs_per_gpu)]
        overrides += GRAPHS
    if a.batch_runs > 1:  # stackable runs (a net's seeds, a ResNet and its plain twin) as one computation
        cmd += ["--batch-runs", str(a.batch_runs)]
    if a.val_split:
        overrides.append(f"data.val_split={a.val_split}")
    return cmd + [w for kv in overrides + (a.set or []) for w in ("--set", kv)]


# ---- steps ----------------------------------------------------------------------------------------


def step_unpack(ctx: Ctx) -> dict:
    pack = ctx.args.carry / ctx.args.data_pack
    if not (pack / "MANIFEST").is_file():
        if (ctx.args.data_dir / "train").is_dir():
            return {"status": "skipped", "why": f"no {pack}/MANIFEST; {ctx.args.data_dir} is there"}
        return {"status": "failed", "why": f"no {pack}/MANIFEST and no {ctx.args.data_dir}/train: carry the data"}
    cmd = [ctx.py, str(ROOT / "scripts" / "carry_data.py"), "unpack", str(pack), str(ctx.args.data_dir)]
    (rc,), seconds = run(ctx, "unpack", [cmd], timeout=300)
    return {"status": "ok" if rc == 0 else "failed", "seconds": seconds, "command": shlex.join(cmd)}


def progress(run_dir: Path) -> tuple[bool, int]:
    """(finished, last evaluated iteration) of a run folder: how far it got."""
    metrics = run_dir / "metrics.jsonl"
    rows = metrics.read_text().splitlines() if metrics.is_file() else []
    return (run_dir / "final.pt").is_file(), json.loads(rows[-1])["iter"] if rows else 0


def step_restore(ctx: Ctx) -> dict:
    pack = ctx.args.carry / ctx.args.restore_pack
    if not (pack / "MANIFEST").is_file():
        return {"status": "skipped", "why": f"no {pack}/MANIFEST (a first window)"}
    staging = ctx.grid.parent / f".{ctx.grid.name}-restore"
    cmd = [ctx.py, str(ROOT / "scripts" / "carry_data.py"), "unpack", str(pack), str(staging)]
    (rc,), seconds = run(ctx, "restore", [cmd], timeout=300)
    if rc:
        return {"status": "failed", "seconds": seconds, "command": shlex.join(cmd)}
    taken, kept = [], []
    for config in sorted(staging.rglob("config.yaml")):
        src = config.parent
        rel = src.relative_to(staging)
        dest = ctx.grid / rel
        if dest.is_dir() and progress(dest) >= progress(src):
            kept.append(str(rel))
            continue
        if dest.is_dir():
            shutil.rmtree(dest)
        shutil.copytree(src, dest)
        taken.append(str(rel))
    for top in staging.glob("*.json"):  # the bf16 decision, once made
        if not (ctx.grid / top.name).is_file():
            ctx.grid.mkdir(parents=True, exist_ok=True)
            shutil.copy2(top, ctx.grid / top.name)
    return {"status": "ok", "seconds": seconds, "restored": taken, "kept_newer_here": kept}


def rate(run_dir: Path) -> float | None:
    """Seconds per 1,000 iterations between the run's first and last evaluation (this window's)."""
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    if len(rows) < 2 or rows[-1]["iter"] == rows[0]["iter"]:
        return None
    return 1000 * (rows[-1]["time"] - rows[0]["time"]) / (rows[-1]["iter"] - rows[0]["iter"])


def final_error(run_dir: Path) -> float | None:
    if not (run_dir / "final.pt").is_file():
        return None
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows[-1]["test_error"]


def step_bf16_check(ctx: Ctx) -> dict:
    decision_file = ctx.grid / "bf16-check.json"
    if ctx.args.precision != "auto":
        return {"status": "skipped", "precision": ctx.args.precision, "why": "--precision"}
    if decision_file.is_file():  # made in an earlier window: the grid's runs were started with it
        return {"status": "skipped", **json.loads(decision_file.read_text()), "why": "decided earlier"}
    check = ctx.grid / "bf16-check"
    iters = 4 if ctx.dry else ctx.args.check_iters
    cmds = [
        reproduce(ctx, "bf16-check", check / p, p, iters=iters, extra=["--seeds", "2", "--no-responses"])
        for p in ("fp32", "bf16")
    ]
    codes, seconds = run(ctx, "bf16-check", cmds, timeout=ctx.left() - ctx.args.reserve_s - 60)
    nets, ok = {}, True
    for net in ("resnet20", "plain20"):
        errs = {p: [final_error(check / p / f"{net}-seed{s}") for s in (0, 1)] for p in ("fp32", "bf16")}
        if any(e is None for v in errs.values() for e in v):
            nets[net], ok = {"errors": errs, "within_noise": None}, False
            continue
        mean = {p: sum(v) / 2 for p, v in errs.items()}
        noise = max(abs(errs["fp32"][0] - errs["fp32"][1]), abs(errs["bf16"][0] - errs["bf16"][1]), NOISE_FLOOR)
        within = abs(mean["bf16"] - mean["fp32"]) <= noise
        nets[net] = {"errors": errs, "mean": mean, "noise": noise, "within_noise": within}
        ok = ok and within
    finished = all(n["within_noise"] is not None for n in nets.values())
    decision = {
        "precision": "bf16" if ok else "fp32",
        "why": (
            "bf16 within seed noise of fp32 (TF32 off) for both nets"
            if ok
            else "bf16 differs from fp32 by more than seed noise"
            if finished
            else "check unfinished: fp32 (TF32 off), the paper's numerics"
        ),
        "nets": nets,
        "iterations": iters,
    }
    ctx.grid.mkdir(parents=True, exist_ok=True)
    decision_file.write_text(json.dumps(decision, indent=1) + "\n")
    status = "ok" if finished else "partial" if 124 in codes else "failed"
    return {"status": status, "seconds": seconds, "exit": codes, **decision}


def step_grid(ctx: Ctx) -> dict:
    decision = ctx.grid / "bf16-check.json"
    precision = ctx.args.precision
    if precision == "auto":
        precision = json.loads(decision.read_text())["precision"] if decision.is_file() else "fp32"
    budget = ctx.args.grid_budget_s or ctx.left() - ctx.args.reserve_s
    if budget < (1 if ctx.dry else 30):
        return {"status": "skipped", "why": f"{budget:.0f} s left for the grid"}
    iters = ctx.args.dry_iters if ctx.dry else None
    name = ctx.args.dry_grid if ctx.dry else "cifar-section"
    cmd = reproduce(ctx, name, ctx.grid / "grid", precision, iters=iters, extra=["--budget-s", f"{budget:.0f}"])
    (rc,), seconds = run(ctx, "grid", [cmd], timeout=ctx.left())
    runs = {}
    for d in sorted((ctx.grid / "grid").glob("*-seed0")):
        done, it = progress(d)
        runs[d.name.removesuffix("-seed0")] = {
            "finished": done,
            "iterations": it,
            "test_error": final_error(d),
            "seconds_per_1000_iters": rate(d),  # evaluations included, sharing the GPU: plans the next window
        }
    status = "ok" if rc == 0 else "partial" if rc == 124 else "failed"
    return {
        "status": status,
        "seconds": seconds,
        "exit": rc,
        "precision": precision,
        "runs": runs,
        "command": shlex.join(cmd),
    }


STEP_FNS = {"unpack": step_unpack, "restore": step_restore, "bf16-check": step_bf16_check, "grid": step_grid}


# ---- what comes back --------------------------------------------------------------------------------


def collect(ctx: Ctx) -> int:
    """GRID's run folders into OUT/runs: small files, and final.pt (done) or checkpoint.pt (to resume),
    fp32 weights as saved, never both; the grid's table and figures. Returns the bytes under OUT."""
    dest_root = ctx.out / "runs"
    if not ctx.grid.is_dir():
        return 0
    for config in ctx.grid.rglob("config.yaml"):
        src = config.parent
        if src.name.startswith("."):
            continue
        dest = dest_root / src.relative_to(ctx.grid)
        dest.mkdir(parents=True, exist_ok=True)
        in_check = "bf16-check" in src.relative_to(ctx.grid).parts  # its figures are kept; its weights are not
        keep = None if in_check else "final.pt" if (src / "final.pt").is_file() else "checkpoint.pt"
        for f in src.iterdir():
            if f.is_file() and not f.name.startswith(".") and (f.suffix != ".pt" or f.name == keep):
                if not (dest / f.name).is_file() or (dest / f.name).stat().st_mtime < f.stat().st_mtime:
                    shutil.copy2(f, dest / f.name)
        if keep != "checkpoint.pt":
            (dest / "checkpoint.pt").unlink(missing_ok=True)  # superseded by final.pt
    for f in [*ctx.grid.glob("*.json"), *(ctx.grid / "grid").glob("*")]:
        if f.is_file():
            (dest_root / f.relative_to(ctx.grid)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest_root / f.relative_to(ctx.grid))
    return sum(f.stat().st_size for f in ctx.out.rglob("*") if f.is_file())


def summary_md(r: dict) -> str:
    s = r["steps"]
    lines = [
        f"# CIFAR section (sec. 4.2): {r['gpu']}, {r['date']}" + (" (dry run on the CPU)" if r["dry_run"] else ""),
        "",
        f"torch {r['torch']}; command: `{r['command']}`; OUT holds {r.get('out_mib', 0):.1f} MiB",
        "",
        "| step | status | seconds | note |",
        "|---|---|---|---|",
    ]
    for name, st in s.items():
        note = st.get("why", "") or (f"precision {st['precision']}" if "precision" in st else "")
        lines.append(f"| {name} | {st['status']} | {st.get('seconds', 0):.0f} | {note} |")
    if "runs" in s.get("grid", {}):
        lines += ["", "| network | finished | iterations | test error % | s / 1000 it |", "|---|---|---|---|---|"]
        for net, st in s["grid"]["runs"].items():
            te = f"{st['test_error']:.2f}" if st["test_error"] is not None else "-"
            sp = f"{st['seconds_per_1000_iters']:.1f}" if st.get("seconds_per_1000_iters") else "-"
            lines.append(f"| {net} | {st['finished']} | {st['iterations']} | {te} | {sp} |")
    return "\n".join(lines) + "\n"


def write(ctx: Ctx) -> None:
    ctx.results["out_mib"] = collect(ctx) / 2**20
    if ctx.results["out_mib"] * 2**20 > RETURN_LIMIT:
        print(f"warning: OUT holds {ctx.results['out_mib']:.1f} MiB, over the {RETURN_LIMIT >> 20} MiB a call returns")
    (ctx.out / "results.json").write_text(json.dumps(ctx.results, indent=2) + "\n")
    (ctx.out / "summary.md").write_text(summary_md(ctx.results))


# ---- dry run ----------------------------------------------------------------------------------------


def fake_jpeg_folder(root: Path, train: int = 4, test: int = 2, size: int = 32) -> Path:
    """CIFAR-10's JPEG layout in miniature: train/<class>/NNNN.jpg and test/<class>/NNNN.jpg, `size`
    pixels square (CIFAR's 32 by default); class k is noise plus a bright row band k, so it learns."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    for split, n in (("train", train), ("test", test)):
        for k, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = rng.integers(0, 100, (size, size, 3), dtype=np.uint8)
                img[k * size // 10 : (k + 1) * size // 10] += 120
                Image.fromarray(img).save(root / split / cls / f"{i:04d}.jpg", quality=90)
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU, tiny sizes (a tiny JPEG folder)")
    p.add_argument(
        "--out", type=Path, help="what comes back (default $OUT, else benchmarks/results/gpu/<date>-<gpu>-cifar)"
    )
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--budget-s", type=float, default=540, help="wall-clock budget of the whole run (default 540)")
    p.add_argument("--reserve-s", type=float, default=45, help="time kept after the grid (collecting into OUT)")
    p.add_argument("--carry", type=Path, default=ROOT / ".carry", help="where carried packs are (default .carry)")
    p.add_argument("--data-pack", default="cifar10-jpeg", help="the data's pack under --carry")
    p.add_argument("--restore-pack", default="cifar-runs", help="an earlier window's runs under --carry")
    p.add_argument("--data-dir", type=Path, help="the ImageFolder (default /tmp/cifar10-jpeg)")
    p.add_argument("--dataset", default="imagefolder", help="imagefolder (default) or a built-in dataset name")
    p.add_argument(
        "--grid-dir", type=Path, help="the runs (default runs/cifar-section, kept while the machine is warm)"
    )
    p.add_argument("--jobs-per-gpu", type=int, default=9, help="runs sharing the GPU (default 9: all at once)")
    p.add_argument(
        "--batch-runs",
        type=int,
        default=1,
        metavar="K",
        help="reproduce --batch-runs K: up to K stackable runs as one computation, one job of --jobs-per-gpu "
        "(default 1: off; the grid's twins pair up with 2: five jobs)",
    )
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: the bf16 check decides")
    p.add_argument("--check-iters", type=int, default=10_000, help="bf16-check iterations (default 10k)")
    p.add_argument("--val-split", type=int, default=0, help="5000: the 45k/5k model-selection variant")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="more config overrides for every run")
    p.add_argument("--dry-iters", type=int, default=4, help=argparse.SUPPRESS)
    # Tests: the dry run's images are 16x16 (CIFAR's nets run on any size; a quarter of the work of 32x32),
    # and its grid may be a smaller one of the same kind (degradation: four of the nine nets).
    p.add_argument("--dry-size", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--dry-grid", default="cifar-section", help=argparse.SUPPRESS)
    p.add_argument("--grid-budget-s", type=float, default=None, help=argparse.SUPPRESS)  # tests: stop the grid early
    args = p.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        p.error(f"--steps: unknown step {unknown[0]!r}; steps: {', '.join(STEPS)}")

    if args.dry_run:  # the CPU: this process needs no torch (its steps are subprocesses), a few seconds saved
        gpu, torch_version = "cpu", importlib.metadata.version("torch")
    else:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: run on a GPU machine, or pass --dry-run to exercise every step on the CPU")
            return 2
        gpu, torch_version = torch.cuda.get_device_name(), torch.__version__
    date = dt.date.today().isoformat()
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    default_out = os.environ.get("OUT") or ROOT / "benchmarks" / "results" / "gpu" / f"{date}-{slug}-cifar"
    out = (args.out or Path(default_out)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    grid = args.grid_dir or (out.parent / f"{out.name}-grid" if args.dry_run else ROOT / "runs" / "cifar-section")
    if args.dry_run and args.data_dir is None:  # the tiny folder, packed in small parts as the real one is
        work = out.parent / f"{out.name}-dry"
        if not (work / "carry" / args.data_pack / "MANIFEST").is_file():
            jpeg = fake_jpeg_folder(work / "jpeg", size=args.dry_size)
            carry_data.pack(jpeg, args.data_pack, 20_000, carry=work / "carry")
        args.carry, args.data_dir = work / "carry", work / "data"
        if args.dataset != "imagefolder":  # a built-in dataset in its real format (before issue 21's folder path)
            sys.path.insert(0, str(ROOT / "scripts"))
            from gpu_acceptance import fake_fashion_mnist

            args.data_dir = fake_fashion_mnist(work / "builtin")
    args.data_dir = (args.data_dir or Path("/tmp/cifar10-jpeg")).resolve()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env["PYTHONUNBUFFERED"] = "1"
    if args.dry_run:
        env["OMP_NUM_THREADS"] = "1"
    ctx = Ctx(args, out, grid.resolve(), args.dry_run, time.monotonic() + args.budget_s, env)
    ctx.results = {
        "gpu": gpu,
        "date": date,
        "torch": torch_version,
        "command": shlex.join(["bash", "scripts/gpu_cifar_section.sh", *(argv if argv is not None else sys.argv[1:])]),
        "dry_run": args.dry_run,
        "budget_s": args.budget_s,
        "grid_dir": str(ctx.grid),
        "steps": {},
    }
    return run_steps(ctx, steps, STEP_FNS, write=write, summary_md=summary_md, out=out)


if __name__ == "__main__":
    sys.exit(main())
