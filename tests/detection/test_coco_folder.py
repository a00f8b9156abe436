"""Your own COCO-format folder through the CLI (docs/detection.md): ROOT/<split>/*.jpg and
ROOT/annotations/instances_<split>.json, written here by hand in COCO's own conventions (boxes
[x, y, w, h], category ids with gaps, a crowd box, a grey JPEG, an image without objects), trained and
evaluated by `resnetlab detect` in real processes; nothing is downloaded (data.download=false)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

# COCO's ids have gaps (1..90 for 80 classes); the labels are 1..K in sorted id order.
CATEGORIES = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 18, "name": "dog"}]


def rle(x: int, y: int, w: int, h: int, size: tuple[int, int] = (48, 64)) -> dict:
    """A box's mask as COCO's uncompressed RLE: runs of 0s and 1s alternating, column by column."""
    height, width = size
    counts = [x * height + y]
    for _ in range(w - 1):
        counts += [h, height - h]
    counts += [h, height - y - h + (width - x - w) * height]
    return {"size": [height, width], "counts": counts}


def write_coco(root: Path, split: str, n: int) -> dict:
    """n 64 px JPEGs (the last one grey, "L" mode; the first without objects) and their instances file."""
    (root / split).mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        grey = i == n - 1
        image = Image.new("L" if grey else "RGB", (64, 48), 90 if grey else (30, 60, 90))
        draw = ImageDraw.Draw(image)
        name = f"{i + 1:012d}.jpg"
        images.append({"id": i + 1, "file_name": name, "width": 64, "height": 48})
        for j, (x, y, w, h) in enumerate([] if i == 0 else [(4 + i, 6, 20, 18), (36, 20 - i, 22, 16)]):
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=220 if grey else (220, 40 * j, 30))
            crowd = i == 1 and j == 1  # a crowd region: ignored in training, neither hit nor miss at test
            ann = {"id": len(annotations) + 1, "image_id": i + 1, "category_id": CATEGORIES[(i + j) % 3]["id"]}
            ann |= {"bbox": [x, y, w, h], "area": w * h, "iscrowd": int(crowd)}
            # pycocotools reads a crowd's mask as RLE (column-major run lengths), a polygon otherwise
            ann["segmentation"] = rle(x, y, w, h) if crowd else [[x, y, x + w, y, x + w, y + h, x, y + h]]
            annotations.append(ann)
        image.save(root / split / name, quality=95)
    instances = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(instances))
    return instances


def resnetlab(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "resnetlab", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    """(the run folder of 2 iterations of `detect train` on a written COCO folder, its val instances)."""
    root = tmp_path_factory.mktemp("coco") / "mine"
    write_coco(root, "train", 4)
    val = write_coco(root, "val", 3)
    out = root.parent / "run"
    train = resnetlab(
        "detect", "train", "--preset", "shapes-cifar-c4", "--out", str(out), "--device", "cpu", "--quiet", "--set",
        "data.name=coco", f"data.dir={root}", "data.train=[train]", "data.test=val", "data.download=false",
        "model.freeze_bn=false",
        "train.max_iters=2", "train.batch_size=2", "train.eval_every=2", "train.checkpoint_every=2",
    )  # fmt: skip
    assert train.returncode == 0 and "Traceback" not in train.stderr, train.stdout + train.stderr
    return out, val


def test_a_coco_format_folder_trains_and_is_evaluated_through_the_cli(trained):
    out, val = trained
    ckpt = torch.load(out / "final.pt", map_location="cpu", weights_only=False)
    assert ckpt["meta"]["classes"] == ["person", "dog", "toothbrush"]  # ids 1, 18, 90 -> labels 1, 2, 3
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["iter"] == 2 and all(0 <= last[k] <= 1 for k in ("coco_map", "coco_map50"))
    assert last["images"] == len(val["images"])  # the grey one and the one without objects too


@pytest.mark.slow
def test_detect_evaluate_reads_the_folder_from_the_checkpoint(trained):
    out, val = trained
    evaluate = resnetlab("detect", "evaluate", "--checkpoint", str(out / "final.pt"), "--json", "--device", "cpu")
    assert evaluate.returncode == 0 and "Traceback" not in evaluate.stderr, evaluate.stdout + evaluate.stderr
    metrics = json.loads(evaluate.stdout[evaluate.stdout.index("{") :])
    assert metrics["test"] == "coco-val" and metrics["images"] == len(val["images"])  # the grey one too
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isclose(metrics["coco_map"], last["coco_map"], abs_tol=1e-9)  # the same weights, the same score


def test_a_coco_file_with_a_missing_image_or_an_unknown_category_is_one_line(tmp_path):
    from resnetlab.detection.data import COCOSplit
    from resnetlab.errors import UserError

    write_coco(tmp_path, "val", 3)
    (tmp_path / "val" / "000000000002.jpg").unlink()
    split = COCOSplit(tmp_path, "val", download=False)
    with pytest.raises(UserError, match=r"^coco-val: cannot read image 000000000002.jpg \(FileNotFoundError"):
        split[1]
    ann_file = tmp_path / "annotations" / "instances_val.json"
    instances = json.loads(ann_file.read_text())
    instances["annotations"][0]["category_id"] = 3  # not among the categories (a KeyError at its image)
    ann_file.write_text(json.dumps(instances))
    with pytest.raises(UserError, match=r"annotation 1 has category_id 3, not one of its categories"):
        COCOSplit(tmp_path, "val", download=False)


def test_a_test_file_of_other_categories_is_refused_not_scored_on_shifted_labels(tmp_path, trained, capsys):
    """COCO files number their own categories: a test file without `toothbrush` gave `dog` another
    label, and a perfect detector scored 0. Against the training set and against a checkpoint."""
    from resnetlab.cli import main
    from resnetlab.detection.data import COCOSplit, DetectionSet, same_classes
    from resnetlab.errors import UserError

    write_coco(tmp_path, "val", 3)
    ann_file = tmp_path / "annotations" / "instances_val.json"
    instances = json.loads(ann_file.read_text())
    instances["categories"] = [c for c in CATEGORIES if c["name"] != "toothbrush"]
    instances["annotations"] = [a for a in instances["annotations"] if a["category_id"] != 90]
    ann_file.write_text(json.dumps(instances))
    test = DetectionSet([COCOSplit(tmp_path, "val", download=False)], ["person", "dog"], drop_ignored=False)
    with pytest.raises(UserError, match=r"^coco-val has other classes than the training set \(e.g. 'toothbrush'"):
        same_classes(test, ["person", "dog", "toothbrush"], "the training set")
    out, _ = trained
    argv = ["detect", "evaluate", "--checkpoint", str(out / "final.pt"), "--device", "cpu", "--set"]
    assert main([*argv, f"data.dir={tmp_path}", "data.test=val"]) == 2
    assert "coco-val has other classes than the checkpoint" in capsys.readouterr().err
    assert main([*argv, "data.min_size=800"]) == 2  # the trained model's resize: not silently ignored
    assert "data.min_size is the trained model's" in capsys.readouterr().err


def test_detect_predict_checks_its_out_file_before_running_the_model(tmp_path, trained):
    from resnetlab.cli import main

    out, _ = trained
    Image.new("RGB", (64, 48)).save(tmp_path / "a.jpg")
    argv = ["detect", "predict", str(tmp_path / "a.jpg"), "--checkpoint", str(out / "final.pt"), "--out"]
    for bad in (tmp_path, tmp_path / "o.jpg"):  # a folder; a name that would have held a PNG
        with pytest.raises(SystemExit) as e:
            main([*argv, str(bad)])
        assert e.value.code == 2
