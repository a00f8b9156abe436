"""GPU acceptance: the CUDA tests, the throughput goals and the paper's degradation grid, in one run.

    bash scripts/gpu_acceptance.sh                 # on a CUDA machine: about 8 minutes on an H100/H200
    bash scripts/gpu_acceptance.sh --dry-run --out /tmp/acc    # every step on the CPU, tiny sizes

Steps (`--steps` picks some; each is a subprocess with its own log, bounded by the time left):
  tests    `pytest -m cuda`: bf16 vs fp32, channels_last, torch.compile and CUDA graphs vs eager,
           on-device augmentation CUDA = CPU, 10-crop / multi-scale CUDA = CPU, DDP over NCCL, detection
  bench    ResNet-50 training, batch 256, bf16, channels_last (eager and compiled): images/s, MFU
           (goal >= 5,000 images/s on an H100/H200)
  cifar    CIFAR ResNet-56 training step at the paper's batch 128 in several settings (eager bf16;
           torch.compile with CUDA graphs in bf16 and fp32): the fastest, projected over 64k iterations
           (goal <= 3 minutes)
  loop     the real training loop (evaluations included) with that setting: seconds per 1,000 iterations
  profile  torch.profiler table and Chrome trace of that setting's step, when the 3-minute goal is missed
  grid     `resnetlab reproduce degradation` on Fashion-MNIST at the paper's schedule (64k iterations, lr
           /10 at 32k and 48k): plain-20, plain-56, ResNet-20, ResNet-56 sharing the GPU. When the time
           left cannot hold 64k iterations (estimated from the `cifar` step time), the largest run of the
           paper's shape that fits (lr / 10 at 1/2 and 3/4), said in the results; --grid-iters forces it.
           A run cut by the time limit checkpoints (SIGTERM); the same command with --grid-dir resumes it
  analyze  `analyze curves` (figs. 1/6) and `analyze responses` (fig. 7) on the grid's latest checkpoints

Writes into --out (default benchmarks/results/gpu/<date>-<gpu>/): results.json (every figure), summary.md
(a short table), one log per step, the figures. results.json and summary.md are rewritten after every
step, so a run stopped half-way still leaves what it measured.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from steps import run_steps, wait_or_stop  # noqa: E402  (scripts/, stdlib only)

STEPS = ("tests", "bench", "cifar", "loop", "grid", "analyze", "profile")
GRID = ("plain20", "plain56", "resnet20", "resnet56")
PAPER_ITERS = 64_000
GOAL_RESNET50 = 5000.0  # images/s, ResNet-50 bf16 training on an H100/H200
GOAL_CIFAR_SECONDS = 180.0  # CIFAR ResNet-56, 64k iterations


@dataclass
class Ctx:
    args: argparse.Namespace
    out: Path
    device: str
    dry: bool
    deadline: float
    env: dict[str, str]
    results: dict = field(default_factory=dict)
    grid: Path | None = None

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def py(self) -> str:
        return sys.executable


def run(ctx: Ctx, name: str, cmd: list[str], *, timeout: float | None = None) -> tuple[int, float, str]:
    """Run `cmd` in its own process group, stdout to OUT/name.out, stderr to OUT/name.log; at the
    time limit SIGTERM the whole group (runs checkpoint and stop), SIGKILL 60 s later.
    Returns (exit status, seconds, stdout); 124 when the time limit stopped it."""
    limit = max(1.0, min(timeout if timeout is not None else ctx.left(), ctx.left()))
    t0 = time.monotonic()
    with open(ctx.out / f"{name}.out", "w") as out, open(ctx.out / f"{name}.log", "w") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=out, stderr=log, env=ctx.env, cwd=ROOT, start_new_session=True)
        rc = wait_or_stop(proc, limit, grace=60)
    seconds = time.monotonic() - t0
    print(f"[{name}] exit {rc} after {seconds:.0f} s", flush=True)
    return rc, seconds, (ctx.out / f"{name}.out").read_text()


def last_json(text: str) -> dict | None:
    """The last top-level JSON object printed (our commands print one at the end)."""
    start = text.rfind("\n{")
    start = 0 if text.startswith("{") and start < 0 else start + 1
    try:
        return json.loads(text[start:])
    except (json.JSONDecodeError, ValueError):
        return None


# ---- steps ----------------------------------------------------------------------------------------


def step_tests(ctx: Ctx) -> dict:
    # Every test marked cuda, in tests/cuda and beside its CPU twin (e.g. resuming a run on the GPU)
    # (the dry run collects tests/cuda alone: the whole tree's collection is the step's slowest part on a CPU)
    where = "tests/cuda" if ctx.dry else "tests"
    cmd = [ctx.py, "-m", "pytest", "-q", "-m", "cuda", where, "-p", "no:cacheprovider", "-rs"]
    rc, seconds, out = run(ctx, "tests", cmd, timeout=240)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", out)}
    status = "ok" if rc == 0 and not counts.get("failed") else "failed"
    return {"status": status, "seconds": seconds, "counts": counts, "command": shlex.join(cmd)}


def bench(ctx: Ctx, name: str, model: str, batch: int, precision: str, extra: list[str], iters: int, warmup: int):
    cmd = [ctx.py, "-m", "resnetlab", "bench", "train", "--model", model, "--batch-size", str(batch)]
    cmd += ["--device", ctx.device, "--precision", precision, "--iters", str(iters), "--warmup", str(warmup)]
    cmd += ["--json", *extra]
    rc, seconds, out = run(ctx, name, cmd, timeout=300)
    res = last_json(out) if rc == 0 else None
    if res is None:
        return {"status": "failed", "seconds": seconds, "command": shlex.join(cmd), "exit": rc}
    ours = res["ours"]
    return {
        "status": "ok",
        "seconds": seconds,
        "command": shlex.join(cmd),
        "images_per_s": ours["images_per_s"],
        "median_step_ms": 1e3 * ours["step_time_s"]["median"],
        "iqr_step_ms": 1e3 * ours["step_time_s"]["iqr"],
        "tflops": ours["tflops"],
        "mfu": ours["mfu"],
        "peak_memory_mib": ours["peak_memory_bytes"] / 2**20,
        "description": ours["description"],
    }


def step_bench(ctx: Ctx) -> dict:
    if ctx.dry:
        variants = {"eager": []}
        model, batch, iters, warmup, precision = "resnet18", 1, 1, 0, "fp32"
    else:
        variants = {"eager": ["--channels-last"], "compiled": ["--channels-last", "--compile"]}
        variants = {v: f for v, f in variants.items() if v in ctx.args.bench_variants.split(",")}
        model, batch, iters, warmup, precision = "resnet50", 256, 50, 10, "bf16"
    runs = {v: bench(ctx, f"bench-{v}", model, batch, precision, extra, iters, warmup) for v, extra in variants.items()}
    summary = best_variant(runs, "images_per_s", max)
    best = summary["best"]
    return {
        **summary,
        "model": model,
        "batch_size": batch,
        "images_per_s": runs[best]["images_per_s"] if best else None,
        "goal_images_per_s": GOAL_RESNET50,
        "goal_met": bool(best and not ctx.dry and runs[best]["images_per_s"] >= GOAL_RESNET50),
    }


def best_variant(runs: dict[str, dict], figure: str, pick) -> dict:
    """status, seconds, variants and the best variant by `figure` (`pick`: max or min) of a step's runs."""
    ok = {v: r for v, r in runs.items() if r["status"] == "ok"}
    return {
        "status": "ok" if ok else "failed",
        "seconds": sum(r["seconds"] for r in runs.values()),
        "variants": runs,
        "best": pick(ok, key=lambda v: ok[v][figure]) if ok else None,
    }


# name -> (precision, torch.compile mode or None for eager); bench flags and config overrides follow.
CIFAR_VARIANTS = {
    "eager-bf16": ("bf16", None),
    "graphs-bf16": ("bf16", "reduce-overhead"),
    "graphs-fp32": ("fp32", "reduce-overhead"),
}


def bench_flags(mode: str | None) -> list[str]:
    return ["--compile", "--compile-mode", mode] if mode else []


def config_overrides(precision: str, mode: str | None) -> list[str]:
    """The `--set` lines that give the loop (and the grid) a CIFAR variant's setting."""
    return [f"train.precision={precision}"] + (["train.compile=true", f"train.compile_mode={mode}"] if mode else [])


def step_cifar(ctx: Ctx) -> dict:
    chosen = ctx.args.cifar_variants.split(",")
    names = ["eager-bf16"] if ctx.dry else [n for n in CIFAR_VARIANTS if n in chosen]
    model, batch, iters, warmup = ("cifar_resnet20", 4, 1, 0) if ctx.dry else ("cifar_resnet56", 128, 300, 40)
    runs = {}
    for name in names:
        precision, mode = CIFAR_VARIANTS[name]
        extra = ["--channels-last", *bench_flags(mode)] + (["--train-images", "64"] if ctx.dry else [])
        runs[name] = bench(ctx, f"cifar-{name}", model, batch, precision, extra, iters, warmup)
        if runs[name]["status"] == "ok":
            runs[name]["projected_64k_s"] = PAPER_ITERS * runs[name]["median_step_ms"] / 1e3
    summary = best_variant(runs, "median_step_ms", min)
    best = summary["best"]
    return {
        **summary,
        "model": model,
        "batch_size": batch,
        "best_overrides": config_overrides(*CIFAR_VARIANTS[best]) if best else None,
        "projected_64k_s": runs[best]["projected_64k_s"] if best else None,
        "goal_s": GOAL_CIFAR_SECONDS,
    }


def chosen_overrides(ctx: Ctx) -> list[str]:
    """The fastest correct CIFAR setting measured in this run, else the one named on the command line."""
    if ctx.args.grid_set:
        return ctx.args.grid_set
    cifar = ctx.results["steps"].get("cifar") or {}
    if cifar.get("best_overrides") and not ctx.dry:
        return cifar["best_overrides"]
    return [] if ctx.dry else config_overrides(*CIFAR_VARIANTS["graphs-bf16"])


def step_loop(ctx: Ctx) -> dict:
    overrides = chosen_overrides(ctx)
    result_file = ctx.out / "loop.json"
    cmd = [ctx.py, "benchmarks/loop_time.py", "--device", ctx.device, "--result", str(result_file)]
    if ctx.dry:
        cmd += ["--model", "cifar_resnet20", "--iters", "4", "--eval-every", "2", "--batch-size", "4"]
        cmd += ["--train-images", "64"]
    else:
        cmd += ["--model", "cifar_resnet56", "--iters", "3000", "--eval-every", "1000"]
    if overrides:
        cmd += ["--set", *overrides]
    rc, seconds, _ = run(ctx, "loop", cmd, timeout=300)
    if rc or not result_file.is_file():
        return {"status": "failed", "seconds": seconds, "command": shlex.join(cmd), "exit": rc}
    res = json.loads(result_file.read_text())
    return {"status": "ok", "seconds": seconds, "command": shlex.join(cmd), **res}


def step_profile(ctx: Ctx) -> dict:
    cifar = ctx.results["steps"].get("cifar") or {}
    projected = cifar.get("projected_64k_s")
    if not ctx.dry and projected is not None and projected <= GOAL_CIFAR_SECONDS:
        return {"status": "skipped", "why": f"goal met ({projected:.0f} s <= {GOAL_CIFAR_SECONDS:.0f} s)"}
    best = cifar.get("best") or "eager-bf16"
    precision, mode = CIFAR_VARIANTS[best]
    cmd = [ctx.py, "benchmarks/profile_step.py", "--device", ctx.device, "--channels-last", "--rows", "30"]
    if ctx.dry:
        cmd += ["--model", "cifar_resnet20", "--batch-size", "4", "--steps", "1", "--warmup", "1"]
    else:
        cmd += ["--model", "cifar_resnet56", "--batch-size", "128", "--steps", "10", "--warmup", "30"]
        cmd += ["--precision", precision, *bench_flags(mode), "--trace", str(ctx.out / "trace-cifar-resnet56.json")]
    rc, seconds, _ = run(ctx, "profile", cmd, timeout=240)
    return {"status": "ok" if rc == 0 else "failed", "seconds": seconds, "setting": best, "command": shlex.join(cmd)}


def grid_dirs(ctx: Ctx) -> list[Path]:
    return [ctx.grid / f"{net}-seed0" for net in GRID]


def run_state(run_dir: Path) -> dict:
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    last = rows[-1] if rows else {}
    rate = None
    if len(rows) >= 2:  # the real loop's steady rate (evaluations included), between its first and last evaluation
        rate = 1000 * (rows[-1]["time"] - rows[0]["time"]) / (rows[-1]["iter"] - rows[0]["iter"])
    return {
        "seconds_per_1000_iters": rate,
        "finished": (run_dir / "final.pt").is_file(),
        "iterations": last.get("iter", 0),
        "test_error": last.get("test_error"),
        "train_error": last.get("train_error"),
        "train_loss": last.get("train_loss"),
        "seconds": last.get("time"),
    }


def step_grid(ctx: Ctx) -> dict:
    from resnetlab.data.readers import ensure_mnist

    ensure_mnist("fashion-mnist", Path(ctx.args.data_dir), False)  # unpack once, before four runs read it
    overrides = [f"data.dir={ctx.args.data_dir}", "data.download=false", *chosen_overrides(ctx)]
    cmd = [ctx.py, "-m", "resnetlab", "reproduce", "degradation", "--dataset", "fashion-mnist"]
    cmd += ["--device", ctx.device, "--out", str(ctx.grid), "--no-responses"]
    if ctx.dry:
        plan = {"iterations": 4, "why": "dry run"}
        cmd += ["--schedule", "short", "--iters", "4", "--eval-every", "2"]
        overrides += ["train.batch_size=8", "train.eval_batch_size=64"]
    else:
        plan = grid_schedule(ctx)
        iters = plan["iterations"]
        if iters == PAPER_ITERS:
            cmd += ["--schedule", "paper"]
        else:  # the paper's shape, shortened; about 40 points per curve
            cmd += ["--schedule", "short", "--iters", str(iters), "--eval-every", str(max(100, iters // 40))]
        cmd += ["--jobs-per-gpu", str(ctx.args.jobs_per_gpu)]
    cmd += [w for kv in overrides for w in ("--set", kv)]
    rc, seconds, _ = run(ctx, "grid", cmd, timeout=ctx.left() - ctx.args.reserve_s)
    runs = {d.name.removesuffix("-seed0"): run_state(d) for d in grid_dirs(ctx)}
    done = all(r["finished"] for r in runs.values())
    status = "ok" if done else ("partial" if rc == 124 else "failed")
    return {"status": status, "seconds": seconds, "exit": rc, "command": shlex.join(cmd), "runs": runs, **plan}


def grid_schedule(ctx: Ctx) -> dict:
    """How many iterations the grid gets: --grid-iters, else the paper's 64k when the time left allows,
    else the largest multiple of 2,000 that fits, with the paper's shape (lr / 10 at 1/2 and 3/4).

    The estimate, from the H200 run of 2026-11-30 (benchmarks/README.md): four runs sharing the GPU
    overlap well, and a grid iteration (one step of each network, evaluations every 250 iterations
    included) took 1.6x the CIFAR ResNet-56 step measured in `cifar` (9.6 vs 6.0 ms); 1.7x is used,
    after 60 s of start-up and compilation (25 s measured)."""
    if ctx.args.grid_iters:
        iters = ctx.args.grid_iters
        return {"iterations": iters, "why": "--grid-iters"}
    cifar = ctx.results["steps"].get("cifar") or {}
    best = (cifar.get("variants") or {}).get(cifar.get("best") or "", {})
    if not best.get("median_step_ms"):
        return {"iterations": PAPER_ITERS, "why": "no step time measured: the paper's schedule"}
    grid_step_s = 1.7 * best["median_step_ms"] / 1e3
    budget = ctx.left() - ctx.args.reserve_s - 60
    fits = int(budget / grid_step_s) // 2000 * 2000
    iters = max(2000, min(PAPER_ITERS, fits))
    return {
        "iterations": iters,
        "estimated_grid_step_ms": 1e3 * grid_step_s,
        "why": f"{budget:.0f} s left for training at an estimated {1e3 * grid_step_s:.2f} ms per grid iteration",
    }


def step_analyze(ctx: Ctx) -> dict:
    dirs = [d for d in grid_dirs(ctx) if (d / "metrics.jsonl").is_file()]
    if not dirs:
        return {"status": "skipped", "why": "no grid run has an evaluation yet"}
    cmd = [ctx.py, "-m", "resnetlab", "analyze", "curves", *map(str, dirs), "--out", str(ctx.out / "curves.png")]
    cmd += ["--title", "Fashion-MNIST, plain vs residual, paper schedule" + (" (dry run)" if ctx.dry else "")]
    rc_curves, s1, _ = run(ctx, "curves", cmd, timeout=120)
    checkpoints = [d / "final.pt" if (d / "final.pt").is_file() else d / "checkpoint.pt" for d in dirs]
    checkpoints = [c for c in checkpoints if c.is_file()]
    layers = {}
    rc_resp, s2 = 0, 0.0
    if checkpoints:
        cmd2 = [ctx.py, "-m", "resnetlab", "analyze", "responses", "--checkpoint", *map(str, checkpoints)]
        cmd2 += ["--out", str(ctx.out / "responses.png"), "--json", "--device", ctx.device]
        cmd2 += ["--data-dir", ctx.args.data_dir] + (["--max-images", "16"] if ctx.dry else [])
        rc_resp, s2, out = run(ctx, "responses", cmd2, timeout=180)
        parsed = last_json(out) if rc_resp == 0 else None
        if parsed is not None:
            (ctx.out / "responses.json").write_text(json.dumps(parsed, indent=1) + "\n")
            for res in parsed:
                stds = sorted(res["layers"].values())
                layers[res["label"]] = {
                    "layers": len(stds),
                    "median_std": stds[len(stds) // 2],
                    "mean_std": sum(stds) / len(stds),
                    "max_std": stds[-1],
                    "checkpoint_iteration_error": res.get("test_error"),
                }
    status = "ok" if rc_curves == 0 and rc_resp == 0 else "failed"
    return {"status": status, "seconds": s1 + s2, "responses": layers, "checkpoints": [str(c) for c in checkpoints]}


STEP_FNS = {
    "tests": step_tests,
    "bench": step_bench,
    "cifar": step_cifar,
    "loop": step_loop,
    "profile": step_profile,
    "grid": step_grid,
    "analyze": step_analyze,
}


# ---- report ---------------------------------------------------------------------------------------


def summary_md(r: dict) -> str:
    s = r["steps"]
    lines = [
        f"# GPU acceptance: {r['gpu']}, {r['date']}" + (" (dry run on the CPU)" if r["dry_run"] else ""),
        "",
        f"torch {r['torch']}, CUDA {r['cuda']}; command: `{r['command']}`",
        "",
        "| step | status | seconds | figure | goal |",
        "|---|---|---|---|---|",
    ]

    def row(name: str, figure: str = "", goal: str = "") -> None:
        st = s.get(name)
        if st is not None:
            lines.append(f"| {name} | {st['status']} | {st.get('seconds', 0):.0f} | {figure} | {goal} |")

    if "tests" in s:
        row("tests", ", ".join(f"{n} {k}" for k, n in s["tests"]["counts"].items()), "all pass")
    if "bench" in s:
        figs = [
            f"{v}: {x['images_per_s']:.0f} img/s, MFU {100 * (x['mfu'] or 0):.1f}%"
            for v, x in s["bench"]["variants"].items()
            if x["status"] == "ok"
        ]
        row("bench", f"{s['bench']['model']} b{s['bench']['batch_size']}: " + "; ".join(figs), ">= 5,000 img/s")
    if "cifar" in s:
        figs = [
            f"{v}: {x['median_step_ms']:.2f} ms/it ({x['projected_64k_s']:.0f} s / 64k)"
            for v, x in s["cifar"]["variants"].items()
            if x["status"] == "ok"
        ]
        row("cifar", "; ".join(figs) + f"; best {s['cifar']['best']}", "64k in <= 180 s")
    if "loop" in s and s["loop"]["status"] == "ok":
        lp = s["loop"]
        row(
            "loop",
            f"{lp['seconds_per_1000_iters']:.1f} s / 1000 it (evaluations in), start-up "
            f"{lp['seconds_to_first_eval']:.0f} s, 64k projected {lp['projected_paper_schedule_seconds']:.0f} s",
            "64k in <= 180 s",
        )
    elif "loop" in s:
        row("loop")
    for name in ("profile", "analyze"):
        if name in s:
            row(name, s[name].get("why", ""))
    if "grid" in s and "runs" not in s["grid"]:
        row("grid", s["grid"].get("why", ""))
    elif "grid" in s:
        row("grid", f"exit {s['grid']['exit']}; {s['grid']['iterations']} iterations ({s['grid']['why']})", "4 x 64k")
        lines += ["", "| network | finished | iterations | test error % | training error % | seconds | s / 1000 it |"]
        lines.append("|---|---|---|---|---|---|---|")
        for net, st in s["grid"]["runs"].items():
            te = f"{st['test_error']:.2f}" if st["test_error"] is not None else "-"
            tr = f"{st['train_error']:.2f}" if st["train_error"] is not None else "-"
            sec = f"{st['seconds']:.0f}" if st["seconds"] is not None else "-"
            rate = f"{st['seconds_per_1000_iters']:.1f}" if st.get("seconds_per_1000_iters") else "-"
            lines.append(f"| {net} | {st['finished']} | {st['iterations']} | {te} | {tr} | {sec} | {rate} |")
    if s.get("analyze", {}).get("responses"):
        lines += ["", "| network (fig. 7) | layers | median std | mean std | max std |", "|---|---|---|---|---|"]
        for label, x in s["analyze"]["responses"].items():
            lines.append(
                f"| {label} | {x['layers']} | {x['median_std']:.3f} | {x['mean_std']:.3f} | {x['max_std']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def write(ctx: Ctx) -> None:
    (ctx.out / "results.json").write_text(json.dumps(ctx.results, indent=2) + "\n")
    (ctx.out / "summary.md").write_text(summary_md(ctx.results))


def fake_fashion_mnist(root: Path, train: int = 128, test: int = 64) -> Path:
    """Tiny files in Fashion-MNIST's real format (gzipped IDX) under root/FashionMNIST/raw/, for --dry-run
    on a machine without the data set; class k's images are noise plus a brighter band k, so it learns."""
    import gzip
    import struct

    import numpy as np

    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        images = rng.integers(0, 100, (n, 28, 28), dtype=np.uint8)
        for i, k in enumerate(labels):
            images[i, 2 * k + 4 : 2 * k + 7] += 120
        with gzip.open(raw / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes())
        with gzip.open(raw / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 0x801, n) + labels.tobytes())
    return root


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU with tiny sizes (minutes)")
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results/gpu/<date>-<gpu>)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--budget-s", type=float, default=480, help="wall-clock budget of the whole run (default 480)")
    p.add_argument("--reserve-s", type=float, default=90, help="time kept for `analyze` after the grid")
    p.add_argument("--data-dir", default=None, help="data.dir holding FashionMNIST/raw/ (default: .gpudata/)")
    p.add_argument("--grid-dir", type=Path, help="the grid's runs (default OUT/grid); an earlier one resumes")
    p.add_argument("--jobs-per-gpu", type=int, default=4, help="grid runs sharing the GPU (default 4)")
    p.add_argument("--bench-variants", default="eager,compiled", help="ResNet-50 settings (eager,compiled)")
    p.add_argument(
        "--cifar-variants",
        default=",".join(CIFAR_VARIANTS),
        help=f"ResNet-56 settings ({','.join(CIFAR_VARIANTS)})",
    )
    p.add_argument("--grid-iters", type=int, help="grid iterations (default: 64k, or what the time left allows)")
    p.add_argument("--grid-set", nargs="*", metavar="KEY=VALUE", help="grid/loop setting (default: fastest)")
    args = p.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        p.error(f"--steps: unknown step {unknown[0]!r}; steps: {', '.join(STEPS)}")

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("no CUDA device: run on a GPU machine, or pass --dry-run to exercise every step on the CPU")
        return 2
    gpu = torch.cuda.get_device_name() if cuda and not args.dry_run else "cpu"
    date = dt.date.today().isoformat()
    slug = re.sub(r"[^a-z0-9]+", "-", gpu.lower()).strip("-")
    out = args.out or ROOT / "benchmarks" / "results" / "gpu" / f"{date}-{slug}"
    out.mkdir(parents=True, exist_ok=True)
    if args.data_dir is None:
        args.data_dir = str(fake_fashion_mnist(out / "fakedata") if args.dry_run else ROOT / ".gpudata")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env["PYTHONUNBUFFERED"] = "1"
    if args.dry_run:
        env["OMP_NUM_THREADS"] = "1"  # tiny CPU work: threads only wait for each other (benchmarks/README.md)
    ctx = Ctx(args, out, "cpu" if args.dry_run else "cuda", args.dry_run, time.monotonic() + args.budget_s, env)
    ctx.grid = args.grid_dir or out / "grid"
    ctx.results = {
        "gpu": gpu,
        "date": date,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "command": shlex.join(["bash", "scripts/gpu_acceptance.sh", *(argv if argv is not None else sys.argv[1:])]),
        "dry_run": args.dry_run,
        "budget_s": args.budget_s,
        "steps": {},
    }
    return run_steps(ctx, steps, STEP_FNS, write=write, summary_md=summary_md, out=out)


if __name__ == "__main__":
    sys.exit(main())
