"""`predict`: the top-5 classes of single images (the centre view), for a model or an ensemble."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from resnetlab.data.imagenet import center_view, read_image
from resnetlab.evaluate.checkpoints import IMAGE_DATASETS, LoadedModel, load_models
from resnetlab.evaluate.protocols import ensemble_probs
from resnetlab.utils.device import resolve_device


def imagenet_categories() -> list[str]:
    """ImageNet's 1000 class names in the standard order, from torchvision's weight metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def class_names(model: LoadedModel) -> list[str]:
    """The checkpoint's class names; 1000 ImageNet synset ids get their readable name added; a
    checkpoint without names and 1000 classes gets ImageNet's; otherwise class indices."""
    names = model.classes
    if model.num_classes == 1000 and (not names or all(re.fullmatch(r"n\d{8}", c) for c in names)):
        readable = imagenet_categories()
        return [f"{wnid} {name}" for wnid, name in zip(names, readable)] if names else readable
    return names if len(names) == model.num_classes else [str(i) for i in range(model.num_classes)]


@torch.no_grad()
def predict(
    images: Sequence[str], checkpoints: Sequence[str], *, top: int = 5, device: str = "auto"
) -> list[dict[str, Any]]:
    """For each image: {"image", "top": [(class name, probability), ...]} best first."""
    dev = resolve_device(device)
    models = load_models(list(checkpoints), dev)
    names = class_names(models[0])
    crop, resize = models[0].image_size, None
    if models[0].dataset not in IMAGE_DATASETS:
        resize = crop  # CIFAR-size models: the whole image at the training size, no 256/224 margin
    out = []
    for path in images:
        img = read_image(path)
        if models[0].meta.get("in_channels", 3) == 1:
            img = img.float().mean(0, keepdim=True).round().to(torch.uint8)  # grey models (MNIST)
        view = center_view(img, crop, resize)  # (C, crop, crop)
        probs = ensemble_probs(models, view[None, None].to(dev))[0].cpu()
        p, idx = probs.topk(min(top, len(probs)))
        out.append({"image": str(path), "top": [(names[i], float(q)) for q, i in zip(p, idx.tolist())]})
    return out
