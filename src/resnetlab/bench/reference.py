"""Reference pipelines, written the usual way, to put our figures next to in the same process.

CIFAR family: torchvision's `CIFAR10` dataset class over synthetic uint8 images of CIFAR's shape, the
usual transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize) in a DataLoader
(2 workers, as in PyTorch's CIFAR-10 tutorial), the same architecture, NCHW, fp32, eager.
ImageNet family: torchvision's ResNet (its "v1.5" layout), NCHW, fp32, eager, on a ready float batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader
from torchvision import transforms

from resnetlab.bench.pipelines import CIFAR_TEST_IMAGES, CIFAR_TRAIN_IMAGES, Pipeline, family, input_size
from resnetlab.errors import UserError
from resnetlab.models import create_model
from resnetlab.models.complexity import measure

# The per-channel statistics every CIFAR-10 tutorial normalises with.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
DEFAULT_WORKERS = 2


def cifar_transform(train: bool) -> transforms.Compose:
    augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train else []
    return transforms.Compose([*augment, transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])


def synthetic_cifar10(images: int, *, train: bool = True, seed: int = 0) -> torchvision.datasets.CIFAR10:
    """torchvision's CIFAR10 class (so `__getitem__` is the real one: PIL image, then the transform)
    holding random uint8 images in CIFAR's layout, (N, 32, 32, 3), instead of the downloaded files."""
    rng = np.random.default_rng(seed)
    ds = torchvision.datasets.CIFAR10.__new__(torchvision.datasets.CIFAR10)
    ds.root, ds.train = "synthetic", train
    ds.data = rng.integers(0, 256, size=(images, 32, 32, 3), dtype=np.uint8)
    ds.targets = rng.integers(0, 10, size=images).tolist()
    ds.classes = [str(i) for i in range(10)]
    ds.transform, ds.target_transform, ds.transforms = cifar_transform(train), None, None
    return ds


def cifar_loader(images: int, batch_size: int, *, train: bool, workers: int, device: torch.device) -> DataLoader:
    return DataLoader(
        synthetic_cifar10(images, train=train),
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )


def endless(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def reference_model(model_name: str) -> torch.nn.Module:
    """The same CIFAR architecture (ours), or torchvision's ImageNet ResNet / VGG of that depth."""
    if family(model_name) == "cifar":
        return create_model(model_name)
    if not model_name.startswith(("resnet", "vgg")):
        raise UserError(f"no torchvision reference for {model_name!r}: use resnet18..152, vgg16/19 or cifar_*")
    return getattr(torchvision.models, model_name)(weights=None)


def _mult_adds(model_name: str) -> int:
    with torch.device("meta"):
        return measure(reference_model(model_name), input_size=input_size(model_name)).mult_adds


def _batches(model_name: str, batch_size: int, *, train: bool, workers: int, device: torch.device, images: int):
    if family(model_name) == "cifar":
        loader = cifar_loader(images, batch_size, train=train, workers=workers, device=device)
        what = f"torchvision CIFAR10 + transforms in a DataLoader ({workers} workers)"
        return endless(loader), what
    size = input_size(model_name)
    x = torch.randn(batch_size, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    return iter(lambda: (x, y), None), "ready float batch on the device"


def _pipeline(
    model: torch.nn.Module, model_name: str, batch_size: int, what: str, step: Callable[[], object]
) -> Pipeline:
    """The reference pipeline record: which network, fp32 eager, and how its batches are made."""
    return Pipeline(
        name="reference",
        description=f"{type(model).__module__}.{type(model).__name__} ({model_name}), fp32, NCHW, eager; {what}",
        batch_size=batch_size,
        mult_adds=_mult_adds(model_name),
        step=step,
    )


def reference_train(
    model_name: str,
    *,
    batch_size: int,
    device: torch.device,
    workers: int = DEFAULT_WORKERS,
    train_images: int = CIFAR_TRAIN_IMAGES,
) -> Pipeline:
    model = reference_model(model_name).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    stream, what = _batches(model_name, batch_size, train=True, workers=workers, device=device, images=train_images)

    def step() -> object:
        x, y = next(stream)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    return _pipeline(model, model_name, batch_size, what, step)


def reference_infer(
    model_name: str, *, batch_size: int, device: torch.device, workers: int = DEFAULT_WORKERS
) -> Pipeline:
    model = reference_model(model_name).to(device).eval()
    images = max(CIFAR_TEST_IMAGES // batch_size, 1) * batch_size
    stream, what = _batches(model_name, batch_size, train=False, workers=workers, device=device, images=images)

    @torch.no_grad()
    def step() -> object:
        x, _ = next(stream)
        return model(x.to(device, non_blocking=True))

    return _pipeline(model, model_name, batch_size, what, step)
