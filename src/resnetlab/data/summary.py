"""What a run's data is and which recipe runs on it: said once at the start of `train` and kept in
the run folder (`data.json`), so a folder of 32 px images is never trained on the ImageNet recipe
without a word.

`summarize(...)` -> {"dataset", "dir", "recipe", "recipe_reason", "splits": {"train": {"images",
"classes"}, "test" | "val": {...}}, "eval_split", "input_size": [C, H, W], "augmentation", "mean",
"iters_per_epoch", "batch_size", "warnings": [...]}; `summary_lines` turns it into what is printed.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import torch
from PIL import Image

from resnetlab.config import Config, DataConfig
from resnetlab.data.images import Sample, read_bytes

# Keys that only one recipe reads. The built-in datasets run the CIFAR recipe on the device.
IMAGENET_ONLY = ("scale_min", "scale_max", "crop", "lighting", "decode", "loader", "mean_samples")
CIFAR_ONLY = ("pad", "image_size")
FOLDER_ONLY = ("recipe", "image_size", "eval_split", "workers", "skip_corrupt", "cache")
FOLDERS = ("imagenet", "imagefolder")


def resolve_recipe(cfg: Config) -> tuple[str, str]:
    """("cifar" | "imagenet", why): data.recipe, or for "auto" the network's kind (cifar_* -> cifar)."""
    d, model = cfg.data, cfg.model.name
    if d.name not in FOLDERS:
        return "cifar", f"{d.name} is a built-in small dataset"
    if d.recipe != "auto":
        return d.recipe, f"data.recipe={d.recipe}"
    if model.startswith("cifar_"):
        return "cifar", f"data.recipe=auto and {model} is a CIFAR network"
    return "imagenet", f"data.recipe=auto and {model} is not a CIFAR network"


def augmentation(cfg: Config, recipe: str, size: int, flip: bool = True) -> str:
    d = cfg.data
    if not d.augment:
        return "none (data.augment=false)"
    if recipe == "cifar":
        return f"pad {d.pad} + random {size}x{size} crop" + (" + horizontal flip" if flip else "") + ", on the device"
    lighting = f" + PCA lighting std {d.lighting:g}" if d.lighting > 0 else ""
    flipped = " + flip" if flip else ""
    return f"shorter side random in [{d.scale_min}, {d.scale_max}] + random {d.crop}x{d.crop} crop{flipped}{lighting}"


def inapplicable(cfg: Config, recipe: str) -> list[str]:
    """A warning for every data.* key the user set (away from its default) that the chosen data ignores."""
    d, default = cfg.data, DataConfig()
    if d.name not in FOLDERS:
        ignored, where = IMAGENET_ONLY + FOLDER_ONLY, f"the built-in dataset {d.name}"
    elif recipe == "cifar":
        ignored, where = IMAGENET_ONLY, "the CIFAR recipe (data.recipe=imagenet reads it)"
    else:
        ignored, where = CIFAR_ONLY, "the ImageNet recipe (data.recipe=cifar reads it)"
    if d.name in FOLDERS and d.val_split > 0:
        ignored, where = (*ignored, "eval_split"), where
    warnings = []
    for key in ignored:
        value = getattr(d, key)
        if value != getattr(default, key):
            shown = str(value).lower() if isinstance(value, bool) else value
            why = "data.val_split holds out training images instead" if key == "eval_split" else f"to {where}"
            warnings.append(f"data.{key}={shown} does not apply {why}; it is ignored")
    return warnings


def small_for_imagenet(cfg: Config, samples: list[Sample], probes: int = 8) -> str | None:
    """A warning when the training images are much smaller than the ImageNet recipe's sizes (a few
    image headers, evenly spaced over the list, are read)."""
    d = cfg.data
    sides = []
    for path, _ in samples[:: max(1, len(samples) // probes)][:probes]:
        try:
            with Image.open(io.BytesIO(read_bytes(path))) as im:
                sides.append((im.width, im.height))
        except Exception:  # whatever PIL raised (images.decode_image)
            continue  # the run itself names an unreadable file
    if not sides:
        return None
    w, h = sorted(sides, key=min)[len(sides) // 2]
    if 2 * min(w, h) > min(d.crop, d.scale_min):
        return None
    return (
        f"the training images are about {w}x{h}, much smaller than the ImageNet recipe's shorter side "
        f"[{d.scale_min}, {d.scale_max}] and crop {d.crop}: they are upscaled; for small images use the CIFAR "
        "recipe (data.recipe=cifar, or a cifar_* model)"
    )


def summarize(
    cfg: Config,
    *,
    recipe: str,
    root: str,
    train_labels: torch.Tensor | list[int],
    eval_labels: torch.Tensor | list[int],
    eval_name: str,
    input_size: tuple[int, int, int],
    iters_per_epoch: int,
    flip: bool = True,
    extra_warnings: list[str | None] = (),
) -> dict[str, Any]:
    """The start-up summary (see the module docstring)."""
    d = cfg.data
    _, reason = resolve_recipe(cfg)

    def split(labels) -> dict[str, int]:
        labels = torch.as_tensor(labels)
        return {"images": len(labels), "classes": len(labels.unique())}

    mean = f"per-{d.mean} mean" + (" and per-channel std" if d.normalize_std else "")
    return {
        "dataset": d.name,
        "dir": root,
        "recipe": recipe,
        "recipe_reason": reason,
        "splits": {"train": split(train_labels), eval_name: split(eval_labels)},
        "eval_split": eval_name,
        "input_size": list(input_size),
        "augmentation": augmentation(cfg, recipe, input_size[-1], flip),
        "normalization": mean,
        "batch_size": cfg.train.batch_size,
        "iters_per_epoch": iters_per_epoch,
        "warnings": [*inapplicable(cfg, recipe), *(w for w in extra_warnings if w)],
    }


def summary_lines(s: dict[str, Any]) -> list[str]:
    """What `train` prints at the start."""
    splits = "; ".join(f"{name} {v['images']} images, {v['classes']} classes" for name, v in s["splits"].items())
    c, h, w = s["input_size"]
    return [
        f"data: {s['dataset']} {s['dir']}: {s['recipe'].replace('cifar', 'CIFAR').replace('imagenet', 'ImageNet')} "
        f"recipe ({s['recipe_reason']})",
        f"  {splits} (evaluated: {s['eval_split']})",
        f"  input {c}x{h}x{w}, {s['normalization']}; augmentation: {s['augmentation']}",
        f"  {s['iters_per_epoch']} iterations per epoch at batch {s['batch_size']}",
        *(f"warning: {w}" for w in s["warnings"]),
    ]


def with_summary(bundle, summary: dict[str, Any]):
    """The bundle with its summary attached."""
    return dataclasses.replace(bundle, summary=summary)
