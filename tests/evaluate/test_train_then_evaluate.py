"""The ImageFolder data through the real training loop, then the checkpoint through the test protocols."""

from __future__ import annotations

import json

import pytest
import torch

import resnetlab.data
from resnetlab.config import load_config
from resnetlab.data.bundle import DataBundle
from resnetlab.data.ondevice import DeviceEvalSource, Normalizer
from resnetlab.evaluate import evaluate_checkpoints, load_model
from resnetlab.models import create_model
from resnetlab.utils.checkpoint import save_atomic

from .conftest import write_tree


def test_train_on_imagefolder_then_evaluate(tree, tmp_path):
    from resnetlab.train import run_training

    cfg = load_config(
        None,
        [
            "model.name=resnet18",
            "data.name=imagefolder",
            f"data.dir={tree}",
            "data.crop=32",
            "data.scale_min=36",
            "data.scale_max=48",
            "data.workers=0",
            "data.mean_samples=20",
            "train.batch_size=3",
            "train.max_iters=2",
            "train.eval_every=2",
            "train.checkpoint_every=2",
            "train.log_every=1",
            "train.eval_batch_size=4",
            "train.device=cpu",
            "optim.schedule=plateau",
            "optim.base_batch_size=256",
        ],
    )
    summary = run_training(cfg, tmp_path / "run")
    assert summary["iterations"] == 2
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iter"] for m in lines if "test_error" in m][-1] == 2
    final = tmp_path / "run" / "final.pt"
    loaded = load_model(final, torch.device("cpu"))
    assert loaded.meta["dataset"] == "imagefolder" and loaded.meta["mean"].shape == (3, 32, 32)
    r = evaluate_checkpoints([str(final)], protocol="10crop", workers=0, device="cpu")
    assert r["images"] == 6


def test_cifar_family_is_single_view_on_the_test_split(tmp_path, monkeypatch):
    """A CIFAR checkpoint: the test batches of build_data, renormalised with the checkpoint's own mean."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 32, 32), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (10,), generator=g)
    data_mean = images.float().mean(0) / 255
    ckpt_mean = torch.full((3, 1, 1), 0.45)  # the checkpoint was trained with a per-channel mean

    def fake_build_data(cfg, device, **kw):
        test = DeviceEvalSource(images, labels, normalizer=Normalizer(data_mean, None, device), batch_size=4)
        return DataBundle(None, test, 10, 3, 32, [str(i) for i in range(10)], {"mean": data_mean, "std": None})

    monkeypatch.setattr(resnetlab.data, "build_data", fake_build_data)
    torch.manual_seed(0)
    net = create_model("cifar_resnet20").eval()
    meta = {
        **{"dataset": "cifar10", "classes": [str(i) for i in range(10)], "num_classes": 10, "in_channels": 3},
        **{"image_size": 32, "mean": ckpt_mean, "std": None, "model": "cifar_resnet20", "model_options": {}},
    }
    save_atomic({"model": net.state_dict(), "config": {"data": {"name": "cifar10"}}, "meta": meta}, tmp_path / "c.pt")
    r = evaluate_checkpoints([str(tmp_path / "c.pt")], protocol="center", device="cpu")
    with torch.no_grad():
        probs = net(images.float() / 255 - ckpt_mean).softmax(-1)
    top1 = (probs.argmax(-1) == labels).float().mean().item()
    top5 = (probs.topk(5).indices == labels[:, None]).any(-1).float().mean().item()
    assert r["images"] == 10 and r["split"] == "test"
    assert r["top1_error"] == pytest.approx(100 * (1 - top1)) and r["top5_error"] == pytest.approx(100 * (1 - top5))
    with pytest.raises(Exception, match="single"):
        evaluate_checkpoints([str(tmp_path / "c.pt")], protocol="10crop", device="cpu")


def test_skipped_corrupt_images_are_counted_in_the_metrics(tmp_path):
    from resnetlab.train import run_training

    root = write_tree(tmp_path / "tree")
    (root / "train" / "bee" / "broken.JPEG").write_bytes(b"not a jpeg at all")
    cfg = load_config(
        None,
        [
            "model.name=resnet18",
            "data.name=imagefolder",
            f"data.dir={root}",
            "data.crop=32",
            "data.scale_min=36",
            "data.scale_max=48",
            "data.workers=0",
            "data.mean_samples=6",
            "data.skip_corrupt=true",
            "train.batch_size=7",
            "train.max_iters=1",
            "train.eval_every=1",
            "train.checkpoint_every=1",
            "train.eval_batch_size=4",
            "train.device=cpu",
        ],
    )
    run_training(cfg, tmp_path / "run")
    # One batch of 7 is the whole epoch of 7 files: the broken one is read, and skipped, exactly once.
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["skipped_images"] == 1
