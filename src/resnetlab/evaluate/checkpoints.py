"""A checkpoint turned back into a model in eval mode plus the normalisation it was trained with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resnetlab.errors import UserError
from resnetlab.models import create_model
from resnetlab.utils.checkpoint import load

IMAGE_DATASETS = ("imagenet", "imagefolder")  # full-size images: the paper's test protocols apply


@dataclass
class LoadedModel:
    model: nn.Module
    meta: dict[str, Any]
    config: dict[str, Any]
    path: str

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def dataset(self) -> str:
        return str(self.meta.get("dataset", ""))

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or [])

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 (N, C, h, w) -> float (x / 255 - mean) [/ std], the normalisation of the contract.

        A per-pixel mean is stored at the training crop size; at any other size (the multi-scale
        protocol sees whole images of 224..640 pixels) the mean map is resized bilinearly to (h, w),
        which keeps its smooth centre-to-border shape. A per-channel mean needs nothing."""
        mean = self.meta["mean"].to(x.device, torch.float32)
        if mean.shape[-2:] != (1, 1) and mean.shape[-2:] != x.shape[-2:]:
            mean = F.interpolate(mean[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
        out = x.float() / 255.0 - mean
        std = self.meta.get("std")
        return out / std.to(x.device, torch.float32) if std is not None else out


def load_model(path: str | Path, device: torch.device) -> LoadedModel:
    """Rebuild `create_model(meta["model"], **meta["model_options"])`, load its weights, eval mode."""
    ckpt = load(path)
    meta = ckpt.get("meta") or {}
    missing = [k for k in ("model", "model_options", "num_classes", "image_size", "mean") if k not in meta]
    if missing:
        raise UserError(f"checkpoint {path} has no {', '.join(missing)} in its meta; cannot rebuild the model")
    try:
        model = create_model(meta["model"], **meta["model_options"])
        model.load_state_dict(ckpt["model"])
    except (ValueError, TypeError, RuntimeError) as e:
        raise UserError(f"checkpoint {path}: cannot rebuild {meta['model']!r} ({str(e).splitlines()[0]})") from None
    model.to(device).eval()
    return LoadedModel(model, meta, ckpt.get("config") or {}, str(path))


def load_models(paths: list[str], device: torch.device) -> list[LoadedModel]:
    """Several checkpoints for an ensemble: they must agree on the classes and on the input size."""
    if not paths:
        raise UserError("give at least one --checkpoint")
    models = [load_model(p, device) for p in paths]
    first = models[0]
    for m in models[1:]:
        if (m.num_classes, m.classes) != (first.num_classes, first.classes):
            raise UserError(f"{m.path} and {first.path} have different classes; an ensemble needs the same ones")
        if m.image_size != first.image_size or (m.dataset in IMAGE_DATASETS) != (first.dataset in IMAGE_DATASETS):
            raise UserError(f"{m.path} and {first.path} were trained on different inputs; cannot ensemble them")
    return models
