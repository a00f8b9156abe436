"""Detection metrics: the PASCAL VOC AP (written here) and COCO's (pycocotools' COCOeval).

Inputs, one entry per image:
  gts   [{"boxes": (K, 4) xyxy, "labels": (K,), "ignore": (K,) bool}]
  dets  [{"boxes": (D, 4) xyxy, "scores": (D,), "labels": (D,)}]

VOC AP is written by hand because pycocotools has neither VOC's "difficult" rule (a detection of a
difficult object is neither a hit nor a miss; crowd regions in COCOeval use another overlap) nor the
VOC07 11-point interpolation, which table 7's VOC 2007 numbers use (VOC 2010+ use the area under the
whole curve). With `recall_points=101` and no difficult boxes it is COCO's AP@0.5; the tests check it
against pycocotools.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from resnetlab.errors import UserError


def average_precision(recall: np.ndarray, precision: np.ndarray, recall_points: int | None) -> float:
    """Area under the precision/recall curve with precision made monotone (the envelope).

    recall_points=11: VOC07 (mean of the envelope at recall 0, 0.1, ..., 1); 101: COCO's sampling;
    None: the exact area (VOC 2010+).
    """
    if len(precision) == 0:
        return 0.0  # objects of the class, no detections of it
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    if recall_points is None:
        r = np.concatenate([[0.0], recall, [1.0]])
        p = np.concatenate([[0.0], envelope, [0.0]])
        p = np.maximum.accumulate(p[::-1])[::-1]
        steps = np.where(r[1:] != r[:-1])[0]
        return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))
    thresholds = np.linspace(0.0, 1.0, recall_points)
    idx = np.searchsorted(recall, thresholds, side="left")  # first point whose recall reaches t
    values = np.where(idx < len(envelope), envelope[np.minimum(idx, len(envelope) - 1)], 0.0)
    return float(values.mean())


def voc_ap_per_class(
    dets: list[dict[str, Any]],
    gts: list[dict[str, Any]],
    num_classes: int,
    *,
    iou_threshold: float = 0.5,
    recall_points: int | None = 11,
) -> dict[int, float]:
    """AP of each foreground label that has at least one non-ignored ground-truth box (VOC devkit rules:
    detections in score order; each takes its highest-overlap box of the class; a second detection of
    a box already taken is a false positive)."""
    ap: dict[int, float] = {}
    for c in range(1, num_classes):
        npos = 0
        gt_boxes, gt_ignore, taken = [], [], []
        for g in gts:
            m = torch.as_tensor(g["labels"]) == c
            boxes = torch.as_tensor(g["boxes"], dtype=torch.float64).reshape(-1, 4)[m]
            ignore = torch.as_tensor(g["ignore"], dtype=torch.bool)[m]
            gt_boxes.append(boxes)
            gt_ignore.append(ignore)
            taken.append(torch.zeros(len(boxes), dtype=torch.bool))
            npos += int((~ignore).sum())
        if npos == 0:
            continue
        scores, images, boxes = [], [], []
        for i, d in enumerate(dets):
            m = torch.as_tensor(d["labels"]) == c
            s = torch.as_tensor(d["scores"], dtype=torch.float64)[m]
            scores.append(s)
            images.append(torch.full((len(s),), i, dtype=torch.int64))
            boxes.append(torch.as_tensor(d["boxes"], dtype=torch.float64).reshape(-1, 4)[m])
        scores_t, images_t, boxes_t = torch.cat(scores), torch.cat(images), torch.cat(boxes)
        order = torch.argsort(scores_t, descending=True, stable=True)
        tp = np.zeros(len(order))
        fp = np.zeros(len(order))
        for k, j in enumerate(order.tolist()):
            i = int(images_t[j])
            if len(gt_boxes[i]) == 0:
                fp[k] = 1
                continue
            iou = box_iou(boxes_t[j : j + 1], gt_boxes[i])[0]
            best = int(torch.argmax(iou))
            if iou[best] >= iou_threshold:
                if gt_ignore[i][best]:
                    continue  # a difficult object: neither
                if not taken[i][best]:
                    tp[k], taken[i][best] = 1, True
                else:
                    fp[k] = 1
            else:
                fp[k] = 1
        tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
        recall = tp_c / npos
        precision = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
        ap[c] = average_precision(recall, precision, recall_points)
    return ap


def coco_tools() -> tuple[type, type]:
    """(COCO, COCOeval) from pycocotools (the `detection` extra), or one UserError line: checked before
    a detection run starts, so that a missing package does not stop it at its first evaluation."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise UserError("detection needs pycocotools for its metrics: pip install 'resnetlab[detection]'") from None
    return COCO, COCOeval


def coco_metrics(dets: list[dict[str, Any]], gts: list[dict[str, Any]], num_classes: int) -> dict[str, float]:
    """pycocotools' COCOeval (bbox): {"map": AP@[.5:.95], "map50": AP@.5, "map75": AP@.75} as fractions.

    Ground truth is built from the targets; ignored boxes (VOC difficult, COCO crowd) become crowd
    regions. Image ids are the list positions.
    """
    COCO, COCOeval = coco_tools()
    images, annotations, results = [], [], []
    for i, g in enumerate(gts):
        images.append({"id": i})
        boxes = torch.as_tensor(g["boxes"], dtype=torch.float64).reshape(-1, 4)
        for b, label, ign in zip(boxes.tolist(), torch.as_tensor(g["labels"]).tolist(), torch.as_tensor(g["ignore"])):
            w, h = b[2] - b[0], b[3] - b[1]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": int(label),
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                    "iscrowd": int(bool(ign)),
                }
            )
    for i, d in enumerate(dets):
        boxes = torch.as_tensor(d["boxes"], dtype=torch.float64).reshape(-1, 4)
        for b, s, label in zip(
            boxes.tolist(), torch.as_tensor(d["scores"]).tolist(), torch.as_tensor(d["labels"]).tolist()
        ):
            results.append([i, b[0], b[1], b[2] - b[0], b[3] - b[1], s, label])
    if not results or not annotations:
        return {"map": 0.0, "map50": 0.0, "map75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c} for c in range(1, num_classes)],
        }
        gt.createIndex()
        dt = gt.loadRes(np.array(results, dtype=np.float64))
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {
        "map": max(float(ev.stats[0]), 0.0),
        "map50": max(float(ev.stats[1]), 0.0),
        "map75": max(float(ev.stats[2]), 0.0),
    }
