"""The splits of an ImageFolder tree (`DIR/train/CLASS/IMAGE`, `DIR/val/...` or `DIR/test/...`), for
both recipes: the ImageNet one (`imagenet.py`) and the CIFAR one for small images (`smallfolder.py`).

The evaluated split is the folder named by `data.eval_split` ("val" by default, "test" for trees like
the CIFAR-10 JPEG folders), or, with `data.val_split=N`, N training images held out (a fixed random
choice, the same for every run and both recipes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from resnetlab.data.images import IMG_EXTENSIONS, Sample, scan_split, split_classes
from resnetlab.data.order import mix_seed
from resnetlab.errors import UserError

_HELD_OUT = 11  # seed stream of the held-out validation images (was imagenet.py's _ORDER: same images)


@dataclass
class FolderSplits:
    root: Path
    classes: list[str]
    train: list[Sample]  # every image of DIR/train, in the scan's order
    test: list[Sample]  # the evaluated folder's images (empty when held out)
    held_out: tuple[list[int], list[int]] | None  # with data.val_split: (kept, held-out) indices into train
    eval_name: str  # "val", "test" (the folder's name), or "val" for held-out images

    def split_train(self) -> tuple[list[Sample], list[Sample]]:
        """(training samples, evaluated samples) with the held-out images taken out of train."""
        if self.held_out is None:
            return self.train, self.test
        keep, held = self.held_out
        return [self.train[i] for i in keep], [self.train[i] for i in held]


def folder_root(name: str, data_dir: str) -> Path:
    """DIR of the tree: data.dir/imagenet for data.name=imagenet, data.dir itself for imagefolder."""
    root = Path(data_dir).expanduser()
    return root / "imagenet" if name == "imagenet" else root


def eval_folder(root: Path, split: str, key: str = "data.eval_split") -> Path:
    """root/split, or a one-line UserError that names the splits there are and how to choose one."""
    if not split or split in (".", "..", "train") or "/" in split or "\\" in split:
        raise UserError(f"{key}={split!r}: must name the evaluation folder under {root} (val or test), not train")
    path = root / split
    if path.is_dir():
        return path
    others = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name != "train") if root.is_dir() else []
    if split == "val" and "test" in others:
        hint = f"; it has test/: set {key}=test to evaluate on it"
    elif others:
        hint = f"; its evaluation folders: {', '.join(others)} (set {key}=NAME)"
    else:
        hint = ""
    held = ", or data.val_split=N to hold out N training images" if key.startswith("data.") else ""
    raise UserError(f"{path} does not exist ({key}={split}){hint}{held}")


def held_out(n: int, count: int) -> tuple[list[int], list[int]]:
    """(kept, held-out) indices of n training images, `count` held out: a fixed random choice."""
    if count >= n:
        raise UserError(f"data.val_split={count} leaves no training images (only {n})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(0, _HELD_OUT))).tolist()
    return sorted(perm[count:]), sorted(perm[:count])


def read_splits(name: str, data_dir: str, *, eval_split: str = "val", val_split: int = 0) -> FolderSplits:
    """Scan the tree: its classes (train's folders), the training images, the evaluated images."""
    root = folder_root(name, data_dir)
    classes = split_classes(root / "train")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    train = scan_split(root / "train", class_to_idx)
    if not train:
        raise UserError(f"{root / 'train'} has no images ({', '.join(IMG_EXTENSIONS)})")
    if val_split > 0:
        return FolderSplits(root, classes, train, [], held_out(len(train), val_split), "val")
    folder = eval_folder(root, eval_split)
    unknown = sorted(set(split_classes(folder)) - set(classes))
    if unknown:
        raise UserError(f"{folder} has classes not in {root / 'train'}: {', '.join(unknown[:5])}")
    test = scan_split(folder, class_to_idx)
    if not test:
        raise UserError(f"{folder} has no images ({', '.join(IMG_EXTENSIONS)})")
    return FolderSplits(root, classes, train, test, None, eval_split)
