"""The benchmark: time our pipeline (and the reference, in alternating rounds) and turn times into figures.

Arithmetic: FLOPs per image = 2 x multiply-adds (one multiply and one add). Training costs 3 x the
forward multiply-adds (forward, plus backward = gradient w.r.t. activations and w.r.t. weights, each
about one forward), inference 1 x. Multiply-adds are those `resnetlab info` reports
(`resnetlab.models.complexity`: convolutions and fc, counted by torch.utils.flop_counter).

A/B rounds: with `--vs-reference` each round times both pipelines back to back, alternating which
goes first (ours, ref | ref, ours | ...), so a slow patch of a shared machine hits both; each round
re-runs the warm-up steps (a DataLoader refills its queue while the other pipeline runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from resnetlab.bench.hardware import device_name, peak_flops, peak_memory, reset_peak_memory
from resnetlab.bench.pipelines import CIFAR_TRAIN_IMAGES, ModelSetup, Pipeline, ours_infer, ours_train
from resnetlab.bench.reference import DEFAULT_WORKERS, reference_infer, reference_train
from resnetlab.bench.timing import StepStats, make_clock, summarize, time_steps

FLOPS_NOTE = (
    "FLOPs = 2 x multiply-adds (resnetlab.models.complexity, as `resnetlab info`); "
    "training step = 3 x forward multiply-adds (forward + backward), inference = 1 x"
)
PASSES = {"train": 3, "infer": 1}


@dataclass(frozen=True)
class BenchSpec:
    mode: str  # "train" | "infer"
    model: str
    batch_size: int
    device: torch.device
    precision: str = "fp32"  # fp32 | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    iters: int = 20
    warmup: int = 5
    rounds: int = 1
    vs_reference: bool = False
    reference_workers: int = DEFAULT_WORKERS
    train_images: int = CIFAR_TRAIN_IMAGES
    peak_tflops: float | None = None  # overrides the table in hardware.py
    imagefolder: dict | None = None  # train from JPEG files: {"dir", "workers", "decode"}; vs synthetic batches


def flops_per_step(mult_adds_per_image: int, batch_size: int, mode: str) -> int:
    return 2 * PASSES[mode] * mult_adds_per_image * batch_size


def build_ours(spec: BenchSpec) -> Pipeline:
    setup = ModelSetup(
        spec.model, spec.batch_size, spec.device, spec.precision, spec.channels_last, spec.compile, spec.compile_mode
    )
    if spec.mode == "train":
        return ours_train(setup, train_images=spec.train_images, imagefolder=spec.imagefolder)
    return ours_infer(setup)


def build_reference(spec: BenchSpec) -> Pipeline:
    if spec.mode == "train":
        return reference_train(
            spec.model,
            batch_size=spec.batch_size,
            device=spec.device,
            workers=spec.reference_workers,
            train_images=spec.train_images,
        )
    return reference_infer(spec.model, batch_size=spec.batch_size, device=spec.device, workers=spec.reference_workers)


def measure(
    spec: BenchSpec,
    builders: dict[str, Callable[[], Pipeline]],
    *,
    clock=None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, Pipeline], dict[str, list[list[float]]], dict[str, list[float]], dict[str, tuple[int, str]]]:
    """Time every pipeline `spec.rounds` times, alternating the order, and our components once per round.

    Pipelines are built when first needed, so on CPU (where peak RSS never resets) the first one's
    memory figure is taken before the second exists. Returns (pipelines, step times per round,
    component times, peak memory).
    """
    clock = clock or make_clock(spec.device)
    names = list(builders)
    pipes: dict[str, Pipeline] = {}
    rounds: dict[str, list[list[float]]] = {name: [] for name in names}
    components: dict[str, list[float]] = {}
    memory: dict[str, tuple[int, str]] = {}
    for r in range(spec.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            if name not in pipes:
                pipes[name] = builders[name]()
            reset_peak_memory(spec.device)
            if pipes[name].start_round:
                pipes[name].start_round()
            rounds[name].append(
                time_steps(pipes[name].step, iters=spec.iters, warmup=spec.warmup, clock=clock, device=spec.device)
            )
            used = peak_memory(spec.device)
            if spec.device.type == "cuda" or name not in memory:
                # CPU peak RSS only grows: the first reading is the one that belongs to this pipeline.
                memory[name] = max(memory.get(name, used), used)
            if progress:
                progress(f"round {r + 1}/{spec.rounds} {name}: median {summarize(rounds[name][-1]).median:.3f} s")
        for part, fn in pipes[names[0]].components.items():
            times = time_steps(fn, iters=spec.iters, warmup=min(spec.warmup, 2), clock=clock, device=spec.device)
            components.setdefault(part, []).extend(times)
    return pipes, rounds, components, memory


def figures(pipe: Pipeline, times: list[float], spec: BenchSpec, peak: float | None, memory: tuple[int, str]) -> dict:
    stats = summarize(times)
    flops = flops_per_step(pipe.mult_adds, pipe.batch_size, spec.mode)
    tflops = flops / stats.median / 1e12
    return {
        "description": pipe.description,
        "images_per_s": pipe.batch_size / stats.median,
        "step_time_s": stats.to_dict(),
        "mult_adds_per_image": pipe.mult_adds,
        "flops_per_step": flops,
        "tflops": tflops,
        "mfu": tflops * 1e12 / peak if peak else None,
        "peak_memory_bytes": memory[0],
        "peak_memory_kind": memory[1],
    }


def breakdown(components: dict[str, list[float]], step: StepStats) -> dict:
    """Medians of the separately timed parts, as fractions of the median step."""
    med = {part: summarize(times).median for part, times in components.items()}
    out: dict = {f"{part}_s": t for part, t in med.items()}
    for part, t in med.items():
        out[f"{part}_fraction"] = t / step.median
    if {"data", "optimizer"} <= med.keys():
        # What the step does besides forward+backward: data + augmentation, and the optimizer update,
        # each timed alone (small, so the machine's noise is small next to them).
        out["outside_fwd_bwd_fraction"] = (med["data"] + med["optimizer"]) / step.median
    if "fwd_bwd" in med:
        # Cross-check by subtraction: noisy, as it is the difference of two large, separately timed medians.
        out["outside_by_subtraction_fraction"] = 1.0 - med["fwd_bwd"] / step.median
    return out


def run_benchmark(
    spec: BenchSpec,
    *,
    clock=None,
    builders: dict[str, Callable[[], Pipeline]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Measure and return a JSON-ready dict of every figure (see `resnetlab bench --help`)."""
    if builders is None:
        builders = {"ours": lambda: build_ours(spec)}
        if spec.imagefolder:  # the same step on ready synthetic batches: what the input costs
            builders["synthetic"] = lambda: build_ours(replace(spec, imagefolder=None))
        if spec.vs_reference:
            builders["reference"] = lambda: build_reference(spec)
    pipes, rounds, components, memory = measure(spec, builders, clock=clock, progress=progress)
    if spec.peak_tflops:
        peak, peak_kind = spec.peak_tflops * 1e12, "given by --peak-tflops"
    else:
        peak, peak_kind = peak_flops(spec.device, spec.precision)
    result: dict = {
        "mode": spec.mode,
        "model": spec.model,
        "batch_size": spec.batch_size,
        "device": str(spec.device),
        "device_name": device_name(spec.device),
        "threads": torch.get_num_threads() if spec.device.type == "cpu" else None,
        "torch": torch.__version__,
        "precision": spec.precision,
        "channels_last": spec.channels_last,
        "compile": spec.compile,
        "compile_mode": spec.compile_mode if spec.compile else None,
        "iters": spec.iters,
        "warmup": spec.warmup,
        "rounds": spec.rounds,
        "peak_flops": peak,
        "peak_flops_kind": peak_kind,
        "flops_note": FLOPS_NOTE,
    }
    for name, pipe in pipes.items():
        all_times = [t for r in rounds[name] for t in r]
        result[name] = figures(pipe, all_times, spec, peak, memory[name])
    if components:
        result["ours"]["breakdown"] = breakdown(components, summarize([t for r in rounds["ours"] for t in r]))
    if spec.imagefolder:  # the input alone, as `resnetlab bench data` measures it
        from pathlib import Path

        from resnetlab.bench.data import PIPELINE_NAMES, DataSpec, run_data_benchmark

        data_spec = DataSpec(
            root=Path(spec.imagefolder["dir"]),
            views=("train",),
            batch_size=spec.batch_size,
            workers=spec.imagefolder["workers"],
            rounds=spec.rounds,
            device=spec.device,
            decode=(spec.imagefolder["decode"],),
            reference=False,
        )
        name = PIPELINE_NAMES[spec.imagefolder["decode"]]
        result["input_alone"] = run_data_benchmark(data_spec, progress=progress)["views"]["train"][name]
    if "synthetic" in pipes:
        # By total time (mean step), not the median: from files, batches can arrive in bursts (one per
        # worker), so when the input is the bottleneck most steps are fast and a few wait long.
        mean = lambda ts: sum(ts) / len(ts)  # noqa: E731
        files, synthetic = [t for r in rounds["ours"] for t in r], [t for r in rounds["synthetic"] for t in r]
        result["files_vs_synthetic"] = {
            "images_per_s_ratio": mean(synthetic) / mean(files),
            "per_round": [mean(s) / mean(o) for o, s in zip(rounds["ours"], rounds["synthetic"])],
            "files_images_per_s": spec.batch_size / mean(files),
            "synthetic_images_per_s": spec.batch_size / mean(synthetic),
            "note": "training images/s from JPEG files / on ready synthetic batches, by total time "
            "(1: the input costs nothing)",
        }
    if "reference" in pipes:
        per_round = [summarize(r).median / summarize(o).median for o, r in zip(rounds["ours"], rounds["reference"])]
        result["speedup_vs_reference"] = {
            "images_per_s_ratio": result["ours"]["images_per_s"] / result["reference"]["images_per_s"],
            "per_round": per_round,
            "note": "ours / reference images/s (median step times; >1: ours faster); "
            "per_round: the same ratio inside each A/B round",
        }
    return result
