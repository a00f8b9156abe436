"""Several small training runs on one device: batched into one computation, one after another, or as
separate processes. Issue 23 item 2: which way fits the paper's CIFAR section on one GPU soonest?

For each K in --ks and each mode, K runs of --model (seeds 0..K-1; with --plain-twins every second one
is the plain twin) train on CIFAR-shaped synthetic data through our real pieces (`DeviceTrainSource`
per run, SGD with momentum and weight decay, batch --batch-size each):
  batched     one process, the K networks stacked into one grouped network (`stack_models`) and one
              `make_train_step` (K runs) per iteration: what `train_batched` runs
  sequential  one process, K ordinary `make_train_step`s in turn: the throughput of K separate runs one
              after another (K = 1: one run alone, the baseline)
  processes   K processes, one run each, timed over the same wall-clock window (start together after
              their warm-up); on CUDA with the MPS daemon running (`nvidia-cuda-mps-control -d`) this is
              "several processes with MPS"
Figures: the median time of one iteration of all K runs (CUDA events / perf_counter; warm-up not timed),
images/s in total and per run, the speed-up over one run alone, peak memory, and the minutes the K runs
need for the paper's 64k iterations at that rate (evaluation left out). cudnn.benchmark is on on CUDA,
as in training.

    python benchmarks/batched_runs.py --device cuda --model cifar_resnet56 --ks 1 2 4 8 \
        --precision bf16 --channels-last --compile --compile-mode reduce-overhead --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from resnetlab.bench.hardware import cpu_model, device_name, peak_memory, reset_peak_memory
from resnetlab.bench.pipelines import cifar_train_source
from resnetlab.bench.timing import make_clock, summarize, synchronize, time_steps
from resnetlab.models import create_model
from resnetlab.models.stacked import stack_models
from resnetlab.train.step import compile_model, make_sgd, make_train_step
from resnetlab.utils.device import resolve_device

PAPER_ITERS = 64_000
MODES = ("batched", "sequential", "processes")


def model_names(args: argparse.Namespace, k: int) -> list[str]:
    """Run i's network: --model, or its plain twin for odd i with --plain-twins."""
    twin = args.model.replace("resnet", "plain")
    return [twin if args.plain_twins and i % 2 else args.model for i in range(k)]


def build(args: argparse.Namespace, names: list[str], seeds: list[int], device: torch.device):
    """The runs' networks (on the device, in the asked layout) and their training sources."""
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    models, sources = [], []
    for name, seed in zip(names, seeds):
        torch.manual_seed(seed)
        models.append(create_model(name).to(device, memory_format=fmt))
        sources.append(cifar_train_source(device, args.batch_size, images=args.train_images, seed=seed))
    return models, sources


def sgd(model: torch.nn.Module) -> torch.optim.SGD:
    return make_sgd(model, lr=0.1, momentum=0.9, weight_decay=1e-4)  # sec. 4.2


def batched_iteration(args, models, sources, device):
    """One step of every run through the stacked network."""
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    wide = stack_models(models, memory_format=fmt)
    net = compile_model(wide, args.compile_mode) if args.compile else wide
    net.train()
    step = make_train_step(
        net, [sgd(m) for m in models], device=device, precision=args.precision, channels_last=args.channels_last
    )
    streams = [s.batches(0) for s in sources]

    def iteration() -> object:
        batches = [next(stream) for stream in streams]
        return step([x for x, _ in batches], [y for _, y in batches])

    return iteration


def sequential_iteration(args, models, sources, device):
    """One step of each run in turn, each its own ordinary network and `make_train_step`."""
    steps = []
    for model in models:
        model.train()
        call = compile_model(model, args.compile_mode) if args.compile else model
        steps.append(
            make_train_step(call, sgd(model), device=device, precision=args.precision, channels_last=args.channels_last)
        )
    streams = [s.batches(0) for s in sources]

    def iteration() -> object:
        return [step(*next(stream)) for step, stream in zip(steps, streams)]

    return iteration


def measure_in_process(args, mode: str, k: int, device: torch.device) -> dict:
    models, sources = build(args, model_names(args, k), list(range(k)), device)
    make = batched_iteration if mode == "batched" else sequential_iteration
    reset_peak_memory(device)
    iteration = make(args, models, sources, device)
    times = time_steps(iteration, iters=args.iters, warmup=args.warmup, clock=make_clock(device), device=device)
    stats = summarize(times)
    memory, what = peak_memory(device)
    return result(mode, k, args, stats.median, stats.to_dict(), memory, what)


def measure_processes(args, k: int) -> dict:
    """K worker processes (this script with --worker), released together after their warm-ups."""
    names = model_names(args, k)
    command = [sys.executable, __file__, "--worker", *worker_flags(args)]
    workers = [
        subprocess.Popen(
            [*command, "--model", name, "--seed", str(i)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for i, name in enumerate(names)
    ]
    try:
        for w in workers:
            if w.stdout.readline().strip() != "ready":
                raise RuntimeError("a worker process failed before its warm-up ended (its stderr is above)")
        for w in workers:
            w.stdin.write("go\n")
            w.stdin.flush()
        reports = [json.loads(w.stdout.readline()) for w in workers]
    finally:
        for w in workers:
            w.wait(timeout=600)
    wall = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    per_iteration = wall / args.iters  # all K runs advance one iteration in this time, on average
    memory = max(r["peak_memory"] for r in reports)
    out = result(
        "processes", k, args, per_iteration, {"wall_s": wall}, memory, reports[0]["peak_memory_what"] + " (max)"
    )
    out["per_process_images_per_s"] = [r["images"] / (r["end"] - r["start"]) for r in reports]
    return out


def worker(args: argparse.Namespace) -> int:
    """One run alone: warm up, say "ready", wait for "go", time --iters steps, print a JSON line."""
    device = resolve_device(args.device)
    setup(args, device)
    models, sources = build(args, [args.model], [args.seed], device)
    iteration = sequential_iteration(args, models, sources, device)
    reset_peak_memory(device)
    for _ in range(args.warmup):
        iteration()
    synchronize(device)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    for _ in range(args.iters):
        iteration()
    synchronize(device)
    end = time.time()
    memory, what = peak_memory(device)
    report = {"start": start, "end": end, "images": args.iters * args.batch_size, "peak_memory": memory}
    print(json.dumps({**report, "peak_memory_what": what}), flush=True)
    return 0


def result(mode: str, k: int, args, iteration_s: float, timing: dict, memory: int, what: str) -> dict:
    return {
        "mode": mode,
        "k": k,
        "models": model_names(args, k),
        "iteration_s": iteration_s,  # median time for one step of every one of the K runs
        "timing": timing,
        "images_per_s_total": k * args.batch_size / iteration_s,
        "images_per_s_per_run": args.batch_size / iteration_s,
        "paper_64k_minutes": PAPER_ITERS * iteration_s / 60,  # the K runs' 64k iterations, evaluation excluded
        "peak_memory_bytes": memory,
        "peak_memory_what": what,
    }


def setup(args: argparse.Namespace, device: torch.device) -> None:
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as in training: fixed shapes, cuDNN times its kernels


def worker_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--device", args.device, "--batch-size", str(args.batch_size), "--iters", str(args.iters)]
    flags += ["--warmup", str(args.warmup), "--precision", args.precision, "--threads", str(args.threads)]
    flags += ["--train-images", str(args.train_images), "--compile-mode", args.compile_mode]
    return flags + (["--channels-last"] if args.channels_last else []) + (["--compile"] if args.compile else [])


def machine(device: torch.device) -> dict:
    return {
        "device": device_name(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        # Where an MPS daemon listens (its default pipe folder, if it exists): "processes" share the GPU through it.
        "cuda_mps_pipe": os.environ.get("CUDA_MPS_PIPE_DIRECTORY")
        or ("/tmp/nvidia-mps" if Path("/tmp/nvidia-mps").exists() else None),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def table(results: list[dict]) -> str:
    base = next((r for r in results if r["k"] == 1 and r["mode"] == "sequential"), None) or next(
        (r for r in results if r["k"] == 1), None
    )
    lines = [
        f"{'mode':<11} {'K':>3} {'ms/iter':>9} {'img/s total':>12} {'img/s per run':>14} {'vs 1 run':>9} "
        f"{'64k iters':>10} {'peak MiB':>9}"
    ]
    for r in results:
        speedup = r["images_per_s_total"] / base["images_per_s_total"] if base else float("nan")
        r["speedup_vs_one_run"] = speedup
        lines.append(
            f"{r['mode']:<11} {r['k']:>3} {r['iteration_s'] * 1e3:>9.2f} {r['images_per_s_total']:>12.0f} "
            f"{r['images_per_s_per_run']:>14.0f} {speedup:>8.2f}x {r['paper_64k_minutes']:>8.1f}min "
            f"{r['peak_memory_bytes'] / 2**20:>9.0f}"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet56", help="a CIFAR network (its plain twin with --plain-twins)")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8], help="numbers of runs to measure")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--plain-twins", action="store_true", help="every second run is the plain twin (fig. 6)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=128, help="per run: the paper's 128")
    p.add_argument("--iters", type=int, default=50, help="timed iterations")
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations first (compilation, cuDNN tuning)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (reduce-overhead: CUDA graphs)")
    p.add_argument("--threads", type=int, default=1, help="intra-op CPU threads per process")
    p.add_argument("--train-images", type=int, default=50_000, help="synthetic training images per run")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.ks) < 1 or args.iters < 1 or args.warmup < 0 or args.batch_size < 1:
        p.error("--ks, --iters and --batch-size must be positive, --warmup at least 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        return worker(args)
    device = resolve_device(args.device)
    setup(args, device)
    info = machine(device)
    print(f"{info['device']}; torch {info['torch']}; load average {info['load_average']}", flush=True)
    results = []
    for k in args.ks:
        for mode in args.modes:
            if mode == "processes":
                results.append(measure_processes(args, k))
            else:
                results.append(measure_in_process(args, mode, k, device))
            r = results[-1]
            print(f"  {mode} K={k}: {r['iteration_s'] * 1e3:.1f} ms/iteration", flush=True)
    print(table(results))
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "worker", "seed")}
        Path(args.json).write_text(json.dumps({"machine": info, "settings": settings, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
