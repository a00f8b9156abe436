"""`build_data(cfg, device)`: the dataset `data.name` names, through the recipe that fits it.

CIFAR-10/100, MNIST and Fashion-MNIST, and an ImageFolder tree of small images, go through the CIFAR
recipe, held whole on the training device (`cifar_recipe.py`); ImageNet and other ImageFolder trees
through the ImageNet recipe's DataLoader (`imagenet.py`).
"""

from __future__ import annotations

import torch

from resnetlab.config import Config
from resnetlab.data.bundle import DataBundle
from resnetlab.data.cifar_recipe import build_builtin, build_small_folder
from resnetlab.data.readers import READERS
from resnetlab.data.summary import FOLDERS, resolve_recipe
from resnetlab.errors import UserError

DATASETS = (*READERS, "imagenet", "imagefolder")


def build_data(
    cfg: Config, device: torch.device, *, rank: int = 0, world_size: int = 1, stats: tuple | None = None
) -> DataBundle:
    """The training stream and the test (or held-out validation) split of `cfg.data.name`.
    `stats` (mean, std or None), when given, is the normalisation to use instead of the training
    split's (fine-tuning uses the weights' own). An ImageFolder tree goes through the recipe
    `summary.resolve_recipe` chooses: the CIFAR one for small images, on the device (`cifar_recipe.py`),
    or ImageNet's through a DataLoader (`imagenet.py`). The bundle's `summary` says which, and what was found."""
    d = cfg.data
    if d.name in FOLDERS:
        recipe, _ = resolve_recipe(cfg)
        if recipe == "cifar":
            return build_small_folder(cfg, device, rank=rank, world_size=world_size, stats=stats)
        from resnetlab.data.imagenet import build_imagefolder

        return build_imagefolder(cfg, device, rank=rank, world_size=world_size, stats=stats)
    if d.name not in READERS:
        raise UserError(f"data.name: unknown dataset {d.name!r}; choose one of {', '.join(DATASETS)}")
    return build_builtin(cfg, device, rank=rank, world_size=world_size, stats=stats)
