"""VOC AP written here vs. a hand computation and vs. pycocotools' COCOeval (an independent library)."""

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from resnetlab.detection.metrics import coco_metrics, voc_ap_per_class


def _gt(boxes, labels, ignore=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    ignore = torch.zeros(len(boxes), dtype=torch.bool) if ignore is None else torch.tensor(ignore)
    return {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.int64), "ignore": ignore}


def _det(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels),
    }


def test_voc07_and_all_point_ap_by_hand():
    # Two objects; detections by score: hit, miss, hit -> recall .5 .5 1, precision 1 .5 .667.
    gts = [_gt([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])]
    dets = [_det([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [1, 1, 1])]
    ap07 = voc_ap_per_class(dets, gts, 2, recall_points=11)[1]
    ap = voc_ap_per_class(dets, gts, 2, recall_points=None)[1]
    assert ap07 == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)  # recall 0..0.5: 1; 0.6..1: 2/3
    assert ap == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_difficult_is_neither_hit_nor_miss_and_duplicates_are_misses():
    gts = [_gt([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1], ignore=[False, True])]
    # The difficult box detected first (ignored), then the real one twice (hit, then a duplicate: miss).
    dets = [_det([[20, 20, 30, 30], [0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8, 0.7], [1, 1, 1])]
    ap = voc_ap_per_class(dets, gts, 2, recall_points=None)
    assert ap == {1: pytest.approx(1.0)}  # npos = 1, reached at precision 1


def _random_set(seed, images=30, classes=4):
    """Ground truth on a grid (disjoint boxes, so VOC's and COCO's matching agree) and noisy detections."""
    g = torch.Generator().manual_seed(seed)
    gts, dets = [], []
    for _ in range(images):
        cells = torch.randperm(16, generator=g)[: int(torch.randint(1, 6, (1,), generator=g))]
        boxes, labels = [], []
        for c in cells.tolist():
            x, y = (c % 4) * 50 + 5, (c // 4) * 50 + 5
            w, h = torch.randint(15, 40, (2,), generator=g).tolist()
            boxes.append([x, y, x + w, y + h])
            labels.append(int(torch.randint(1, classes, (1,), generator=g)))
        gt = _gt(boxes, labels)
        jitter = torch.randn(len(boxes), 4, generator=g) * 4
        d_boxes = torch.cat(
            [gt["boxes"] + jitter, torch.rand(5, 2, generator=g).repeat(1, 2) * 180 + torch.tensor([0, 0, 20, 20])]
        )
        d_labels = torch.cat([gt["labels"], torch.randint(1, classes, (5,), generator=g)])
        flip = torch.rand(len(d_labels), generator=g) < 0.15  # some wrong classes
        d_labels[flip] = torch.randint(1, classes, (int(flip.sum()),), generator=g)
        dets.append({"boxes": d_boxes, "scores": torch.rand(len(d_labels), generator=g), "labels": d_labels})
        gts.append(gt)
    return dets, gts


def _pycocotools_ap50_per_class(dets, gts, classes):
    images, anns, res = [], [], []
    for i, (d, g) in enumerate(zip(dets, gts)):
        images.append({"id": i})
        for b, c in zip(g["boxes"].tolist(), g["labels"].tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": c,
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for b, s, c in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
            res.append({"image_id": i, "category_id": c, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c} for c in range(1, classes)]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(res), "bbox")
        ev.params.iouThrs = np.array([0.5])
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][0, :, :, 0, -1]  # (recall points, classes) at area all, 100 dets
    return {c: float(precision[:, k].mean()) for k, c in enumerate(ev.params.catIds) if precision[0, k] > -1}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_101_point_ap_matches_pycocotools(seed):
    dets, gts = _random_set(seed)
    ours = voc_ap_per_class(dets, gts, 4, recall_points=101)
    theirs = _pycocotools_ap50_per_class(dets, gts, 4)
    assert ours.keys() == theirs.keys()
    for c in ours:
        assert ours[c] == pytest.approx(theirs[c], abs=1e-9)
    assert 0.1 < np.mean(list(ours.values())) < 0.99  # a non-trivial case


def test_coco_metrics_perfect_and_empty():
    gts = [_gt([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2])]
    perfect = [_det([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.8], [1, 2])]
    m = coco_metrics(perfect, gts, 3)
    assert m["map"] == pytest.approx(1.0) and m["map50"] == pytest.approx(1.0)
    assert coco_metrics([_det([], [], [])], gts, 3)["map"] == 0.0


def test_score_and_report_beside_the_paper():
    from resnetlab.detection.evaluate import format_report, score

    gts = [_gt([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2])]
    dets = [_det([[0, 0, 10, 10], [20, 20, 40, 40]], [0.9, 0.8], [1, 2])]
    voc = score(dets, gts, ["a", "b"])
    assert voc["voc07_map50"] == pytest.approx(100.0) and voc["ap50_per_class"] == {"a": 100.0, "b": 100.0}
    coco = score(dets, gts, ["a", "b"], voc=False)
    assert "voc07_map50" not in coco and coco["coco_map"] == pytest.approx(100.0)
    assert "VGG-16 73.2  ResNet-101 76.4" in format_report(voc, "voc2007-test", "resnet101")
    assert "VGG-16 70.4  ResNet-101 73.8" in format_report(voc, "voc2012-val", "resnet101")
    report = format_report(coco, "coco-val2014", "resnet101")
    assert "41.5" in report and "48.4" in report and "21.2" in report and "27.2" in report
    assert "paper" not in format_report(voc, "shapes-test", "cifar_resnet")


def test_a_class_without_detections_scores_zero():
    gts = [_gt([[0, 0, 10, 10], [20, 20, 40, 40]], [1, 2])]
    dets = [_det([[0, 0, 10, 10]], [0.9], [1])]
    for points in (11, 101, None):
        assert voc_ap_per_class(dets, gts, 3, recall_points=points) == {1: pytest.approx(1.0), 2: 0.0}
