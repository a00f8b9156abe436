"""CPU time per image of the ways to make one training view from a JPEG: how the fast path was chosen.

    python benchmarks/jpeg_variants.py /tmp/imagefolder --images 80 --rounds 4

One process, one thread (as in a DataLoader worker), the files read into memory first; every variant
runs on the same images in each round, the order reversed every other round; the figure is CPU time
(`time.process_time`), median over rounds, so other processes on a shared machine count for little.
The view: shorter side 368 (the middle of [256, 480]), a 224 crop at a fixed place, no flip.

  pil_decode          PIL open + convert("RGB") (ImageFolder's loader)
  tv_decode           torchvision.io.decode_jpeg (libjpeg-turbo straight into a uint8 tensor)
  reference           PIL decode, PIL resize of the whole image, crop (transforms.v2 on PIL images), uint8
  pil_box             PIL decode, PIL resize of the crop's box only (exact), uint8
  ours                decode_jpeg, torch uint8 antialiased resize of the whole image, crop
                      (resnetlab.data.imagenet.resized_crop)
  float_normalise     the reference's per-image float work on a 224 crop: ToDtype(float, scale) + Normalize
"""

from __future__ import annotations

import argparse
import io
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from resnetlab.data.images import resized_crop, resized_size

SHORTER, CROP = 368, 224


def _window(h: int, w: int) -> tuple[tuple[int, int], int, int]:
    resized = resized_size((h, w), SHORTER)
    return resized, (resized[0] - CROP) // 3, (resized[1] - CROP) // 3


def pil_decode(data: bytes):
    return Image.open(io.BytesIO(data)).convert("RGB")


def tv_decode(data: bytes) -> torch.Tensor:
    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def reference(data: bytes) -> torch.Tensor:
    im = pil_decode(data)
    (h, w), top, left = _window(im.height, im.width)
    return TF.pil_to_tensor(im.resize((w, h), Image.BILINEAR).crop((left, top, left + CROP, top + CROP)))


def pil_box(data: bytes) -> torch.Tensor:
    im = pil_decode(data)
    (h, w), top, left = _window(im.height, im.width)
    fy, fx = im.height / h, im.width / w
    box = (left * fx, top * fy, (left + CROP) * fx, (top + CROP) * fy)
    return torch.from_numpy(np.array(im.resize((CROP, CROP), Image.BILINEAR, box=box))).permute(2, 0, 1)


def ours(data: bytes) -> torch.Tensor:
    img = tv_decode(data)
    resized, top, left = _window(*img.shape[-2:])
    return resized_crop(img, resized, top, left, CROP)


_VIEW = torch.randint(0, 256, (3, CROP, CROP), dtype=torch.uint8)


def float_normalise(_data: bytes) -> torch.Tensor:
    x = TF.to_dtype(_VIEW, torch.float32, scale=True)
    return TF.normalize(x, [0.485, 0.456, 0.406], [1.0, 1.0, 1.0])


VARIANTS = [pil_decode, tv_decode, reference, pil_box, ours, float_normalise]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="an ImageFolder tree (benchmarks/make_imagefolder.py)")
    p.add_argument("--images", type=int, default=80)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)
    torch.set_num_threads(1)
    files = sorted(args.root.rglob("*_*.JPEG"))[: args.images]  # the generated files, not the odd_* ones
    datas = [f.read_bytes() for f in files]
    ms: dict[str, list[float]] = {v.__name__: [] for v in VARIANTS}
    for r in range(args.rounds):
        for fn in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            t0 = time.process_time()
            for data in datas:
                fn(data)
            ms[fn.__name__].append((time.process_time() - t0) / len(datas) * 1e3)
    print(f"{len(datas)} JPEGs of {args.root}, {args.rounds} rounds, CPU ms per image (median; rounds)")
    for name, values in ms.items():
        print(f"{name:<16} {np.median(values):6.2f}   ({', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
