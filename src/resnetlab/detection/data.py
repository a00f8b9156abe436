"""PASCAL VOC and COCO through torchvision's readers, converted to one target format:

  image   uint8 (3, H, W)
  target  {"boxes": float32 (K, 4) x1, y1, x2, y2 in pixels (0-based, continuous),
           "labels": int64 (K,) in 1..num_classes-1 (0 is the background),
           "ignore": bool (K,) VOC "difficult" / COCO "iscrowd": neither a hit nor a miss at evaluation,
           "image_id": int}

The training order is a batch sampler that is a pure function of (seed, iteration): resuming at
iteration i replays exactly the images and flips a run that never stopped would have seen.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, VOCDetection
from torchvision.transforms.v2 import functional as TF

from resnetlab.data.archive import check_md5, download, safe_extract
from resnetlab.data.order import IterationSampler
from resnetlab.detection.config import DetDataConfig
from resnetlab.detection.synthetic import SHAPE_CLASSES, write_shapes
from resnetlab.errors import UserError, one_line
from resnetlab.utils.loader import data_loader

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _target(boxes: list[list[float]], labels: list[int], ignore: list[bool], image_id: int) -> dict[str, Any]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "ignore": torch.tensor(ignore, dtype=torch.bool),
        "image_id": image_id,
    }


class VOCSplit(Dataset):
    """One VOC year/image set (torchvision's `VOCDetection`): root/VOCdevkit/VOC{year}/..."""

    def __init__(
        self, root: str | Path, year: str, image_set: str, classes: Sequence[str], download: bool, name: str = ""
    ) -> None:
        self.name = name or f"voc{year}-{image_set}"
        self.classes = list(classes)
        devkit = Path(root) / "VOCdevkit" / f"VOC{year}"
        if not (devkit / "ImageSets" / "Main" / f"{image_set}.txt").is_file():
            if not download:
                raise UserError(f"PASCAL VOC {year} {image_set} not found under {devkit} (data.download is false)")
            download_voc(Path(root), year, image_set)
        try:
            self.voc = VOCDetection(str(root), year=year, image_set=image_set, download=False)
        except Exception as e:  # a bad year/image set, a damaged copy
            raise UserError(
                f"PASCAL VOC {year} {image_set} under {devkit}: {type(e).__name__}: {one_line(e)}"
            ) from None
        # Every annotation is read and checked here, before training starts, not when a DataLoader
        # worker first meets it; __getitem__ then only decodes the image.
        self.targets = [self._read_target(i) for i in range(len(self.voc))]

    def __len__(self) -> int:
        return len(self.voc)

    def target(self, index: int, annotation: dict[str, Any]) -> dict[str, Any]:
        boxes, labels, ignore = [], [], []
        size = annotation["annotation"].get("size") or {}
        width, height = float(size.get("width", "inf")), float(size.get("height", "inf"))
        for obj in annotation["annotation"].get("object", []):
            if obj["name"] not in self.classes:
                raise UserError(f"{self.name}: class {obj['name']!r} is not in data.classes {self.classes}")
            bb = obj["bndbox"]
            # VOC boxes are 1-based inclusive pixel indices; -1 on the top-left gives 0-based edges.
            box = [float(bb["xmin"]) - 1, float(bb["ymin"]) - 1, float(bb["xmax"]), float(bb["ymax"])]
            if not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height):
                raise UserError(
                    f"{self.voc.annotations[index]}: the box of {obj['name']!r} ({bb['xmin']}, {bb['ymin']}, "
                    f"{bb['xmax']}, {bb['ymax']}) is empty or outside the {width:g}x{height:g} image"
                )
            boxes.append(box)
            labels.append(self.classes.index(obj["name"]) + 1)
            ignore.append(obj.get("difficult", "0") == "1")
        return _target(boxes, labels, ignore, index)

    def _read_target(self, index: int) -> dict[str, Any]:
        path = self.voc.annotations[index]
        try:
            annotation = self.voc.parse_voc_xml(ElementTree.parse(path).getroot())
        except (OSError, ElementTree.ParseError) as e:
            raise UserError(f"{path}: cannot read the annotation ({type(e).__name__}: {one_line(e)})") from None
        return self.target(index, annotation)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        path = self.voc.images[index]
        try:
            image = Image.open(path).convert("RGB")
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read image {path} ({type(e).__name__}): corrupt or not an image") from None
        target = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in self.targets[index].items()}
        return TF.pil_to_tensor(image), target


class COCOSplit(Dataset):
    """One COCO split (torchvision's `CocoDetection`): root/<split>/*.jpg, root/annotations/instances_<split>.json.

    Category ids (1..90 with gaps in COCO) map to contiguous labels 1..K in sorted id order.
    """

    def __init__(self, root: str | Path, split: str, download: bool) -> None:
        self.name = f"coco-{split}"
        root = Path(root)
        ann = root / "annotations" / f"instances_{split}.json"
        if not ann.is_file() or not (root / split).is_dir():
            if not download:
                raise UserError(f"COCO {split} not found: no {ann} or {root / split}/ (data.download is false)")
            download_coco(root, split)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints while indexing
                self.coco = CocoDetection(str(root / split), str(ann))
        except Exception as e:
            raise UserError(f"COCO {split}: cannot read {ann} ({type(e).__name__}: {one_line(e)})") from None
        for key in ("images", "annotations", "categories"):  # pycocotools accepts a file without them
            if not isinstance(self.coco.coco.dataset.get(key), list):
                raise UserError(f"COCO {split}: {ann} has no {key!r} list; not a COCO instances file")
        self.cat_ids = sorted(self.coco.coco.cats)
        self.classes = [self.coco.coco.cats[c]["name"] for c in self.cat_ids]
        self.label_of = {c: i + 1 for i, c in enumerate(self.cat_ids)}
        annotations = self.coco.coco.dataset["annotations"]
        unknown = next((a for a in annotations if a.get("category_id") not in self.label_of), None)
        if unknown is not None:
            raise UserError(
                f"COCO {split}: {ann}: annotation {unknown.get('id')} has category_id "
                f"{unknown.get('category_id')!r}, not one of its categories"
            )

    def __len__(self) -> int:
        return len(self.coco)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        try:
            image, anns = self.coco[index]
        except (OSError, ValueError) as e:  # missing, unreadable or not an image (PIL's errors are OSErrors)
            path = self.coco.coco.imgs[self.coco.ids[index]].get("file_name", "?")
            raise UserError(f"{self.name}: cannot read image {path} ({type(e).__name__}: {one_line(e)})") from None
        boxes, labels, ignore = [], [], []
        for a in anns:
            x, y, w, h = a["bbox"]
            if w < 1 or h < 1:  # degenerate boxes exist in COCO; torchvision's reference drops them too
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(self.label_of[a["category_id"]])
            ignore.append(bool(a.get("iscrowd", 0)))
        return TF.pil_to_tensor(image.convert("RGB")), _target(boxes, labels, ignore, self.coco.ids[index])


# Every download: https, checked against the publisher's MD5 before it is unpacked (safe_extract).
# COCO: the files of images.cocodataset.org through S3's https endpoint (its own host name has no
# certificate of its own); the MD5 is what the server reports as ETag and what COCO's users check.
# VOC: the Oxford mirror torchvision uses, with torchvision's MD5s.
COCO_S3 = "https://s3.amazonaws.com/images.cocodataset.org"
DOWNLOADS = {
    "coco-train2017": (f"{COCO_S3}/zips/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2"),
    "coco-val2017": (f"{COCO_S3}/zips/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80"),
    "coco-annotations2017": (
        f"{COCO_S3}/annotations/annotations_trainval2017.zip",
        "f4bbac642086de4f52a3fdda2de5fa2c",
    ),
    "coco-train2014": (f"{COCO_S3}/zips/train2014.zip", "0da8c0bd3d6becc4dcb32757491aca88"),
    "coco-val2014": (f"{COCO_S3}/zips/val2014.zip", "a3d79f5ed8d289b7a7554ce06a5782b3"),
    "coco-annotations2014": (
        f"{COCO_S3}/annotations/annotations_trainval2014.zip",
        "0a379cfc70b0e71301e0f377548639bd",
    ),
    "voc2007-trainval": (
        "https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar",
        "c52e279531787c972589f7e41ab4ae64",
    ),
    "voc2007-test": (
        "https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
        "b6e924de25625d8de591ea690078ad9f",
    ),
    "voc2012-trainval": (
        "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "6cd6e144f989b92b3379bac3b3de84fd",
    ),
}


def fetch(key: str, root: Path) -> None:
    """Download DOWNLOADS[key] into root (https, MD5 checked), unpack it safely, delete the archive."""
    url, md5 = DOWNLOADS[key]
    archive = root / url.rsplit("/", 1)[-1]
    if not archive.is_file():
        download(url, archive, md5=md5)
    check_md5(archive, md5)
    safe_extract(archive, root)
    archive.unlink()


def download_coco(root: Path, split: str) -> None:
    """Fetch a COCO split's images and its year's annotations."""
    year = split[-4:]
    if f"coco-{split}" not in DOWNLOADS:
        known = ", ".join(k[5:] for k in DOWNLOADS if k.startswith("coco-") and "annotations" not in k)
        raise UserError(f"data.test/data.train: COCO split {split!r} cannot be downloaded; known: {known}")
    try:
        if not (root / split).is_dir():
            fetch(f"coco-{split}", root)
        if not (root / "annotations" / f"instances_{split}.json").is_file():
            fetch(f"coco-annotations{year}", root)
    except UserError as e:
        raise UserError(f"COCO {split} not found under {root}: {one_line(e)}") from None


def download_voc(root: Path, year: str, image_set: str) -> None:
    key = f"voc{year}-{'test' if image_set == 'test' else 'trainval'}"
    if key not in DOWNLOADS:
        known = ", ".join(k[3:] for k in DOWNLOADS if k.startswith("voc"))
        raise UserError(f"PASCAL VOC {year} {image_set} cannot be downloaded (known: {known}); put it under {root}")
    try:
        fetch(key, root)
    except UserError as e:
        raise UserError(f"PASCAL VOC {year} {image_set} not found under {root}: {one_line(e)}") from None


class DetectionSet(Dataset):
    """Splits concatenated ("07+12"); items are an index or (index, flip) from `TrainOrder`.

    drop_ignored: training leaves difficult/crowd boxes out (appendix A follows [32]).
    """

    def __init__(self, splits: list[Dataset], classes: list[str], *, drop_ignored: bool) -> None:
        self.data = ConcatDataset(splits)
        self.classes = classes
        self.names = [s.name for s in splits]
        self.drop_ignored = drop_ignored

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: int | tuple[int, bool]) -> tuple[torch.Tensor, dict[str, Any]]:
        index, flip = item if isinstance(item, tuple) else (item, False)
        image, target = self.data[index]
        if self.drop_ignored:
            keep = ~target["ignore"]
            target = {**target, "boxes": target["boxes"][keep], "labels": target["labels"][keep]}
            target["ignore"] = target["ignore"][keep]
        if flip:
            h, w = image.shape[-2:]
            boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(h, w))
            image = TF.horizontal_flip(image)
            target = {**target, "boxes": TF.horizontal_flip(boxes).as_subclass(torch.Tensor)}
        target["index"] = index
        return image, target


def build_split(cfg: DetDataConfig, split: str) -> Dataset:
    if cfg.name == "voc":
        year, sep, image_set = split.partition("-")
        if not sep:
            raise UserError(f"VOC split must look like YEAR-IMAGESET (2007-test), got {split!r}")
        return VOCSplit(cfg.dir, year, image_set, cfg.classes or VOC_CLASSES, cfg.download)
    if cfg.name == "coco":
        return COCOSplit(cfg.dir, split, cfg.download)
    if cfg.name == "shapes":
        root = Path(cfg.dir) / f"shapes-{cfg.shapes_size}-{cfg.shapes_images}"
        if not (root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt").is_file():
            write_shapes(
                root, {"train": cfg.shapes_images, "test": max(cfg.shapes_images // 4, 1)}, size=cfg.shapes_size
            )
        return VOCSplit(root, "2007", split, cfg.classes or SHAPE_CLASSES, download=False, name=f"shapes-{split}")
    raise UserError(f"unknown data.name {cfg.name!r}")


def build_detection_set(cfg: DetDataConfig, splits: Sequence[str], *, train: bool) -> DetectionSet:
    parts = [build_split(cfg, s) for s in splits]
    classes = list(parts[0].classes)
    for p in parts[1:]:
        if list(p.classes) != classes:
            raise UserError(f"{p.name} has other classes than {parts[0].name}")
    return DetectionSet(parts, classes, drop_ignored=train and not cfg.train_difficult)


def same_classes(test: DetectionSet, classes: list[str], what: str) -> None:
    """A test set labelled with other classes than `what`'s (a COCO file numbers its own categories)
    would be scored on shifted labels: a UserError naming the first difference."""
    if list(test.classes) != list(classes):
        extra = sorted(set(test.classes) - set(classes)) or sorted(set(classes) - set(test.classes))
        diff = f"e.g. {extra[0]!r} in one only" if extra else "in another order"
        raise UserError(f"{test.names[0]} has other classes than {what} ({diff}); they must be the same")


class TrainOrder:
    """Batch sampler: iteration i -> this process's share of the global batch, as (index, flip) pairs.

    The shared `IterationSampler` (one permutation per epoch, seeded from (seed, epoch)); the flips
    of iteration i are drawn for the whole global batch from (seed, i). Nothing depends on where the
    stream was started.
    """

    def __init__(
        self, n: int, batch_size: int, *, seed: int, start_iter: int, hflip: bool, rank: int = 0, world: int = 1
    ) -> None:
        if n == 0:
            raise UserError("the training set is empty")
        self.sampler = IterationSampler(n, batch_size, seed=seed, rank=rank, world_size=world)
        self.sampler.start_iter = start_iter
        self.hflip = hflip

    def batch(self, iteration: int) -> list[tuple[int, bool]]:
        s = self.sampler
        flips = (torch.rand(s.batch_size, generator=s.augment_generator(iteration)) < 0.5)[s.rows].tolist()
        return [(i, f and self.hflip) for i, f in zip(s.indices(iteration).tolist(), flips)]

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        i = self.sampler.start_iter
        while True:
            yield self.batch(i)
            i += 1


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    return [b[0] for b in batch], [b[1] for b in batch]


def train_loader(dataset: DetectionSet, order: TrainOrder, workers: int) -> DataLoader:
    # Own generator: creating the loader must not draw from the global RNG (resume replays that RNG).
    return data_loader(
        dataset,
        batch_sampler=order,
        num_workers=workers,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
    )


def eval_loader(dataset: Dataset, batch_size: int, workers: int, indices: Sequence[int] | None = None) -> DataLoader:
    subset = dataset if indices is None else torch.utils.data.Subset(dataset, list(indices))
    return data_loader(
        subset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        shuffle=False,
        generator=torch.Generator().manual_seed(0),  # leave the global RNG alone (exact resume)
    )
