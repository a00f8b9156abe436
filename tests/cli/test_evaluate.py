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
