"""`resnetlab bench train|infer|data`: images/s, step time, peak memory, TFLOP/s and MFU of our pipeline;
`data`: images/s of the ImageNet input alone (JPEG files to a batch on the device), ours vs torchvision's.

resnetlab bench train --model cifar_resnet20 --batch-size 128 --device cpu --vs-reference
resnetlab bench train --model resnet50 --batch-size 256 --device cuda --precision bf16 --channels-last
resnetlab bench infer --model resnet50 --batch-size 256 --device cuda --precision bf16 --json
resnetlab bench data --data-dir /tmp/imagefolder --workers 2 --batch-size 64
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from resnetlab.cli.args import NON_NEGATIVE, POSITIVE, float_in
from resnetlab.errors import UserError

EPILOG = """examples:
  resnetlab bench train --model cifar_resnet20 --batch-size 128 --device cpu --vs-reference
  resnetlab bench train --model resnet50 --batch-size 256 --device cuda --precision bf16 --channels-last
  resnetlab bench infer --model resnet50 --batch-size 256 --device cuda --precision bf16 --json
  python benchmarks/make_imagefolder.py /tmp/imagefolder     # realistic JPEGs, for the two below
  resnetlab bench data --data-dir /tmp/imagefolder --workers 2 --batch-size 64 --views train center 10crop
  resnetlab bench data --data-dir /tmp/imagefolder --device cuda --workers 16 --decode workers device
  resnetlab bench train --model resnet50 --device cuda --data imagefolder --data-dir /tmp/imagefolder

Training data: CIFAR models read synthetic uint8 images of CIFAR's shape held on the device, through
the same on-device augmentation as training; ImageNet models a synthetic uint8 224x224 batch through
the device half of the ImageNet source. FLOPs = 2 x multiply-adds (as `resnetlab info` counts them);
a training step counts 3 x the forward multiply-adds.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="throughput of training or inference: images/s, step time, memory, TFLOP/s, MFU",
        description="Time our training step (or inference) after warm-up; optionally against a reference "
        "pipeline written the usual way (torchvision), in alternating rounds in the same process.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("mode", choices=["train", "infer", "data"])
    p.add_argument("--model", default="cifar_resnet20", help="a registered model (default cifar_resnet20)")
    p.add_argument("--batch-size", type=POSITIVE, default=128, metavar="N")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="fp32 (default, the paper's) | bf16 | fp16 autocast; GPU throughput figures pass bf16 explicitly",
    )
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode with --compile (reduce-overhead: CUDA graphs)",
    )
    p.add_argument(
        "--iters", type=POSITIVE, metavar="N", help="timed steps per round (default 20; data: max(10, 4 x workers))"
    )
    p.add_argument(
        "--warmup",
        type=NON_NEGATIVE,
        metavar="N",
        help="untimed steps before each round (default 5; data: 2 x workers + 2)",
    )
    p.add_argument("--rounds", type=POSITIVE, metavar="N", help="A/B rounds (default 3 with --vs-reference, else 1)")
    p.add_argument("--vs-reference", action="store_true", help="also time the reference pipeline; print the ratio")
    p.add_argument(
        "--ref-workers", type=NON_NEGATIVE, default=2, metavar="N", help="reference DataLoader workers (default 2)"
    )
    p.add_argument("--threads", type=POSITIVE, metavar="N", help="CPU: torch.set_num_threads(N) (default: torch's)")
    p.add_argument("--train-images", type=POSITIVE, default=50_000, metavar="N", help="synthetic CIFAR split size")
    p.add_argument(
        "--peak-tflops", type=float_in(1e-3, 1e6), metavar="X", help="device peak for MFU, if not in the table"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    g = p.add_argument_group("ImageNet input (bench data; bench train --data imagefolder)")
    g.add_argument("--data-dir", metavar="DIR", help="ImageFolder tree: DIR/train/CLASS/*.JPEG (and DIR/val/...)")
    g.add_argument(
        "--data", default="synthetic", choices=["synthetic", "imagefolder"], help="bench train: where batches come from"
    )
    g.add_argument(
        "--workers", type=NON_NEGATIVE, default=2, metavar="N", help="DataLoader workers, ours and the reference"
    )
    g.add_argument("--views", nargs="+", default=["train", "center"], choices=["train", "center", "10crop"])
    g.add_argument(
        "--decode",
        nargs="+",
        default=["workers"],
        choices=["workers", "device", "dali"],
        help="ours: where JPEGs are decoded: DataLoader workers, the CUDA device (nvjpeg), or NVIDIA DALI "
        "(data.loader=dali; its CPU-only mode on a CPU)",
    )
    g.add_argument("--no-reference", action="store_true", help="bench data: ours only")
    p.set_defaults(func=run)


def data_spec_from_args(args: argparse.Namespace):
    from pathlib import Path

    from resnetlab.bench.data import DataSpec
    from resnetlab.utils.device import resolve_device

    if not args.data_dir:
        raise UserError("bench data needs --data-dir DIR (make one: python benchmarks/make_imagefolder.py DIR)")
    for key in ("batch_size", "iters"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if args.workers < 0 or (args.warmup is not None and args.warmup < 0):
        raise UserError("--workers and --warmup must be >= 0")
    device = resolve_device(args.device)
    decode = tuple(dict.fromkeys(args.decode))
    if "device" in decode and device.type != "cuda":
        decode = tuple(d for d in decode if d != "device")
        print(
            f"bench data: --decode device (nvjpeg) needs a CUDA device, and {device} is not one: skipped",
            file=sys.stderr,
        )
        if not decode:
            return None
    return DataSpec(
        root=Path(args.data_dir).expanduser(),
        views=tuple(dict.fromkeys(args.views)),
        batch_size=args.batch_size,
        workers=args.workers,
        rounds=args.rounds if args.rounds is not None else 3,
        iters=args.iters,
        warmup=args.warmup,
        device=device,
        decode=decode,
        reference=not args.no_reference,
    )


def spec_from_args(args: argparse.Namespace):
    import torch

    from resnetlab.bench.harness import BenchSpec
    from resnetlab.models import list_models
    from resnetlab.train.step import autocast_dtype
    from resnetlab.utils.device import resolve_device

    args.iters = 20 if args.iters is None else args.iters
    if args.model not in list_models():
        raise UserError(f"unknown model {args.model!r}; see `resnetlab info --list`")
    for key in ("batch_size", "iters"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if (args.warmup is not None and args.warmup < 0) or args.ref_workers < 0:
        raise UserError("--warmup and --ref-workers must be >= 0")
    if args.model.startswith("cifar") and args.train_images < args.batch_size:
        raise UserError(f"--train-images ({args.train_images}) must be at least --batch-size ({args.batch_size})")
    device = resolve_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    dtype = autocast_dtype(args.precision, device)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    rounds = args.rounds if args.rounds is not None else (3 if args.vs_reference else 1)
    warmup = 5 if args.warmup is None else args.warmup
    imagefolder = None
    if args.data == "imagefolder":
        if args.mode != "train" or args.model.startswith("cifar") or not args.data_dir:
            raise UserError("--data imagefolder: bench train, an ImageNet model and --data-dir DIR")
        if args.workers < 0:
            raise UserError(f"--workers must be >= 0, got {args.workers}")
        imagefolder = {"dir": args.data_dir, "workers": args.workers, "decode": args.decode[0]}
    if rounds < 1:
        raise UserError(f"--rounds must be >= 1, got {rounds}")
    derived = {
        "device": device,
        "precision": precision,
        "warmup": warmup,
        "rounds": rounds,
        "reference_workers": args.ref_workers,
        "imagefolder": imagefolder,
    }
    # Every other field of the spec is the flag of the same name.
    same = {f.name: getattr(args, f.name) for f in dataclasses.fields(BenchSpec) if f.name not in derived}
    return BenchSpec(**same, **derived)


def run(args: argparse.Namespace) -> int:

    from resnetlab.bench.harness import run_benchmark

    progress = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.mode == "data":
        from resnetlab.bench.data import format_data_result, run_data_benchmark

        spec = data_spec_from_args(args)
        if spec is None:
            return 0
        result = run_data_benchmark(spec, progress=progress)
        print(json.dumps(result, indent=2) if args.json else format_data_result(result))
        return 0
    result = run_benchmark(spec_from_args(args), progress=progress)
    print(json.dumps(result, indent=2) if args.json else format_result(result))
    return 0


def _row(name: str, r: dict) -> str:
    t = r["step_time_s"]
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
    return (
        f"{name:<10} {r['images_per_s']:>10.1f} {1e3 * t['median']:>9.1f} "
        f"{1e3 * t['min']:>7.1f}-{1e3 * t['max']:<7.1f} {1e3 * t['iqr']:>7.1f} "
        f"{r['peak_memory_bytes'] / 2**20:>9.0f} {r['tflops']:>8.3f} {mfu:>6}"
    )


def format_result(res: dict) -> str:
    threads = f", {res['threads']} threads" if res["threads"] else ""
    lines = [
        f"bench {res['mode']} {res['model']}, batch {res['batch_size']}, {res['device']} ({res['device_name']}"
        f"{threads}), {res['precision']}, {'channels_last' if res['channels_last'] else 'NCHW'}"
        f"{', compiled (' + str(res.get('compile_mode')) + ')' if res['compile'] else ''}, torch {res['torch']}",
        f"{res['rounds']} round(s) x {res['iters']} timed steps after {res['warmup']} warm-up steps each",
        "",
        f"{'':<10} {'images/s':>10} {'median ms':>9} {'min-max ms':>15} {'IQR ms':>7} {'peak MiB':>9} "
        f"{'TFLOP/s':>8} {'MFU':>6}",
    ]
    for name in ("ours", "synthetic", "reference"):
        if name in res:
            lines.append(_row(name, res[name]))
    for name in ("ours", "synthetic", "reference"):
        if name in res:
            lines.append(f"  {name}: {res[name]['description']}")
    lines.append(f"  peak memory: {res['ours']['peak_memory_kind']}")
    if "speedup_vs_reference" in res:
        s = res["speedup_vs_reference"]
        per_round = ", ".join(f"{x:.2f}" for x in s["per_round"])
        lines.append(f"ours / reference: {s['images_per_s_ratio']:.2f}x images/s (per round: {per_round})")
    if "files_vs_synthetic" in res:
        s = res["files_vs_synthetic"]
        per_round = ", ".join(f"{x:.2f}" for x in s["per_round"])
        lines.append(
            f"from files / synthetic, by total time: {s['files_images_per_s']:.1f} / {s['synthetic_images_per_s']:.1f}"
            f" images/s = {s['images_per_s_ratio']:.2f}x (per round: {per_round})"
        )
    if "input_alone" in res:
        f = res["input_alone"]
        lines.append(
            f"input alone (as bench data): {f['images_per_s']:.1f} images/s, "
            f"{f['images_per_s_per_worker']:.1f} per worker"
        )
    b = res["ours"].get("breakdown")
    if b:
        parts = [
            f"{part} {1e3 * b[f'{part}_s']:.1f} ms ({100 * b[f'{part}_fraction']:.1f}%)"
            for part in ("data", "fwd_bwd", "optimizer")
            if f"{part}_s" in b
        ]
        lines.append("ours, parts timed alone (medians, % of step): " + ", ".join(parts))
        if "outside_fwd_bwd_fraction" in b:
            lines.append(
                f"ours, step time outside forward+backward (data + optimizer): "
                f"{100 * b['outside_fwd_bwd_fraction']:.1f}% (by subtraction, noisier: "
                f"{100 * b['outside_by_subtraction_fraction']:.1f}%)"
            )
    peak = f"{res['peak_flops'] / 1e12:.1f} TFLOP/s ({res['peak_flops_kind']})" if res["peak_flops"] else "-"
    lines.append(f"MFU peak: {peak}")
    lines.append(res["flops_note"])
    return "\n".join(lines)
