"""Where a training step's time goes: torch.profiler over a few steps of our pipeline (or the reference).

python benchmarks/profile_step.py --model cifar_resnet20 --batch-size 128 --channels-last --steps 5
python benchmarks/profile_step.py --reference --steps 5
python benchmarks/profile_step.py --model cifar_resnet56 --device cuda --precision bf16 --channels-last \
    --compile --compile-mode reduce-overhead --trace trace.json
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from resnetlab.bench.pipelines import ModelSetup, ours_train
from resnetlab.bench.reference import reference_train


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true")
    p.add_argument("--compile-mode", default="default")
    p.add_argument("--trace", help="also write a Chrome trace (chrome://tracing, Perfetto) to this file")
    p.add_argument("--threads", type=int)
    p.add_argument("--reference", action="store_true", help="profile the reference pipeline instead")
    p.add_argument("--ref-workers", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rows", type=int, default=25)
    args = p.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.reference:
        pipe = reference_train(args.model, batch_size=args.batch_size, device=device, workers=args.ref_workers)
    else:
        setup = ModelSetup(
            args.model, args.batch_size, device, args.precision, args.channels_last, args.compile, args.compile_mode
        )
        pipe = ours_train(setup)
    for _ in range(args.warmup):
        pipe.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            with record_function("train_step"):
                pipe.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    print(f"{pipe.description}; {torch.get_num_threads()} threads; {args.steps} steps")
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=args.rows))
    if args.trace:
        prof.export_chrome_trace(args.trace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
