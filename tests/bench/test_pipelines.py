"""Our pipelines and the reference: the mult-adds behind TFLOP/s, and the batches each one produces."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import torch
import torch.nn.functional as F

from resnetlab.bench.pipelines import ModelSetup, imagenet_train_source, ours_infer, ours_train
from resnetlab.bench.reference import CIFAR_MEAN, CIFAR_STD, cifar_loader, reference_train, synthetic_cifar10
from resnetlab.cli import main

CPU = torch.device("cpu")


def info_mult_adds(model: str) -> int:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["info", model, "--json"]) == 0
    return json.loads(out.getvalue())["mult_adds"]


def test_mult_adds_are_those_of_resnetlab_info():
    ours = ours_train(ModelSetup("cifar_resnet20", 4, CPU), train_images=64)
    assert ours.mult_adds == info_mult_adds("cifar_resnet20")
    ours = ours_infer(ModelSetup("resnet18", 1, CPU))
    assert ours.mult_adds == info_mult_adds("resnet18")


def test_ours_train_step_and_parts_run():
    ours = ours_train(ModelSetup("cifar_resnet20", 4, CPU), train_images=64)
    ours.step()
    x, y = ours.components["data"]()
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (4,)
    ours.components["fwd_bwd"]()
    ours.components["optimizer"]()


def test_imagenet_source_yields_normalised_224_batches():
    x, y = next(imagenet_train_source(CPU, 2).batches(0))
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    assert y.shape == (2,) and y.dtype == torch.int64
    assert x.abs().mean() < 1.0  # mean subtracted, /255: roughly zero-centred


def candidate_views(img_hwc: torch.Tensor) -> torch.Tensor:
    """Every pad-4 crop of an image and its mirror, normalised: the set RandomCrop + flip draws from.
    Padding is black (0) before ToTensor/Normalize, as torchvision pads the PIL image."""
    x = img_hwc.permute(2, 0, 1).float() / 255  # (3, 32, 32)
    xp = F.pad(x, (4, 4, 4, 4))
    views = [xp[:, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
    views += [v.flip(-1) for v in views]
    mean, std = torch.tensor(CIFAR_MEAN)[:, None, None], torch.tensor(CIFAR_STD)[:, None, None]
    return (torch.stack(views) - mean) / std  # (162, 3, 32, 32)


def test_reference_dataset_augments():
    ds = synthetic_cifar10(4)
    candidates = candidate_views(torch.from_numpy(ds.data[2]))
    seen = set()
    for _ in range(12):
        x, y = ds[2]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == ds.targets[2]
        match = ((candidates - x).abs().amax(dim=(1, 2, 3)) < 1e-5).nonzero().flatten().tolist()
        assert match, "the reference output is not a pad-4 crop (or its flip) of the image"
        seen.add(match[0])
    assert len(seen) > 1  # random: not the same view every time
    assert any(i != 4 * 9 + 4 for i in seen)  # index 40 is the centre crop, unflipped: the image itself


def test_reference_loader_batches():
    x, y = next(iter(cifar_loader(32, 8, train=True, workers=0, device=CPU)))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and x.is_contiguous()
    assert y.shape == (8,) and y.dtype == torch.int64


def test_reference_train_step_runs():
    ref = reference_train("cifar_resnet20", batch_size=4, device=CPU, workers=0, train_images=32)
    assert ref.mult_adds == info_mult_adds("cifar_resnet20")
    assert torch.isfinite(ref.step())
