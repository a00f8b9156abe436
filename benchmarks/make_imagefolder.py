"""Write an ImageFolder of realistic JPEGs for `resnetlab bench data` (no internet needed).

    python benchmarks/make_imagefolder.py /tmp/imagefolder --images 3000 --classes 10

About 40 ms of one CPU core per image (3,000 images: 2 minutes on one core, 10 s on 16).

Sizes are drawn like ImageNet's training images: most are 500 px on the longer side at 4:3 or 3:4
(ImageNet's modal 500x375 / 375x500), the rest spread between about 150 and 1,200 px on the shorter
side (a log-normal), aspect ratios 1:1 to 2:1. Content has a natural image's 1/f spectrum (random
noise summed over octaves, colour-correlated) plus edges, so the JPEG files have ImageNet's bytes per
pixel (quality 90, 4:2:0 subsampling, as the ImageNet JPEGs were saved: ~110 KB for 500x375) and
decode at the same speed; flat or white-noise images would decode faster or slower than real ones.

With --odd (default on) the training split also gets the files every path must survive: a PNG, a
CMYK JPEG, a grayscale JPEG, a truncated JPEG and a text file named .JPEG (the last two unreadable).
"""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing
import os
from pathlib import Path

import numpy as np
from PIL import Image


def draw_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height) like ImageNet's: 60% exactly 500x375 or 375x500, the rest log-normal."""
    if rng.random() < 0.6:
        return (500, 375) if rng.random() < 0.75 else (375, 500)
    short = int(np.clip(rng.lognormal(math.log(360), 0.35), 120, 1200))
    ratio = float(np.clip(rng.lognormal(math.log(1.33), 0.15), 1.0, 2.0))
    long = int(short * ratio)
    return (long, short) if rng.random() < 0.75 else (short, long)


def natural_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 with a roughly 1/f amplitude spectrum and some hard edges."""
    img = np.zeros((height, width, 3), np.float32)
    base = rng.uniform(0.2, 0.8, size=3).astype(np.float32)
    scale, amp = 4, 0.5
    while scale <= max(width, height):
        h, w = max(2, height * scale // max(width, height)), max(2, width * scale // max(width, height))
        lum = rng.standard_normal((h, w)).astype(np.float32)
        chroma = rng.standard_normal((h, w, 3)).astype(np.float32) * 0.35
        layer = lum[..., None] + chroma
        up = np.stack(
            [np.asarray(Image.fromarray(layer[..., c]).resize((width, height), Image.BICUBIC)) for c in range(3)], -1
        )
        img += amp * up
        scale, amp = scale * 2, amp * 0.7
    img = base + 0.15 * img + 0.07 * rng.standard_normal((height, width, 1), dtype=np.float32)  # sensor grain
    for _ in range(rng.integers(2, 6)):  # a few flat-coloured shapes: edges JPEG must spend bits on
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1, y1 = x0 + rng.integers(width // 8, width // 2), y0 + rng.integers(height // 8, height // 2)
        img[y0:y1, x0:x1] = 0.5 * img[y0:y1, x0:x1] + 0.5 * rng.uniform(0, 1, size=3)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_odd_files(folder: Path, rng: np.random.Generator) -> list[Path]:
    """The files a pipeline must handle besides RGB JPEGs (two decodable other ways, two unreadable)."""
    rgb = Image.fromarray(natural_image(rng, 500, 375))
    paths = [folder / n for n in ("odd_png.JPEG", "odd_cmyk.JPEG", "odd_gray.JPEG", "odd_truncated.JPEG")]
    rgb.save(paths[0], format="PNG")  # ImageNet has one PNG named .JPEG (n02105855_2933.JPEG)
    rgb.convert("CMYK").save(paths[1], quality=90)  # ... and 22 CMYK JPEGs
    rgb.convert("L").save(paths[2], quality=90)  # ... and grayscale ones
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=90)
    paths[3].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    text = folder / "odd_text.JPEG"
    text.write_text("not an image\n")
    return [*paths, text]


def write_one(job: tuple) -> int:
    """One image of the tree, from its own seed (so the tree does not depend on --jobs); its size in bytes."""
    root, i, classes, quality, seed = job
    rng = np.random.default_rng(seed)
    cls = f"class{i % classes:03d}"
    path = root / cls / f"{cls}_{i:06d}.JPEG"
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = draw_size(rng)
    Image.fromarray(natural_image(rng, w, h)).save(path, quality=quality)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="root of the tree: OUT/train/CLASS/*.JPEG, OUT/val/CLASS/*.JPEG")
    p.add_argument("--images", type=int, default=3000, help="training images (default 3000)")
    p.add_argument("--val-images", type=int, default=500, help="validation images (default 500)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="processes (default: every CPU)")
    p.add_argument("--odd", action=argparse.BooleanOptionalAction, default=True, help="add PNG/CMYK/gray/corrupt")
    args = p.parse_args(argv)
    jobs = [
        (args.out / split, i, args.classes, args.quality, (args.seed, s, i))
        for s, (split, n) in enumerate((("train", args.images), ("val", args.val_images)))
        for i in range(n)
    ]
    with multiprocessing.Pool(args.jobs) as pool:
        total_bytes = sum(pool.imap_unordered(write_one, jobs, chunksize=16))
    rng = np.random.default_rng(args.seed)
    if args.odd:
        write_odd_files(args.out / "train" / "class000", rng)
    n = args.images + args.val_images
    print(f"{args.out}: {n} JPEGs, {total_bytes / n / 1e3:.0f} KB each on average" + (", + 5 odd files" * args.odd))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
