"""How far K runs trained as one stacked network drift from the same K runs trained alone, in fp32 and float64.

Both sides use the loop's own step (`make_train_step`: K runs through `stack_models`, or one network)
and the same batches, at the paper's settings (sec. 4.2: SGD lr 0.1, momentum 0.9, weight decay 1e-4).
They differ only in the order of summation inside grouped convolutions and the batched fc product, so
the float64 column shows what that order leaves (a bug would be far above it) and the fp32 column how
fast chaotic training amplifies fp32 rounding. Figures: relative difference ||a - b|| / ||b||, the worst
tensor of the worst run, for the weights (BN's affine parameters included), the BN running statistics
and the SGD momentum buffers; the loss is the worst run's relative difference at that step.

    python benchmarks/batched_drift.py                   # ResNet-8 x2 seeds + plain-8, 200 steps, CPU
    python benchmarks/batched_drift.py --depth 20 --batch-size 128 --size 32 --dtypes float32
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from resnetlab.models import create_model
from resnetlab.models.stacked import stack_models
from resnetlab.train.step import make_sgd, make_train_step

REPORT_AT = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def batches(steps: int, k: int, n: int, size: int, seed: int = 0):
    """Learnable synthetic data: 10 classes, class c brightens one of 10 horizontal bands; per run its own stream."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(k):
            y = torch.randint(0, 10, (n,), generator=g)
            x = torch.randn(n, 3, size, size, generator=g) * 0.7  # (N, 3, H, W)
            band = max(size // 10, 1)
            for c in range(10):
                x[y == c, :, c * band : (c + 1) * band, :] += 1.0
            xs.append(x)
            ys.append(y)
        yield xs, ys


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def worst(pairs) -> float:
    return max((rel(a, b) for a, b in pairs), default=0.0)


def compare(stacked: list[torch.nn.Module], alone: list[torch.nn.Module], opts_s, opts_a) -> dict[str, float]:
    weights, stats, momentum = [], [], []
    for ms, ma, os_, oa in zip(stacked, alone, opts_s, opts_a):
        weights += list(zip(ms.parameters(), ma.parameters()))
        stats += [(a, b) for (n, a), (_, b) in zip(ms.named_buffers(), ma.named_buffers()) if "running" in n]
        momentum += [(os_.state[p]["momentum_buffer"], oa.state[q]["momentum_buffer"])
                     for p, q in zip(ms.parameters(), ma.parameters())]  # fmt: skip
    return {"weights": worst(weights), "bn_stats": worst(stats), "momentum": worst(momentum)}


def drift(args: argparse.Namespace, dtype: torch.dtype, device: torch.device) -> list[tuple[int, dict[str, float]]]:
    names = [("cifar_resnet", seed) for seed in args.seeds] + [("cifar_plain", s) for s in args.plain_seeds]
    stacked, alone = [], []
    for name, seed in names:
        torch.manual_seed(seed)
        model = create_model(name, depth=args.depth).to(device, dtype)
        twin = create_model(name, depth=args.depth).to(device, dtype)
        twin.load_state_dict(model.state_dict())
        stacked.append(model)
        alone.append(twin)
    wide = stack_models(stacked)
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=1e-4)  # sec. 4.2
    opts_s = [make_sgd(m, **sgd) for m in stacked]
    opts_a = [make_sgd(m, **sgd) for m in alone]
    step = make_train_step(wide.train(), opts_s, device=device, channels_last=False)
    steps_alone = [make_train_step(m.train(), o, device=device, channels_last=False) for m, o in zip(alone, opts_a)]
    rows = []
    for i, (xs, ys) in enumerate(batches(args.steps, len(names), args.batch_size, args.size), 1):
        xs = [x.to(device, dtype) for x in xs]
        losses, _ = step(xs, ys)
        ref = [s(x, y)[0] for s, x, y in zip(steps_alone, xs, ys)]
        if i in REPORT_AT or i == args.steps:
            figures = compare(stacked, alone, opts_s, opts_a)
            figures["loss"] = max(abs(float(a) - float(b)) / abs(float(b)) for a, b in zip(losses, ref))
            rows.append((i, figures))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--depth", type=int, default=8, help="CIFAR ResNet depth (6n+2)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="residual runs")
    p.add_argument("--plain-seeds", type=int, nargs="*", default=[2], help="plain runs beside them")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--size", type=int, default=16, help="image side (CIFAR: 32)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"batched vs alone: ResNet-{args.depth} seeds {args.seeds} + plain-{args.depth} seeds {args.plain_seeds}, "
        f"batch {args.batch_size}, {args.size}x{args.size}, lr 0.1 momentum 0.9 wd 1e-4; {device}, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)"
    )
    for dtype in (getattr(torch, name) for name in args.dtypes):
        t0 = time.perf_counter()
        rows = drift(args, dtype, device)
        print(f"\n{str(dtype).removeprefix('torch.')} ({time.perf_counter() - t0:.0f} s): worst relative difference")
        print(f"{'step':>6} {'weights':>10} {'bn_stats':>10} {'momentum':>10} {'loss':>10}")
        for i, f in rows:
            print(f"{i:>6} {f['weights']:>10.2e} {f['bn_stats']:>10.2e} {f['momentum']:>10.2e} {f['loss']:>10.2e}")


if __name__ == "__main__":
    main()
