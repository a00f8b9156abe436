"""`resnetlab evaluate | predict | import-weights | export` end to end, through `main(argv)`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.transforms import functional as TV

from resnetlab.cli import main
from resnetlab.models import create_model
from resnetlab.utils.checkpoint import save_atomic

CLASSES = [f"c{i}" for i in range(6)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """A val split of real JPEGs (6 classes, one image each, two sizes) and a cifar_resnet20 checkpoint
    that sees them as 32-pixel crops (a cheap stand-in for an ImageNet model)."""
    root = tmp_path_factory.mktemp("cli")
    g = torch.Generator().manual_seed(0)
    for i, name in enumerate(CLASSES):
        (root / "val" / name).mkdir(parents=True)
        h, w = (40, 52) if i % 2 else (48, 36)
        TV.to_pil_image(torch.rand(3, h, w, generator=g)).save(root / "val" / name / "img.JPEG")
    torch.manual_seed(0)
    net = create_model("cifar_resnet20", num_classes=len(CLASSES))
    meta = {
        "dataset": "imagefolder",
        "classes": CLASSES,
        "num_classes": len(CLASSES),
        "in_channels": 3,
        "image_size": 32,
        "mean": torch.full((3, 32, 32), 0.5),
        "std": None,
        "model": "cifar_resnet20",
        "model_options": {"num_classes": len(CLASSES)},
    }
    ck = root / "ck.pt"
    save_atomic({"model": net.state_dict(), "config": {"data": {"dir": str(root)}}, "meta": meta}, ck)
    return root, ck


@pytest.mark.parametrize("protocol", ["center", "10crop", "multiscale"])
def test_evaluate_json(setup, capsys, protocol):
    _, ck = setup
    argv = ["evaluate", "--checkpoint", str(ck), "--protocol", protocol, "--json", "--workers", "0"]
    assert main([*argv, "--device", "cpu", "--scales", "224", "256"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["images"] == 6 and r["protocol"] == protocol and 0 <= r["top5_error"] <= r["top1_error"] <= 100


def test_evaluate_text_and_ensemble(setup, capsys):
    _, ck = setup
    assert main(["evaluate", "--checkpoint", str(ck), str(ck), "--workers", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "ensemble of 2" in out and "top-1 error" in out and "top-5 error" in out


def test_predict_prints_five_classes(setup, capsys):
    root, ck = setup
    image = str(root / "val" / "c0" / "img.JPEG")
    assert main(["predict", image, "--checkpoint", str(ck), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == image and len(lines) == 6
    assert [line.split()[0] for line in lines[1:]] == ["1.", "2.", "3.", "4.", "5."]
    assert all(line.split()[-1] in CLASSES for line in lines[1:])


def test_import_weights_then_predict_imagenet_names(setup, tmp_path, capsys):
    root, _ = setup
    pth = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), pth)
    out = tmp_path / "r18.pt"
    assert main(["import-weights", str(pth), "--model", "resnet18", "--out", str(out)]) == 0
    assert "resnet18" in capsys.readouterr().out
    image = str(root / "val" / "c1" / "img.JPEG")
    assert main(["predict", image, "--checkpoint", str(out), "--device", "cpu", "--json"]) == 0
    (r,) = json.loads(capsys.readouterr().out)
    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert len(r["top"]) == 5 and all(name in categories for name, _ in r["top"])


def test_errors_are_one_line(setup, tmp_path, capsys):
    _, ck = setup
    bad = tmp_path / "tree" / "val" / "c0"
    bad.mkdir(parents=True)
    (bad / "broken.JPEG").write_bytes(b"garbage")
    argv = ["evaluate", "--checkpoint", str(ck), "--data-dir", str(tmp_path / "tree"), "--workers", "0"]
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.JPEG" in err and len(err.strip().splitlines()) == 1
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--format", "onnx", "--out", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(ck), "--protocol", "10crop", "--split", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_predict_folder_with_a_corrupt_file_csv_and_json(setup, tmp_path, capsys):
    root, ck = setup
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in CLASSES[:3]:
        (folder / f"{name}.JPEG").write_bytes((root / "val" / name / "img.JPEG").read_bytes())
    (folder / "b_broken.jpg").write_bytes(b"not an image")
    argv = ["predict", str(folder), "--checkpoint", str(ck), "--device", "cpu", "--workers", "0", "--batch-size", "2"]
    assert main([*argv, "--json"]) == 1  # one row failed; the others are there
    rows = json.loads(capsys.readouterr().out)
    assert [Path(r["image"]).name for r in rows] == ["b_broken.jpg", "c0.JPEG", "c1.JPEG", "c2.JPEG"]
    assert rows[0]["error"].startswith("cannot read") and rows[0]["top"] == []
    assert all(r["error"] is None and len(r["top"]) == 5 for r in rows[1:])

    # The probabilities, computed here the plain way: model(normalised centre view), softmax.
    from resnetlab.data.images import center_view, read_image
    from resnetlab.evaluate import load_model

    m = load_model(ck, torch.device("cpu"))
    for r in rows[1:]:
        with torch.no_grad():
            view = center_view(read_image(r["image"]), 32)
            probs = m.model(m.normalize(view[None])).softmax(-1)[0]
        name, p = r["top"][0]
        assert name == CLASSES[int(probs.argmax())] and p == pytest.approx(float(probs.max()), rel=1e-5)

    assert main([*argv, "--csv", "--top", "2"]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "image,class_1,prob_1,class_2,prob_2,error"
    assert lines[1].endswith(",,,,cannot read: corrupt or not an image") and len(lines) == 5
    assert "1 of 4 images could not be read" in err


def test_predict_glob_and_missing_file(setup, capsys):
    root, ck = setup
    argv = ["predict", str(root / "val" / "c[01]" / "*.JPEG"), str(root / "nope.jpg"), "--checkpoint", str(ck)]
    assert main([*argv, "--device", "cpu", "--workers", "0", "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert [Path(r["image"]).parent.name for r in rows[:2]] == ["c0", "c1"]
    assert rows[2]["error"] == "does not exist"
    assert main(["predict", str(root / "*.png"), "--checkpoint", str(ck)]) == 2
    assert "no file matches" in capsys.readouterr().err


def test_evaluate_per_class_and_confusion_by_hand(setup, tmp_path, capsys):
    """A network whose head always says class c2 (fc weight 0, bias one-hot): by hand, every image is
    predicted c2, so the confusion matrix is a column of ones at c2, c2's accuracy 100 %, the others 0 %."""
    root, ck = setup
    from resnetlab.utils.checkpoint import load

    obj = load(ck)
    obj["model"]["fc.weight"].zero_()
    obj["model"]["fc.bias"].copy_(torch.eye(len(CLASSES))[2] * 10)
    save_atomic({k: v for k, v in obj.items() if k != "format"}, tmp_path / "c2.pt")
    fig = tmp_path / "confusion.png"
    argv = ["evaluate", "--checkpoint", str(tmp_path / "c2.pt"), "--workers", "0", "--device", "cpu"]
    assert main([*argv, "--json", "--plot", str(fig)]) == 0
    out, err = capsys.readouterr()
    r = json.loads(out)
    assert r["classes"] == CLASSES and f"wrote {fig}" in err
    assert r["confusion_matrix"] == [[1 if j == 2 else 0 for j in range(6)] for _ in range(6)]
    assert [(c["class"], c["images"], c["accuracy"]) for c in r["per_class"]] == [
        (name, 1, 100.0 if name == "c2" else 0.0) for name in CLASSES
    ]
    assert r["top1_error"] == pytest.approx(100 * 5 / 6)
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "per-class top-1 accuracy (6 classes)" in text and text.strip().endswith("c2  100.00%  (1 images)")


def test_per_class_accuracy_matches_a_plain_loop(setup, capsys):
    """The batched confusion matrix against one forward per image, counted by hand."""
    root, ck = setup
    from resnetlab.data.images import center_view, read_image
    from resnetlab.evaluate import load_model

    m = load_model(ck, torch.device("cpu"))
    want = [[0] * 6 for _ in range(6)]
    for i, name in enumerate(CLASSES):
        with torch.no_grad():
            x = m.normalize(center_view(read_image(str(root / "val" / name / "img.JPEG")), 32)[None])
            want[i][int(m.model(x).argmax())] += 1
    assert main(["evaluate", "--checkpoint", str(ck), "--workers", "0", "--batch-size", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["confusion_matrix"] == want
