"""The paper's test protocols (sec. 3.4, 4.1), on uint8 images, for one model or an ensemble.

  center      shorter side 256, the central 224x224 (one view)
  10crop      shorter side 256; the 4 corner and the central 224x224 crops and their mirror images;
              the softmax outputs of the ten views averaged (tables 2, 3)
  multiscale  the fully-convolutional form: the fc layer applied as a 1x1 convolution to the last
              feature map of the whole image, the class score map averaged over positions, softmax,
              averaged over the shorter sides {224, 256, 384, 480, 640} (table 4). The paper averages
              over scales only; `flip=True` also averages each scale's mirror image (VGG's dense test).
An ensemble averages the softmax outputs of its models (table 5).

Sizes scale with the model's training crop (`image_size`): 256 becomes round(crop * 256 / 224), and
so on, so the protocols also run on the tiny trees of the tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from resnetlab.data.images import center_view, resize_shorter, test_resize
from resnetlab.data.ondevice import FloatScratch
from resnetlab.errors import UserError
from resnetlab.evaluate.checkpoints import LoadedModel

PROTOCOLS = ("center", "10crop", "multiscale")
PAPER_SCALES = (224, 256, 384, 480, 640)  # sec. 3.4: shorter sides of the multi-scale test


def scaled(size: int, crop: int) -> int:
    """A size of the paper (given for 224 crops) for a model trained on `crop`-pixel crops."""
    return round(size * crop / 224)


def ten_crop(img: Tensor, crop: int) -> Tensor:
    """(C, H, W) uint8 -> (10, C, crop, crop): corners and centre of the 256-resized image, then their mirrors."""
    img = resize_shorter(img, test_resize(crop))
    h, w = img.shape[-2:]
    top, left = round((h - crop) / 2), round((w - crop) / 2)  # as torchvision's center_crop
    corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), (top, left)]
    views = torch.stack([img[:, i : i + crop, j : j + crop] for i, j in corners])  # (5, C, crop, crop)
    return torch.cat([views, views.flip(-1)])


def fixed_views(img: Tensor, protocol: str, crop: int) -> Tensor:
    """The views of one image for the fixed-size protocols: (V, C, crop, crop) uint8."""
    if protocol == "center":
        return center_view(img, crop)[None]
    if protocol == "10crop":
        return ten_crop(img, crop)
    raise ValueError(f"fixed_views: protocol {protocol!r} has views of several sizes")


def fully_convolutional_logits(model: torch.nn.Module, x: Tensor) -> Tensor:
    """(N, C, H, W) of any size -> (N, K): fc as a 1x1 conv on the last feature map, the score map
    (N, K, h, w) averaged over positions. (Being linear, this equals pool-then-fc; written as the
    paper describes it.)"""
    if not hasattr(model, "forward_features") or not isinstance(getattr(model, "fc", None), torch.nn.Linear):
        raise UserError(f"{type(model).__name__} has no fully-convolutional form; use --protocol center or 10crop")
    feats = model.forward_features(x)  # (N, C_feat, h, w)
    weight = model.fc.weight[:, :, None, None]  # (K, C_feat) -> (K, C_feat, 1, 1)
    score_map = F.conv2d(feats, weight, model.fc.bias)  # (N, K, h, w)
    return score_map.mean((2, 3))


@torch.no_grad()
def ensemble_probs(
    models: Sequence[LoadedModel], views: Tensor, *, fully_conv: bool = False, scratch: FloatScratch | None = None
) -> Tensor:
    """(N, V, C, h, w) uint8 views of N images -> (N, K): softmax averaged over views and models.
    scratch: the float batch to normalise into, model after model and call after call (on the CPU)."""
    n, v = views.shape[:2]
    flat = views.flatten(0, 1)  # (N * V, C, h, w)
    total = None
    for m in models:
        x = m.normalize(flat, into=None if scratch is None else scratch(flat))
        logits = fully_convolutional_logits(m.model, x) if fully_conv else m.model(x)
        probs = logits.float().softmax(-1).view(n, v, -1).mean(1)
        total = probs if total is None else total + probs
    return total / len(models)


@torch.no_grad()
def multiscale_probs(
    models: Sequence[LoadedModel], img: Tensor, *, scales: Sequence[int] = PAPER_SCALES, flip: bool = False
) -> Tensor:
    """(C, H, W) uint8, one whole image -> (K,): softmax of the fully-convolutional scores averaged
    over the shorter sides `scales` (paper sizes, scaled to the model's crop) and, with `flip`, mirrors."""
    crop = models[0].image_size
    total = 0.0
    for size in scales:
        resized = resize_shorter(img, scaled(size, crop))
        views = torch.stack([resized, resized.flip(-1)]) if flip else resized[None]
        total = total + ensemble_probs(models, views[None], fully_conv=True)[0]
    return total / len(scales)


def confusion_counts(probs: Tensor, labels: Tensor) -> Tensor:
    """(K, K) int64 counts: row = true class, column = top-1 prediction, for (N, K) scores, (N,) labels."""
    k = probs.shape[-1]
    return torch.bincount(labels.long() * k + probs.argmax(-1), minlength=k * k).view(k, k)


def topk_correct(probs: Tensor, labels: Tensor, k: int = 5) -> tuple[int, int]:
    """(number right at top-1, number right at top-k) for (N, K) scores and (N,) labels."""
    k = min(k, probs.shape[-1])
    top = probs.topk(k, dim=-1).indices  # (N, k)
    hit = top == labels[:, None]
    return int(hit[:, 0].sum()), int(hit.any(-1).sum())
