"""A tiny ImageFolder tree of real JPEG files and checkpoints of small models trained on nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import functional as TV

from resnetlab.models import create_model
from resnetlab.utils.checkpoint import save_atomic

CLASSES = ["ant", "bee", "cat"]
SIZES = ((40, 56), (64, 48), (50, 50), (72, 44))  # (width, height)
CROP = 32  # the models' "training crop": test views are 37 -> 32, multiscale sides 32..91


def write_tree(root: Path, per_class: int = 2) -> Path:
    g = torch.Generator().manual_seed(1)
    for c, name in enumerate(CLASSES):
        for split in ("train", "val"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                w, h = SIZES[(i + c) % len(SIZES)]
                img = torch.rand(3, h // 4, w // 4, generator=g) * 0.6
                img[c] += 0.4
                img = torch.nn.functional.interpolate(img[None], size=(h, w), mode="bilinear")[0]
                TV.to_pil_image(img.clamp(0, 1)).save(root / split / name / f"{name}{i}.JPEG", quality=90)
    return root


def write_checkpoint(path: Path, data_dir: Path, *, model="resnet18", seed=0, mean="pixel", classes=CLASSES) -> Path:
    """A checkpoint as training writes it, with random weights and non-trivial BN statistics."""
    g = torch.Generator().manual_seed(seed)
    net = create_model(model, num_classes=len(classes))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    mean_shape = (3, CROP, CROP) if mean == "pixel" else (3, 1, 1)
    meta = {
        "dataset": "imagefolder",
        "classes": list(classes),
        "num_classes": len(classes),
        "in_channels": 3,
        "image_size": CROP,
        "mean": torch.rand(mean_shape, generator=g) * 0.2 + 0.4,
        "std": torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1) if mean == "channel" else None,
        "model": model,
        "model_options": {"num_classes": len(classes)},
    }
    save_atomic({"model": net.state_dict(), "config": {"data": {"dir": str(data_dir)}}, "meta": meta}, path)
    return path


@pytest.fixture(scope="session")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("tree"))


@pytest.fixture(scope="session")
def checkpoints(tree, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ck")
    return {
        "a": write_checkpoint(d / "a.pt", tree, seed=0),
        "b": write_checkpoint(d / "b.pt", tree, seed=1, mean="channel"),
    }


@pytest.fixture
def make_tree():
    return write_tree


@pytest.fixture
def write_ck():
    return write_checkpoint
