"""Run a detector over a test set and score it; the paper's tables 7 and 8 to compare with."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from resnetlab.detection.data import DetectionSet, eval_loader
from resnetlab.detection.metrics import coco_metrics, voc_ap_per_class
from resnetlab.utils.progress import progress

# Tables 7 and 8 (mAP %, Faster R-CNN): baseline VGG-16 -> ResNet-101.
PAPER = {
    "voc2007-test": {"metric": "voc07_map50", "train": "07+12", "vgg16": 73.2, "resnet101": 76.4},
    "voc2012-test": {"metric": "voc_map50", "train": "07++12", "vgg16": 70.4, "resnet101": 73.8},
    "coco-val": {"metric": "coco_map50", "train": "COCO train", "vgg16": 41.5, "resnet101": 48.4},
    "coco-val@[.5,.95]": {"metric": "coco_map", "train": "COCO train", "vgg16": 21.2, "resnet101": 27.2},
}


def paper_rows(test_name: str) -> list[dict[str, Any]]:
    """The paper's rows for a test split name ("voc2007-test", "coco-val2014", ...)."""
    if test_name.startswith("coco-val"):
        return [{"table": "8", "test": k, **v} for k, v in PAPER.items() if k.startswith("coco-val")]
    if test_name == "voc2012-val":  # the voc12 presets' local stand-in for the withheld 12 test
        return [{"table": "7", "test": "voc2012-test", **PAPER["voc2012-test"]}]
    return [{"table": "7", "test": test_name, **PAPER[test_name]}] if test_name in PAPER else []


@torch.no_grad()
def detect_all(
    model: nn.Module,
    dataset: DetectionSet,
    *,
    device: torch.device,
    batch_size: int = 2,
    workers: int = 0,
    max_images: int = 0,
    rank: int = 0,
    world_size: int = 1,
    quiet: bool = False,
) -> tuple[list[dict], list[dict]]:
    """(detections, ground truths) on the CPU, one per image, in dataset order.

    With several processes each runs every world_size-th image and all of them get the whole list.
    A progress bar on a terminal, without `quiet` (`utils.progress`: none in a log).
    """
    was_training = model.training
    model.eval()
    n = len(dataset) if max_images <= 0 else min(max_images, len(dataset))
    dets, gts = [], []
    loader = eval_loader(dataset, batch_size, workers, indices=range(rank, n, world_size))
    for images, targets in progress(loader, total=len(loader), desc="detect", unit="batch", quiet=quiet):
        outputs = model([im.to(device, non_blocking=True).float().div_(255) for im in images])
        for out, t in zip(outputs, targets):
            dets.append({k: v.detach().cpu() for k, v in out.items()})
            gts.append({"boxes": t["boxes"], "labels": t["labels"], "ignore": t["ignore"]})
    model.train(was_training)
    if world_size > 1:
        shards: list = [None] * world_size
        torch.distributed.all_gather_object(shards, (dets, gts))
        # Rank r holds images r, r + world_size, ...: interleave back into dataset order.
        order = sorted((i, r, k) for r in range(world_size) for k, i in enumerate(range(r, n, world_size)))
        dets = [shards[r][0][k] for _, r, k in order]
        gts = [shards[r][1][k] for _, r, k in order]
    return dets, gts


def score(dets: list[dict], gts: list[dict], classes: list[str], *, voc: bool = True) -> dict[str, Any]:
    """Metrics in percent: COCO AP@[.5,.95] and AP@.5 (pycocotools); with voc=True also VOC07 11-point
    and VOC all-point AP@0.5 (left out for COCO: its Python matching loop is slow on 40k images)."""
    num_classes = len(classes) + 1
    coco = coco_metrics(dets, gts, num_classes)
    out: dict[str, Any] = {"images": len(gts), "coco_map": 100.0 * coco["map"], "coco_map50": 100.0 * coco["map50"]}
    if voc:
        ap07 = voc_ap_per_class(dets, gts, num_classes, recall_points=11)
        ap = voc_ap_per_class(dets, gts, num_classes, recall_points=None)
        out["voc07_map50"] = 100.0 * sum(ap07.values()) / max(len(ap07), 1)
        out["voc_map50"] = 100.0 * sum(ap.values()) / max(len(ap), 1)
        out["ap50_per_class"] = {classes[c - 1]: 100.0 * v for c, v in ap07.items()}
    return out


def evaluate_detector(model: nn.Module, dataset: DetectionSet, **options: Any) -> dict[str, Any]:
    """`score` of `detect_all(model, dataset, **options)`: the test set's metrics (shared between
    processes when world_size > 1)."""
    dets, gts = detect_all(model, dataset, **options)
    return score(dets, gts, dataset.classes, voc=not dataset.names[0].startswith("coco"))


def format_report(metrics: dict[str, Any], test_name: str, backbone: str) -> str:
    lines = [f"{test_name}: {metrics['images']} images, {backbone}"]
    if "voc07_map50" in metrics:
        lines.append(
            f"  mAP@0.5 VOC07 11-point {metrics['voc07_map50']:.1f}   VOC all-point {metrics['voc_map50']:.1f}"
        )
    lines.append(f"  COCO mAP@[.5,.95] {metrics['coco_map']:.1f}   mAP@.5 {metrics['coco_map50']:.1f}")
    rows = paper_rows(test_name)
    if rows:
        lines.append("  paper (Faster R-CNN, table " + rows[0]["table"] + "):")
        for r in rows:
            lines.append(
                f"    {r['test']:<18} train {r['train']:<10} VGG-16 {r['vgg16']:.1f}  ResNet-101 {r['resnet101']:.1f}"
                f"   here ({r['metric']}) {metrics[r['metric']]:.1f}"
            )
    return "\n".join(lines)
