"""`evaluate_checkpoints`: top-1 / top-5 error (%) of a model or an ensemble under a test protocol.

ImageNet / ImageFolder checkpoints read DIR/<split>/CLASS/*.JPEG (DIR = data_dir/imagenet for
"imagenet", data_dir for "imagefolder"; split: --split, else the checkpoint's data.eval_split, else
val). The CIFAR / MNIST family are tested the paper's way, on the single original image, through
`resnetlab.data.build_data`; ImageFolder checkpoints trained with the CIFAR recipe too, on the decoded
images of their split alone (`_evaluate_small_folder`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from resnetlab.config import Config, from_dict
from resnetlab.data.folders import eval_folder
from resnetlab.data.images import read_image, scan_split, split_classes
from resnetlab.data.ondevice import FloatScratch
from resnetlab.errors import UserError
from resnetlab.evaluate.checkpoints import IMAGE_DATASETS, LoadedModel, load_models, resolve_data_dir
from resnetlab.evaluate.predict import class_names
from resnetlab.evaluate.protocols import (
    PAPER_SCALES,
    PROTOCOLS,
    confusion_counts,
    ensemble_probs,
    fixed_views,
    multiscale_probs,
    scaled,
    topk_correct,
)
from resnetlab.utils.device import resolve_device
from resnetlab.utils.loader import data_loader
from resnetlab.utils.progress import progress

NAMED = 10  # skipped or doubly-reached files named in the result (the count covers them all)


class _ProtocolViews(Dataset):
    """Item i: (views uint8, label, why it is unreadable or None). "multiscale" returns the whole image.
    `read_image` reads regular files only (never blocking on a FIFO), size-capped, by their real range."""

    def __init__(self, samples: list[tuple[str, int]], protocol: str, crop: int, channels: int = 3):
        self.samples, self.protocol, self.crop, self.channels = samples, protocol, crop, channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            img = read_image(path, channels=self.channels)  # a grey model sees grey images, as in predict
        except UserError as e:
            return None, label, (path, str(e))
        if self.protocol == "multiscale":
            return img, label, None
        return fixed_views(img, self.protocol, self.crop), label, None


def _collate(items):
    """Views stacked (N, V, C, h, w) in the worker, so pinned memory covers them; whole images of
    different sizes (multiscale) stay a list."""
    kept = [it[0] for it in items if it[0] is not None]
    if kept and all(v.shape == kept[0].shape for v in kept):
        kept = torch.stack(kept)
    return kept, torch.tensor([it[1] for it in items if it[0] is not None]), [it[2] for it in items if it[2]]


MIN_SIDE = 2  # multiscale's smallest shorter side: torch's antialiased resize fails at 1 pixel


def class_mapping(folders: list[str], model: LoadedModel) -> dict[str, int]:
    """Folder name -> the model's class index: by name when the checkpoint lists them (a split may
    hold a subset of the classes), else, when no folder is named as a class, by ImageFolder's sorted
    order (e.g. imported torchvision weights, whose 1000 names are in the order of the sorted ImageNet
    synset folders). Some folders named as its classes and others not: refused."""
    names = model.classes
    if names and set(folders) <= set(names):
        return {f: names.index(f) for f in folders}
    known = set(names or [])
    others = [f for f in folders if f not in known]
    if len(others) < len(folders):  # some folders are its classes, so these are not: by position would mislabel
        raise UserError(
            f"{len(others)} of the {len(folders)} class folders are not classes of {model.path}: "
            f"{', '.join(others[:5])}{', ...' if len(others) > 5 else ''} (its classes: "
            f"{', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
        )
    if len(folders) == model.num_classes:
        return {f: i for i, f in enumerate(folders)}
    raise UserError(
        f"the {len(folders)} class folders ({', '.join(folders[:3])}, ...) match neither the names nor the "
        f"number ({model.num_classes}) of the classes of {model.path}"
    )


def _cifar_recipe(model: LoadedModel) -> bool:
    """An ImageFolder checkpoint trained on the device with the CIFAR recipe (small images)."""
    return model.dataset in IMAGE_DATASETS and model.meta.get("recipe") == "cifar"


def _image_root(model: LoadedModel, data_dir: str) -> Path:
    return Path(data_dir) / "imagenet" if model.dataset == "imagenet" else Path(data_dir)


def _evaluate_images(
    models: list[LoadedModel],
    *,
    protocol: str,
    data_dir: str,
    split: str,
    batch_size: int,
    workers: int,
    skip_corrupt: bool,
    scales: Sequence[int],
    flip: bool,
    device: torch.device,
    quiet: bool = False,
) -> dict[str, Any]:
    root = eval_folder(_image_root(models[0], data_dir), split, key="--split")
    mapping = class_mapping(split_classes(root), models[0])
    twice: list[str] = []  # a file reached by a second path (a link) counts once
    samples = scan_split(root, mapping, twice=twice)
    if not samples:
        raise UserError(f"{root} has no images")
    per_batch = 1 if protocol == "multiscale" else batch_size  # whole images differ in size
    loader = data_loader(
        _ProtocolViews(samples, protocol, models[0].image_size, models[0].meta.get("in_channels") or 3),
        batch_size=per_batch,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    top1 = top5 = n = skipped = 0
    skipped_files: list[str] = []
    confusion = torch.zeros(models[0].num_classes, models[0].num_classes, dtype=torch.int64)
    scratch = FloatScratch()  # the float views, rewritten batch after batch (CPU)
    batches = progress(loader, total=len(loader), desc=f"evaluate {protocol}", unit="batch", quiet=quiet)
    for views, labels, unreadable in batches:
        if unreadable and not skip_corrupt:
            raise UserError(f"{unreadable[0][1]} (--skip-corrupt skips it)")
        skipped += len(unreadable)
        skipped_files += [path for path, _ in unreadable][: NAMED - len(skipped_files)]
        if len(views) == 0:
            continue
        if protocol == "multiscale":
            probs = torch.stack([multiscale_probs(models, v.to(device), scales=scales, flip=flip) for v in views])
        else:
            probs = ensemble_probs(models, views.to(device, non_blocking=True), scratch=scratch)
        a, b = topk_correct(probs.cpu(), labels)
        top1, top5, n = top1 + a, top5 + b, n + len(labels)
        confusion += confusion_counts(probs.cpu(), labels)
    return {
        "images": n,
        "top1": top1,
        "top5": top5,
        "skipped": skipped,
        "skipped_files": skipped_files,
        "counted_once": len(twice),
        "counted_once_files": twice[:NAMED],
        "root": str(root),
        "confusion": confusion,
    }


def _wrong_size(root: Path, found: tuple[int, int], checkpoint: object, size: int) -> str:
    return (
        f"{root} holds {found[0]}x{found[1]} images, but {checkpoint} was trained on {size}x{size} images with the "
        "CIFAR recipe; it is tested on images of that size"
    )


def _evaluate_small_folder(
    models: list[LoadedModel],
    *,
    data_dir: str,
    split: str,
    batch_size: int,
    workers: int,
    skip_corrupt: bool,
    device: torch.device,
    quiet: bool = False,
) -> dict[str, Any]:
    """An ImageFolder checkpoint trained with the CIFAR recipe: the single original image of each file
    of `split` (sec. 4.2), decoded as training decoded its evaluated folder (`smallfolder.decoded_split`,
    through the same cache), with the checkpoint's channels (grey or RGB files converted as training
    converts them) and its data.image_size. Only that folder is read: the model brings its own
    normalisation, so train/ is not needed. `workers` and `skip_corrupt` are evaluate's flags."""
    from resnetlab.data.smallfolder import Hints, decoded_split, first_header

    model = models[0]
    data = (from_dict(model.config) if model.config else Config()).data
    root = eval_folder(_image_root(model, data_dir), split, key="--split")
    mapping = class_mapping(split_classes(root), model)
    twice: list[str] = []
    samples = scan_split(root, mapping, twice=twice)
    if not samples:
        raise UserError(f"{root} has no images")
    size = model.image_size
    header = None if data.image_size else first_header(samples)
    if header is not None and header[0] == header[1] != size:  # before the folder is decoded, not after
        raise UserError(_wrong_size(root, header[:2], model.path, size))
    hints = Hints(
        skip="--skip-corrupt skips it",
        size=f"{model.path} was trained on {size}x{size} images (data.image_size={data.image_size})",
    )
    decoded = decoded_split(
        root.parent,
        split,
        samples,
        image_size=data.image_size,
        channels=int(model.meta.get("in_channels") or 3),
        workers=workers,
        skip_corrupt=skip_corrupt,
        cache=data.cache,
        hints=hints,
    )
    x, y = decoded["images"], decoded["labels"]
    if x.shape[-2:] != (size, size):
        raise UserError(_wrong_size(root, (x.shape[-1], x.shape[-2]), model.path, size))
    top1 = top5 = 0
    confusion = torch.zeros(model.num_classes, model.num_classes, dtype=torch.int64)
    starts = range(0, len(x), batch_size)
    for i in progress(starts, total=len(starts), desc="evaluate", unit="batch", quiet=quiet):
        probs = ensemble_probs(models, x[i : i + batch_size, None].to(device)).cpu()  # each model's normalisation
        labels = y[i : i + batch_size]
        a, b = topk_correct(probs, labels)
        top1, top5 = top1 + a, top5 + b
        confusion += confusion_counts(probs, labels)
    skipped = list(decoded["skipped"])
    return {
        "images": len(x),
        "top1": top1,
        "top5": top5,
        "skipped": len(skipped),
        "skipped_files": skipped[:NAMED],
        "counted_once": len(twice),
        "counted_once_files": twice[:NAMED],
        "root": str(root),
        "confusion": confusion,
    }


def _evaluate_small(
    models: list[LoadedModel],
    *,
    data_dir: str,
    device: torch.device,
    quiet: bool = False,
    given: bool = False,
) -> dict[str, Any]:
    """CIFAR / MNIST family: the single original test image (sec. 4.2), via the data contract.
    `given`: data_dir is the user's
    --data-dir, which is read, never downloaded or unpacked into unless it holds the data set already
    (its files, or their archive or .gz files)."""
    try:
        from resnetlab.data import build_data
    except ImportError:
        raise UserError("resnetlab.data.build_data is not available in this install") from None
    cfg = from_dict(models[0].config) if models[0].config else Config()
    data = dataclasses.replace(cfg.data, val_split=0, augment=False, dir=data_dir)
    if given:
        _check_holds(cfg.data.name, data_dir)
        data = dataclasses.replace(data, download=False)
    bundle = build_data(dataclasses.replace(cfg, data=data), device)
    # The bundle's batches are normalised with its own mean; undo that, then apply each model's own.
    mean = bundle.meta["mean"].to(device)
    std = bundle.meta.get("std")
    std = std.to(device) if std is not None else None
    top1 = top5 = n = 0
    confusion = torch.zeros(models[0].num_classes, models[0].num_classes, dtype=torch.int64)
    total = -(-len(bundle.test) // bundle.test.batch_size) if hasattr(bundle.test, "batch_size") else None
    for x, y in progress(bundle.test.batches(), total=total, desc="evaluate", unit="batch", quiet=quiet):
        raw = ((x * std if std is not None else x) + mean) * 255.0
        probs = ensemble_probs(models, raw.round().clamp(0, 255).to(torch.uint8)[:, None])
        a, b = topk_correct(probs.cpu(), y.cpu())
        top1, top5, n = top1 + a, top5 + b, n + len(y)
        confusion += confusion_counts(probs.cpu(), y.cpu())
    return {"images": n, "top1": top1, "top5": top5, "skipped": 0, "root": cfg.data.name, "confusion": confusion}


def _check_holds(name: str, data_dir: str) -> None:
    """A UserError naming what is missing unless `root` holds data set `name` (the files, or what
    data/readers.py unpacks them from: the CIFAR archive, the MNIST .gz files). Without this, a
    Fashion-MNIST checkpoint evaluated with --data-dir DIR unpacked the system's 53 MB copy into DIR."""
    from resnetlab.data.readers import CIFAR_ARCHIVES, MNIST_FILES

    root = Path(data_dir).expanduser()
    if name in CIFAR_ARCHIVES:
        spec = CIFAR_ARCHIVES[name]
        folder = root / spec.folder
        if all((folder / f).is_file() for f in spec.files) or (root / spec.filename).is_file():
            return
        missing = f"{folder}/ ({', '.join(spec.files)}) or {root / spec.filename}"
    elif name in ("mnist", "fashion-mnist"):
        raw = root / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"
        absent = [f for f in MNIST_FILES if not (raw / f).is_file() and not (raw / f"{f}.gz").is_file()]
        if not absent:
            return
        missing = f"{', '.join(absent)} (or .gz) in {raw}"
    else:
        return
    raise UserError(
        f"--data-dir {data_dir}: no {name} there (missing {missing}); evaluate reads a data set from the folder "
        "you name but never downloads or unpacks one into it (leave out --data-dir to use the checkpoint's)"
    )


def evaluate_checkpoints(
    paths: Sequence[str],
    *,
    protocol: str = "center",
    data_dir: str | None = None,
    split: str | None = None,
    batch_size: int = 32,
    workers: int = 4,
    device: str = "auto",
    skip_corrupt: bool = False,
    scales: Sequence[int] = PAPER_SCALES,
    flip: bool = False,
    quiet: bool = False,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Top-1 / top-5 error (%) of the checkpoint (or the ensemble of them, softmax averaged), per-class
    accuracy and the confusion matrix. The fields are documented in docs/evaluate.md ("--json").
    `say` receives a line naming the data folder when it comes from the checkpoint's config. `split`:
    the folder of an ImageFolder checkpoint (default its data.eval_split, else val); refused for the
    built-in datasets, which have one test split.

    Returns {"protocol", "split", "checkpoints", "images", "top1_error", "top5_error", "skipped", "data",
    "classes", "per_class", "confusion_matrix"}."""
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    models = load_models(list(paths), dev)
    crop = models[0].image_size
    small = [size for size in scales if scaled(size, crop) < MIN_SIDE] if protocol == "multiscale" else []
    if small:
        least = next(size for size in itertools.count(1) if scaled(size, crop) >= MIN_SIDE)
        raise UserError(
            f"--scales {small[0]}: for {models[0].path}, trained on {crop}-pixel crops, that is a side of "
            f"{scaled(small[0], crop)} pixel(s) (the scales are given for 224-pixel crops); give S >= {least}"
        )
    given = data_dir is not None
    data_dir = resolve_data_dir(models[0].config, data_dir, say)
    if models[0].dataset in IMAGE_DATASETS:
        split = split or (models[0].config.get("data") or {}).get("eval_split") or "val"
        eval_folder(_image_root(models[0], data_dir), split, key="--split")  # a missing one named in one line
    elif split is not None:
        raise UserError(
            f"--split {split}: {models[0].dataset or 'this'} checkpoints are tested on the dataset's own test split; "
            "--split chooses the folder of ImageFolder checkpoints only"
        )
    if _cifar_recipe(models[0]):
        if protocol != "center":
            raise UserError(
                f"{models[0].path} was trained with the CIFAR recipe: it is tested on the single original image "
                "(sec. 4.2); use --protocol center"
            )
        r = _evaluate_small_folder(
            models,
            data_dir=data_dir,
            split=split,
            batch_size=batch_size,
            workers=workers,
            skip_corrupt=skip_corrupt,
            device=dev,
            quiet=quiet,
        )
    elif models[0].dataset in IMAGE_DATASETS:
        r = _evaluate_images(
            models,
            protocol=protocol,
            data_dir=data_dir,
            split=split,
            batch_size=batch_size,
            workers=workers,
            skip_corrupt=skip_corrupt,
            scales=scales,
            flip=flip,
            device=dev,
            quiet=quiet,
        )
    else:
        if protocol != "center":
            raise UserError(
                f"{models[0].dataset or 'this'} checkpoint: the paper tests CIFAR-size images on the single "
                "original view (sec. 4.2); use --protocol center"
            )
        split = "test"
        r = _evaluate_small(models, data_dir=data_dir, device=dev, quiet=quiet, given=given)
    if r["images"] == 0:
        raise UserError(f"no readable image in {r['root']}")
    return {
        "protocol": protocol,
        "split": split,
        "checkpoints": [m.path for m in models],
        "images": r["images"],
        "top1_error": 100.0 * (1 - r["top1"] / r["images"]),
        # 5 classes or fewer: every label is in the top 5, so there is no top-5 error to report
        "top5_error": 100.0 * (1 - r["top5"] / r["images"]) if r["confusion"].shape[0] > 5 else None,
        "skipped": r["skipped"],
        "skipped_files": r.get("skipped_files", []),
        "counted_once": r.get("counted_once", 0),
        "counted_once_files": r.get("counted_once_files", []),
        "data": r["root"],
        **per_class(r["confusion"], class_names(models[0])),
    }


def per_class(confusion: torch.Tensor, names: list[str]) -> dict[str, Any]:
    """{"classes", "per_class": [{"class", "images", "accuracy" (top-1, %)}], "confusion_matrix"}
    from (K, K) counts (row: true class, column: top-1 prediction). A class without test images has
    accuracy None."""
    images = confusion.sum(1).tolist()
    right = confusion.diagonal().tolist()
    rows = [
        {"class": name, "images": n, "accuracy": 100.0 * r / n if n else None}
        for name, n, r in zip(names, images, right)
    ]
    return {"classes": list(names), "per_class": rows, "confusion_matrix": confusion.tolist()}
