"""JPEG decoding and the training geometry on the training device (`data.decode: device`).

The DataLoader workers only read files, parse JPEG headers and draw the augmentation (the same
draws, from the same seeds, as the CPU path: `imagenet._Views` with `encoded=True`); the main
process decodes the whole batch at once with `torchvision.io.decode_jpeg(list, device=...)` (nvjpeg
on CUDA) and makes the views there: scale (antialiased resize), crop, flip.
Lighting and the mean are the source's usual device half. Files nvjpeg cannot take (PNG, CMYK
JPEGs) were already decoded by the workers, on the CPU path; a JPEG that fails on the device is
decoded again on the CPU (PIL) and, if that fails too, dropped and counted as skipped.

Every function here runs on any device: on the CPU, decode_jpeg is libjpeg-turbo, which is how the
tests cover this path on machines without CUDA.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

from resnetlab.data.images import decode_image, resized_crop
from resnetlab.errors import UserError

# A batch's undecoded JPEGs as the collate ships them: all their bytes in one uint8 tensor, and per
# image (offset, length, path, resized (H', W'), top, left, flip).
Encoded = tuple[Tensor, list[tuple[int, int, str, tuple[int, int], int, int, bool]]]


def decode_jpegs(datas: list[Tensor], device: torch.device) -> list[Tensor | None]:
    """uint8 (n,) JPEG byte tensors (CPU) -> uint8 RGB (3, H, W) images on `device`, one call for the
    batch (nvjpeg's batched decoder on CUDA); if the batch fails, image by image; None where it fails."""
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec's
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: list[Tensor | None] = []
            for data in datas:
                try:
                    out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


def device_views(encoded: Encoded, crop: int, device: torch.device) -> tuple[Tensor, list[int], list[str]]:
    """Decode and crop a batch's undecoded JPEGs on `device`.

    Returns (views uint8 (M, 3, crop, crop) on the device, the indices of the entries they belong to,
    the paths that could be decoded nowhere). A JPEG the device decoder refuses is decoded on the CPU.
    """
    blob, entries = encoded
    datas = [blob[offset : offset + length] for offset, length, *_ in entries]
    images = decode_jpegs(datas, device)
    views, kept, failed = [], [], []
    for i, ((_, _, path, resized, top, left, flip), data, img) in enumerate(zip(entries, datas, images)):
        if img is None:
            try:
                img = decode_image(data.numpy().tobytes(), path)[0].to(device)
            except UserError:
                failed.append(path)
                continue
        view = resized_crop(img, resized, top, left, crop)
        views.append(view.flip(-1) if flip else view)
        kept.append(i)
    if not views:
        return torch.empty(0, 3, crop, crop, dtype=torch.uint8, device=device), kept, failed
    return torch.stack(views), kept, failed
