"""`predict`: the top-k classes of images (the centre view), for a model or an ensemble.

Images are files, folders (every image below, recursively) or glob patterns; they are read in
DataLoader workers and classified in batches. An unreadable image gets its error in its own row and
the others go on.
"""

from __future__ import annotations

import glob
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from resnetlab.data.images import IMG_EXTENSIONS, center_view, find_images, read_image
from resnetlab.errors import UserError
from resnetlab.evaluate.checkpoints import (
    IMAGE_DATASETS,
    LoadedModel,
    imagenet_categories,
    is_ilsvrc_synsets,
    load_models,
)
from resnetlab.evaluate.protocols import ensemble_probs
from resnetlab.utils.device import resolve_device
from resnetlab.utils.loader import data_loader
from resnetlab.utils.progress import progress


def class_names(model: LoadedModel) -> list[str]:
    """The checkpoint's class names; ILSVRC-2012's 1000 synset ids (sorted, from its first synset to its
    last) get their readable name added; a checkpoint without names and 1000 classes gets ImageNet's;
    otherwise the names as they are, or class indices. Another set of 1000 synsets (a part of
    ImageNet-21k) keeps its ids: names attached by position would be another class's."""
    names = model.classes
    if model.num_classes == 1000 and not names:
        return imagenet_categories()
    if is_ilsvrc_synsets(names):
        return [f"{wnid} {name}" for wnid, name in zip(names, imagenet_categories())]
    return names if len(names) == model.num_classes else [str(i) for i in range(model.num_classes)]


def expand_images(inputs: Sequence[str]) -> list[str]:
    """Files as given; folders -> every file named like an image below them (`find_images`: a linked
    folder entered once, a file reached twice listed once); patterns with * ? [ ] -> their matches
    (sorted; `**` recursive, without entering linked folders, so a link cycle cannot multiply them).
    What is not a regular file (a FIFO, a device) is listed, and its row says what it is. A path that
    does not exist stays, to be reported in its row; a pattern or folder that matches nothing is a UserError."""
    out: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = find_images(path)
            if not found:
                raise UserError(f"{item}: no image files ({', '.join(IMG_EXTENSIONS)}) in this folder")
            out += found
        elif glob.has_magic(item) and not path.exists():
            found = _glob(item)
            if not found:
                raise UserError(f"{item}: no file matches this pattern")
            out += found
        else:
            out.append(item)
    return out


def _glob(pattern: str) -> list[str]:
    """The matches of `pattern` that are not folders, sorted, each file once. pathlib's glob, not
    glob.glob: the latter follows a linked folder in `**`, and a link cycle lists every file forty
    times over (until the path is too deep)."""
    parts = Path(pattern).expanduser().parts
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    base = Path(*parts[:first]) if first else Path(".")
    seen: set[tuple[int, int]] = set()
    found = []
    for p in sorted(base.glob(str(Path(*parts[first:])))):
        try:
            st = p.stat()
        except OSError:  # a dangling link: reported in its row
            found.append(str(p))
            continue
        if not stat.S_ISDIR(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            found.append(str(p))
    return found


class _CenterViews(Dataset):
    """Item i: (the centre view uint8 (C, crop, crop) or None, i, error or None)."""

    def __init__(self, paths: list[str], crop: int, resize: int | None, grey: bool):
        self.paths, self.crop, self.resize, self.grey = paths, crop, resize, grey

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        path = self.paths[i]
        if not Path(path).exists():
            return None, i, "does not exist"
        try:
            # a regular file only (a FIFO is refused, never waited on), by its real range, grey as training makes it
            img = read_image(path, channels=1 if self.grey else 3)
        except UserError as e:
            why = re.sub(r"^ \(\w+\)", "", str(e).removeprefix(f"cannot read image {path}")).removeprefix(": ")
            return None, i, f"cannot read: {why}"
        return center_view(img, self.crop, self.resize), i, None


def _collate(items):
    views = [v for v, _, e in items if e is None]
    return (
        (torch.stack(views) if views else None),
        [i for _, i, e in items if e is None],
        [(i, e) for _, i, e in items if e],
    )


@torch.no_grad()
def predict(
    images: Sequence[str],
    checkpoints: Sequence[str],
    *,
    top: int = 5,
    device: str = "auto",
    batch_size: int = 32,
    workers: int = 0,
    quiet: bool = False,
) -> list[dict[str, Any]]:
    """For each image (files, folders, globs; see `expand_images`), in input order:
    {"image", "top": [(class name, probability), ...] best first, "error": None or what went wrong}."""
    if top < 1 or batch_size < 1 or workers < 0:
        raise UserError("--top and --batch-size must be >= 1, --workers >= 0")
    paths = expand_images(images)
    dev = resolve_device(device)
    models = load_models(list(checkpoints), dev)
    names = class_names(models[0])
    crop, resize = models[0].image_size, None
    if models[0].dataset not in IMAGE_DATASETS or models[0].meta.get("recipe") == "cifar":
        resize = crop  # CIFAR-size models: the whole image at the training size, no 256/224 margin
    grey = models[0].meta.get("in_channels", 3) == 1
    loader = data_loader(
        _CenterViews(paths, crop, resize, grey),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
    )
    rows: list[dict[str, Any]] = [{"image": p, "top": [], "error": None} for p in paths]
    for views, ok, failed in progress(loader, total=len(loader), desc="predict", unit="batch", quiet=quiet):
        for i, error in failed:
            rows[i]["error"] = error
        if views is None:
            continue
        probs = ensemble_probs(models, views[:, None].to(dev)).cpu()  # (N, K)
        p, idx = probs.topk(min(top, probs.shape[1]))
        for i, ps, ks in zip(ok, p.tolist(), idx.tolist()):
            rows[i]["top"] = [(names[k], q) for q, k in zip(ps, ks)]
    return rows
