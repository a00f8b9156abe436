"""`resnetlab bench data`: images/s of the ImageNet input, ours against the usual torchvision pipeline.

What is timed is the whole input of one batch as training or testing sees it (read, decode, view,
batch, copy to the device, mean), ours (`resnetlab.data.imagenet`, the evaluation's 10-crop dataset)
against torchvision `ImageFolder` + `transforms.v2` of the paper's recipe, in alternating rounds with
fresh workers each. Images/s = the timed batches' images / their total time, never batch / median
batch time (W workers deliver in bursts of W). Method and figures: benchmarks/README.md.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from resnetlab.bench.timing import PerfClock, summarize, time_steps
from resnetlab.data.imagenet import ImageFolderEvalSource, ImageFolderTrainSource
from resnetlab.data.images import IMAGENET_EIGVAL, IMAGENET_EIGVEC, TrainRecipe, scan_split, split_classes
from resnetlab.data.ondevice import FloatScratch, Normalizer
from resnetlab.errors import UserError
from resnetlab.utils.loader import data_loader

VIEWS = ("train", "center", "10crop")
PIPELINE_NAMES = {"workers": "ours", "device": "ours-device", "dali": "ours-dali"}  # by data.decode / data.loader
CROP, MEAN_RGB = 224, (0.485, 0.456, 0.406)  # any mean: what is timed is its subtraction


@dataclass(frozen=True)
class DataSpec:
    root: Path  # an ImageFolder tree: ROOT/train/CLASS/*.JPEG (and ROOT/val/...), or ROOT/CLASS/*.JPEG
    views: tuple[str, ...] = ("train", "center")
    batch_size: int = 128
    workers: int = 2
    rounds: int = 3
    iters: int | None = None  # timed batches per round; default max(10, 4 x workers)
    warmup: int | None = None  # untimed batches per round; default 2 x workers + 2 (the prefetch queue)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    decode: tuple[str, ...] = ("workers",)  # ours: any of "workers", "device", "dali" (PIPELINE_NAMES)
    reference: bool = True


def split_samples(root: Path, split: str, batch_size: int) -> list[tuple[str, int]]:
    """(path, label) of ROOT/split (ROOT itself if it has no such folder); at least one full batch."""
    folder = root / split if (root / split).is_dir() else root
    classes = split_classes(folder)
    samples = scan_split(folder, {c: i for i, c in enumerate(classes)})
    if len(samples) < batch_size:
        raise UserError(f"{folder} has {len(samples)} images, fewer than one batch (--batch-size {batch_size})")
    return samples


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _endless(make: Callable[[], Iterator]) -> Iterator:
    while True:
        yield from make()


class _Cycle:
    """Indices 0..n-1 over and over (shuffled per pass with `shuffle`): a sampler without epoch ends."""

    def __init__(self, n: int, shuffle: bool, seed: int = 0):
        self.n, self.shuffle, self.seed = n, shuffle, seed

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield from (torch.randperm(self.n, generator=g).tolist() if self.shuffle else range(self.n))


def timed_iters(spec: DataSpec) -> int:
    return spec.iters if spec.iters is not None else max(10, 4 * spec.workers)


# ---- ours ------------------------------------------------------------------------------------------


def ours(view: str, spec: DataSpec, decode: str) -> Callable[[], Iterator]:
    """A factory of fresh streams (new DataLoader workers each) of our `view` batches on the device."""
    normalizer = Normalizer(torch.full((3, CROP, CROP), 0.45), None, spec.device)  # per-pixel mean, as ours
    if view == "train":
        samples = split_samples(spec.root, "train", spec.batch_size)
        # the paper's recipe; unreadable files skipped (DALI: files that are not images; a damaged JPEG stops it)
        recipe = TrainRecipe(
            spec.batch_size, 0, CROP, (256, 480), lighting=0.1, workers=spec.workers, skip_corrupt=True
        )

        def make() -> Iterator:
            if decode == "dali":  # data.loader=dali: DALI's threads = the workers; its CPU-only mode on a CPU
                from resnetlab.data.dali import DaliTrainSource

                source = DaliTrainSource(samples, recipe, normalizer=normalizer, device=spec.device)
            else:
                source = ImageFolderTrainSource(
                    samples, recipe, normalizer=normalizer, device=spec.device, decode=decode, persistent_workers=False
                )
            return (x for x, _ in source.batches(0))

        return make
    samples = split_samples(spec.root, "val", spec.batch_size)
    if view == "center":

        def make() -> Iterator:
            source = ImageFolderEvalSource(
                samples,
                normalizer=normalizer,
                device=spec.device,
                crop=CROP,
                batch_size=spec.batch_size,
                workers=spec.workers,
                skip_corrupt=True,
            )
            # every batch full (images/s counts batch_size per step); workers live for the round
            source.loader = data_loader(
                **_loader_kwargs(source.loader),
                sampler=_Cycle(len(samples), False),
                drop_last=True,
            )
            return (x for x, _ in _endless(source.batches))

        return make

    from resnetlab.evaluate.run import _collate, _ProtocolViews  # the evaluation's own 10-crop dataset

    def make() -> Iterator:
        loader = data_loader(
            _ProtocolViews(samples, "10crop", CROP),
            batch_size=spec.batch_size,
            num_workers=spec.workers,
            collate_fn=_collate,
            pin_memory=spec.device.type == "cuda",
            sampler=_Cycle(len(samples), False),
            drop_last=True,
        )
        scratch = FloatScratch()  # as the evaluation's ensemble_probs
        for views, _labels, _unreadable in _endless(lambda: loader):
            flat = views.to(spec.device, non_blocking=True).flatten(0, 1)  # (N*10, 3, 224, 224)
            yield normalizer(flat, into=scratch(flat))

    return make


def _loader_kwargs(loader: DataLoader) -> dict:
    return {
        "dataset": loader.dataset,
        "batch_size": loader.batch_size,
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
    }


# ---- the reference ---------------------------------------------------------------------------------


class Lighting(torch.nn.Module):
    """AlexNet PCA colour noise on a float [0, 1] image (torchvision has no such transform)."""

    def __init__(self, std: float):
        super().__init__()
        self.std = std

    def forward(self, img: Tensor) -> Tensor:
        alpha = torch.randn(3) * self.std
        return img + ((alpha * IMAGENET_EIGVAL) @ IMAGENET_EIGVEC.T)[:, None, None]


def reference_transform(view: str):
    from torchvision.transforms import v2

    to_float = [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    normalize = v2.Normalize(MEAN_RGB, (1.0, 1.0, 1.0))  # mean subtraction only, as the paper
    if view == "train":
        return v2.Compose(
            [
                v2.RandomShortestSize(list(range(256, 481))),
                v2.RandomCrop(CROP),
                v2.RandomHorizontalFlip(),
                *to_float,
                Lighting(0.1),
                normalize,
            ]
        )
    if view == "center":
        return v2.Compose([v2.Resize(256), v2.CenterCrop(CROP), *to_float, normalize])
    return v2.Compose([v2.Resize(256), v2.TenCrop(CROP), _stack_crops])


def _stack_crops(crops) -> Tensor:
    """TenCrop's ten PIL images -> (10, 3, 224, 224) float, normalised (torchvision's TenCrop recipe)."""
    from torchvision.transforms.v2 import functional as TF

    to_float = lambda img: TF.to_dtype(TF.pil_to_tensor(img), torch.float32, scale=True)  # noqa: E731
    return TF.normalize(torch.stack([to_float(c) for c in crops]), MEAN_RGB, (1.0, 1.0, 1.0))


def _pil_or_none(path: str):
    """ImageFolder's loader, with unreadable files returned as None (the reference must not stop)."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except Exception:
        return None


class _SkippingImageFolder:
    """torchvision ImageFolder whose unreadable images come back as None, dropped by the collate."""

    def __init__(self, folder: Path, transform):
        from torchvision.datasets import ImageFolder

        self.inner = ImageFolder(str(folder), transform=transform, loader=_pil_or_none)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        path, label = self.inner.samples[i]
        img = self.inner.loader(path)
        return (None, label) if img is None else (self.inner.transform(img), label)


def _drop_none(items):
    from torch.utils.data import default_collate

    return default_collate([it for it in items if it[0] is not None])


def reference(view: str, spec: DataSpec) -> Callable[[], Iterator]:
    split = "train" if view == "train" else "val"
    folder = spec.root / split if (spec.root / split).is_dir() else spec.root
    split_samples(spec.root, split, spec.batch_size)  # the same checks as ours
    dataset = _SkippingImageFolder(folder, reference_transform(view))

    def make() -> Iterator:
        loader = data_loader(
            dataset,
            batch_size=spec.batch_size,
            sampler=_Cycle(len(dataset), view == "train"),  # shuffled each pass for training, as shuffle=True
            drop_last=True,
            num_workers=spec.workers,
            pin_memory=spec.device.type == "cuda",
            collate_fn=_drop_none,
        )
        for x, _ in _endless(lambda: loader):
            yield x.to(spec.device, non_blocking=True)

    return make


# ---- measuring ---------------------------------------------------------------------------------------


def pipelines(spec: DataSpec) -> dict[str, dict[str, Callable[[], Iterator]]]:
    """{view: {pipeline name: stream factory}}; names "ours" (workers decode), "ours-device", "ours-dali",
    "reference"."""
    out: dict[str, dict[str, Callable[[], Iterator]]] = {}
    for view in spec.views:
        out[view] = {}
        for decode in spec.decode:
            if decode != "workers" and view != "train":
                continue  # the device and DALI paths are the training input's
            out[view][PIPELINE_NAMES[decode]] = ours(view, spec, decode)
        if spec.reference:
            out[view]["reference"] = reference(view, spec)
    return out


def time_round(make: Callable[[], Iterator], spec: DataSpec) -> list[float]:
    """One round: fresh workers, `warmup` untimed batches, `iters` timed ones; the workers then stop."""
    stream = make()
    warmup = spec.warmup if spec.warmup is not None else 2 * spec.workers + 2

    def step() -> None:
        next(stream)
        _sync(spec.device)

    try:
        return time_steps(step, iters=timed_iters(spec), warmup=warmup, clock=PerfClock(), device=spec.device)
    finally:
        stream.close()  # ends the DataLoader iterator, so its workers stop before the next pipeline runs


def run_data_benchmark(spec: DataSpec, progress: Callable[[str], None] | None = None) -> dict:
    """Alternating rounds of every view's pipelines; images/s, per worker, ratios, load averages."""
    table = pipelines(spec)
    times: dict[str, dict[str, list[list[float]]]] = {v: {n: [] for n in p} for v, p in table.items()}
    load: list[tuple[float, float]] = []
    for r in range(spec.rounds):
        before = os.getloadavg()[0]
        for view, pipes in table.items():
            names = list(pipes) if r % 2 == 0 else list(pipes)[::-1]
            for name in names:
                times[view][name].append(time_round(pipes[name], spec))
                if progress:
                    rate = spec.batch_size * timed_iters(spec) / sum(times[view][name][-1])
                    progress(f"round {r + 1}/{spec.rounds} {view} {name}: {rate:.1f} images/s")
        load.append((before, os.getloadavg()[0]))
    per_worker = max(spec.workers, 1)
    result: dict = {
        "root": str(spec.root),
        "batch_size": spec.batch_size,
        "workers": spec.workers,
        "device": str(spec.device),
        "rounds": spec.rounds,
        "iters": timed_iters(spec),
        "cpus": os.cpu_count(),
        "load_average_per_round": load,
        "torch": torch.__version__,
        "views": {},
    }
    for view, by_name in times.items():
        res: dict = {}
        for name, rounds in by_name.items():
            all_times = [t for rnd in rounds for t in rnd]
            rate = spec.batch_size * len(all_times) / sum(all_times)  # images / total time, over all rounds
            res[name] = {
                "images_per_s": rate,
                "images_per_s_per_worker": rate / per_worker,
                "batch_time_s": summarize(all_times).to_dict(),
            }
        for name in by_name:
            if name != "reference" and "reference" in by_name:
                per_round = [sum(ref) / sum(mine) for mine, ref in zip(by_name[name], by_name["reference"])]
                res[f"{name}/reference"] = {
                    "ratio": res[name]["images_per_s"] / res["reference"]["images_per_s"],
                    "per_round": per_round,
                }
        for other in ("ours-device", "ours-dali"):
            if "ours" in by_name and other in by_name:
                res[f"{other}/ours"] = {"ratio": res[other]["images_per_s"] / res["ours"]["images_per_s"]}
        result["views"][view] = res
    return result


def format_data_result(res: dict) -> str:
    lines = [
        f"bench data {res['root']}: batch {res['batch_size']}, {res['workers']} workers, {res['device']}, "
        f"{res['cpus']} CPUs, torch {res['torch']}",
        f"{res['rounds']} round(s) x {res['iters']} timed batches; load average (1 min) before/after each round: "
        + ", ".join(f"{a:.1f}/{b:.1f}" for a, b in res["load_average_per_round"]),
        "",
        f"{'view':<8} {'pipeline':<12} {'images/s':>10} {'per worker':>11} {'mean batch s':>13}",
    ]
    for view, r in res["views"].items():
        for name in (*PIPELINE_NAMES.values(), "reference"):
            if name in r:
                f = r[name]
                lines.append(
                    f"{view:<8} {name:<12} {f['images_per_s']:>10.1f} {f['images_per_s_per_worker']:>11.1f} "
                    f"{f['batch_time_s']['mean']:>13.3f}"
                )
        for key, v in r.items():
            if "/" in key:
                rounds = f" (per round: {', '.join(f'{x:.2f}' for x in v['per_round'])})" if "per_round" in v else ""
                lines.append(f"{view:<8} {key}: {v['ratio']:.2f}x{rounds}")
    lines.append(
        "images/s = images / total time of the timed batches; 10crop counts images (10 views each); "
        "per worker = images/s / workers."
    )
    return "\n".join(lines)
