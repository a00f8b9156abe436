"""Training raises mAP@0.5 far above the untrained model's (the full shapes-cifar-c4 preset)."""

import json

import pytest
import torch

from resnetlab.detection.config import load_detection_config
from resnetlab.detection.data import build_detection_set
from resnetlab.detection.evaluate import evaluate_detector
from resnetlab.detection.models import build_detector
from resnetlab.detection.train import detector_kwargs, run_detection_training


@pytest.mark.slow
def test_training_learns_the_shapes(tmp_path):
    # 300 iterations of 4 images (64 px), 200 training / 50 test images: ~2.5 CPU-minutes.
    cfg = load_detection_config("shapes-cifar-c4", [f"data.dir={tmp_path}", "train.device=cpu"])
    test_set = build_detection_set(cfg.data, [cfg.data.test], train=False)
    torch.manual_seed(cfg.train.seed)
    kwargs, _ = detector_kwargs(cfg, len(test_set.classes) + 1)
    untrained = evaluate_detector(build_detector(**kwargs), test_set, device=torch.device("cpu"), batch_size=8)
    summary = run_detection_training(cfg, tmp_path / "run")
    trained = summary["metrics"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    print(
        "untrained", untrained, "\ntrained", trained, "\ncurve", [(r["iter"], round(r["voc07_map50"], 1)) for r in rows]
    )
    assert untrained["voc07_map50"] < 5
    assert trained["voc07_map50"] > 50 and trained["coco_map50"] > 50
    assert trained["coco_map"] > untrained["coco_map"] + 20
