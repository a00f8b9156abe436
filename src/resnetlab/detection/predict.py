"""Detect objects in one image and draw them (torchvision.utils.draw_bounding_boxes)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes

from resnetlab.errors import UserError

_PALETTE = [
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#46f0f0",
    "#f032e6",
    "#bcf60c",
    "#fabebe",
    "#008080",
]


@torch.no_grad()
def predict_image(
    model: nn.Module,
    classes: list[str],
    image_path: str | Path,
    out_path: str | Path,
    *,
    threshold: float = 0.5,
    device: torch.device | str = "cpu",
) -> list[tuple[str, float, list[float]]]:
    """Write `out_path` (PNG) with boxes, labels and scores >= threshold; return them."""
    path = Path(image_path)
    if not path.is_file():
        raise UserError(f"image {path} does not exist")
    try:
        image = pil_to_tensor(Image.open(path).convert("RGB"))  # uint8 (3, H, W)
    except Exception as e:
        raise UserError(f"cannot read image {path} ({type(e).__name__})") from None
    model.eval()
    out = model([image.to(device).float().div_(255)])[0]
    keep = out["scores"] >= threshold
    boxes, scores, labels = out["boxes"][keep].cpu(), out["scores"][keep].cpu(), out["labels"][keep].cpu()
    names = [classes[int(c) - 1] for c in labels]
    drawn = draw_bounding_boxes(
        image,
        boxes,
        labels=[f"{n} {s:.2f}" for n, s in zip(names, scores.tolist())],
        colors=[_PALETTE[(int(c) - 1) % len(_PALETTE)] for c in labels],
        width=max(1, round(max(image.shape[-2:]) / 300)),
    )
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    to_pil_image(drawn).save(out_path, format="PNG")
    return [(n, float(s), b) for n, s, b in zip(names, scores.tolist(), boxes.tolist())]
