"""CPU training throughput of our pipeline in several settings and of the reference, in one process.

Every variant is timed once per round, the order reversed on every other round, so a slow patch of a
shared machine falls on all of them; the per-round ratios to the reference show how stable the
comparison is. A variant is `ours:<nchw|cl>:<threads>` or `ref:<threads>` (reference DataLoader with
--ref-workers workers).

    python benchmarks/cpu_variants.py --model cifar_resnet20 --batch-size 128 --rounds 3 \
        --variants ours:cl:2 ours:nchw:2 ours:cl:1 ours:nchw:1 ref:2
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from resnetlab.bench.hardware import cpu_model
from resnetlab.bench.harness import BenchSpec, breakdown, measure
from resnetlab.bench.pipelines import ModelSetup, Pipeline, ours_train
from resnetlab.bench.reference import reference_train
from resnetlab.bench.timing import summarize


def with_threads(pipe: Pipeline, threads: int) -> Pipeline:
    """The same pipeline, but every call first sets torch's intra-op thread count to `threads`."""

    def pinned(fn):
        def call():
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            return fn()

        return call

    pipe.step = pinned(pipe.step)
    pipe.components = {k: pinned(v) for k, v in pipe.components.items()}
    return pipe


def builder(variant: str, args: argparse.Namespace):
    kind, *rest = variant.split(":")
    cpu = torch.device("cpu")
    if kind == "ours":
        layout, threads = rest
        return lambda: with_threads(
            ours_train(
                ModelSetup(args.model, args.batch_size, cpu, channels_last=layout == "cl"),
                train_images=args.train_images,
            ),
            int(threads),
        )
    if kind == "ref":
        (threads,) = rest
        return lambda: with_threads(
            reference_train(
                args.model,
                batch_size=args.batch_size,
                device=cpu,
                workers=args.ref_workers,
                train_images=args.train_images,
            ),
            int(threads),
        )
    raise SystemExit(f"unknown variant {variant!r}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ref-workers", type=int, default=2)
    p.add_argument("--train-images", type=int, default=50_000)
    p.add_argument("--variants", nargs="+", default=["ours:cl:2", "ours:nchw:2", "ours:cl:1", "ours:nchw:1", "ref:2"])
    p.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = p.parse_args()

    spec = BenchSpec(
        mode="train",
        model=args.model,
        batch_size=args.batch_size,
        device=torch.device("cpu"),
        iters=args.iters,
        warmup=args.warmup,
        rounds=args.rounds,
    )
    builders = {v: builder(v, args) for v in args.variants}
    _, rounds, components, _ = measure(spec, builders, progress=lambda m: print(m, file=sys.stderr, flush=True))
    ref = next((v for v in args.variants if v.startswith("ref")), None)
    out = {
        "model": args.model,
        "batch_size": args.batch_size,
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "iters": args.iters,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "variants": {},
    }
    print(f"{args.model} training, batch {args.batch_size}, {cpu_model()}, torch {torch.__version__}")
    print(f"{args.rounds} rounds x {args.iters} timed steps (after {args.warmup} warm-up steps each), alternating")
    print(f"{'variant':<14} {'images/s':>9} {'median ms':>10} {'IQR ms':>8}  vs ref (overall; per round)")
    for v in args.variants:
        stats = summarize([t for r in rounds[v] for t in r])
        entry = {"images_per_s": args.batch_size / stats.median, "step_time_s": stats.to_dict()}
        line = f"{v:<14} {entry['images_per_s']:>9.1f} {1e3 * stats.median:>10.1f} {1e3 * stats.iqr:>8.1f}"
        if ref and v != ref:
            ref_med = summarize([t for r in rounds[ref] for t in r]).median
            per_round = [summarize(r).median / summarize(o).median for o, r in zip(rounds[v], rounds[ref])]
            entry["vs_reference"] = ref_med / stats.median
            entry["vs_reference_per_round"] = per_round
            line += f"  {entry['vs_reference']:.2f}x; " + ", ".join(f"{x:.2f}" for x in per_round)
        out["variants"][v] = entry
        print(line)
    first = args.variants[0]
    if components:
        b = breakdown(components, summarize([t for r in rounds[first] for t in r]))
        out["variants"][first]["breakdown"] = b
        print(
            f"{first}: data {100 * b['data_fraction']:.2f}%, optimizer {100 * b['optimizer_fraction']:.2f}%, "
            f"outside forward+backward {100 * b['outside_fwd_bwd_fraction']:.2f}% of the median step "
            f"(by subtraction: {100 * b['outside_by_subtraction_fraction']:.2f}%)"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
