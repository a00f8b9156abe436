"""Image files and the views of the paper's ImageNet recipe, shared by every ImageNet source.

Below `imagenet.py` (the DataLoader sources), `dali.py` and `device_decode.py`, which all import from
here and never from each other: reading and decoding a file (`read_bytes`, `decode_image`), the
geometry of a view (`resized_size`, `resized_crop`, `center_view`, `test_resize`), the scan of a
`SPLIT/CLASS/IMAGE` folder, the AlexNet PCA lighting and the `TrainRecipe` every training source takes.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from resnetlab.errors import UserError

# AlexNet "standard color augmentation": PCA of ImageNet's RGB pixels (values from fb.resnet.torch).
IMAGENET_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = torch.tensor(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ]
)

Sample = tuple[str, int]  # (path, class index)


# ---- files and views ----------------------------------------------------------------------------


def read_image(path: str) -> Tensor:
    """Decode an image file to uint8 RGB (3, H, W); an unreadable file is a UserError naming it."""
    return decode_image(read_bytes(path), path)[0]


def read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UserError(f"cannot read image {path} ({type(e).__name__}): {e.strerror or e}") from None


def decode_image(data: bytes, name: str, *, at_least: tuple[int, int] | None = None) -> tuple[Tensor, tuple[int, int]]:
    """Encoded bytes -> (uint8 RGB (3, h, w), the full (H, W) of the file).

    RGB and grayscale JPEGs go through `torchvision.io.decode_jpeg` (libjpeg-turbo straight into a
    tensor: measured faster than PIL + conversion, benchmarks/README.md). When `at_least` = (h, w)
    allows it, the JPEG is decoded at 1/2, 1/4 or 1/8 size in the DCT domain (PIL `draft`), which
    costs a fraction of a full decode; the result is never smaller than `at_least`, so it is still
    downscaled (antialiased) afterwards. Everything else (PNG, CMYK JPEGs, ...) goes through PIL, as
    torchvision's ImageFolder reads it. The tensor has channels-last strides (as decoded), which is
    what the fast uint8 resize kernels want. A file neither can decode is a UserError naming it.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            full = (im.height, im.width)
            jpeg = im.format == "JPEG"
            reduce = _dct_reduction(full, at_least) if jpeg else 1
            if not (jpeg and im.mode in ("RGB", "L") and reduce == 1):
                if reduce > 1:
                    im.draft("RGB", (at_least[1], at_least[0]))
                return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1), full
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec's; still the fast one
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB), full
    except (OSError, RuntimeError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL: UnidentifiedImageError / OSError (truncated); decode_jpeg: RuntimeError (corrupt data)
        raise UserError(f"cannot read image {name} ({type(e).__name__}): corrupt or not an image") from None


def _dct_reduction(full: tuple[int, int], at_least: tuple[int, int] | None) -> int:
    """The largest of 8, 4, 2, 1 that keeps a JPEG of size `full` at least `at_least` when decoded
    reduced: PIL's `draft` rule (r <= H // h and r <= W // w), which `draft` then applies itself."""
    if at_least is None:
        return 1
    return next((r for r in (8, 4, 2) if full[0] >= r * at_least[0] and full[1] >= r * at_least[1]), 1)


def resized_size(hw: tuple[int, int], shorter: int) -> tuple[int, int]:
    """(H, W) after resizing the shorter side to `shorter`, aspect kept, as torchvision's resize rounds."""
    h, w = hw
    if h <= w:
        return shorter, int(shorter * w / h)
    return int(shorter * h / w), shorter


def resized_crop(img: Tensor, resized: tuple[int, int], top: int, left: int, crop: int) -> Tensor:
    """(C, h, w) -> (C, crop, crop): `img` resized to `resized` = (H', W') (antialiased bilinear), then
    the crop x crop window at (top, left). uint8 on the CPU (torch's uint8 kernel, faster than PIL's
    resize: benchmarks/README.md); float on other devices, rounded back to uint8. Resizing only the
    crop's window measured no faster on ImageNet-sized images (1.15 against 1.18 ms per image, within
    noise), so the view is exactly resize-then-crop's."""
    x = img if img.device.type == "cpu" else img.float()
    out = TF.resize(x, list(resized), antialias=True)[:, top : top + crop, left : left + crop]
    return out if out.dtype == img.dtype else out.round_().clamp_(0, 255).to(img.dtype)


def test_resize(crop: int) -> int:
    """Shorter side of the test view: 256 for the paper's 224 crop, the same ratio for other crops."""
    return round(crop * 256 / 224)


def resize_shorter(img: Tensor, size: int) -> Tensor:
    """(C, H, W) -> (C, h, w) with min(h, w) = size, aspect ratio kept (bilinear, antialiased)."""
    return TF.resize(img, [size], antialias=True)


def center_view(img: Tensor, crop: int, resize: int | None = None) -> Tensor:
    """The single test view: shorter side `resize`, then the central crop x crop (resize-then-crop,
    exactly torchvision's: the view the paper's numbers are compared on)."""
    return TF.center_crop(resize_shorter(img, resize or test_resize(crop)), [crop, crop])


def scan_split(root: str | Path, class_to_idx: dict[str, int]) -> list[Sample]:
    """(path, label) of every image under root/CLASS/ for the given classes. A missing folder is fine
    (a split may hold a subset of the classes); a folder without a single image is a UserError."""
    samples = make_dataset(str(root), class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    seen = {label for _, label in samples}
    empty = [c for c, i in class_to_idx.items() if i not in seen and (Path(root) / c).is_dir()]
    if empty:
        raise UserError(
            f"{Path(root) / empty[0]} holds no images ({', '.join(IMG_EXTENSIONS)}); add them or remove the folder"
        )
    return samples


def split_classes(root: str | Path) -> list[str]:
    """Sorted class folder names of one split (ImageFolder's order); a missing/empty split is a UserError."""
    if not Path(root).is_dir():
        raise UserError(f"{root} does not exist (expected an ImageFolder split: {root}/CLASS/IMAGE.JPEG)")
    try:
        classes, _ = find_classes(str(root))
    except FileNotFoundError:
        raise UserError(f"{root} has no class folders (expected {root}/CLASS/IMAGE.JPEG)") from None
    return classes


def lighting_shift(alpha: Tensor) -> Tensor:
    """AlexNet PCA colour noise: (N, 3) draws alpha ~ N(0, std) -> (N, 3) RGB shift eigvec @ (alpha * eigval),
    added to every pixel of the [0, 1] image (fb.resnet.torch's `Lighting`)."""
    return (alpha * IMAGENET_EIGVAL.to(alpha)) @ IMAGENET_EIGVEC.to(alpha).T


@dataclass(frozen=True)
class TrainRecipe:
    """What every ImageNet training source (DataLoader or DALI) is asked for: the global batch of one
    iteration, the seed of its order and draws, the crop, the range of the shorter side, the PCA
    lighting std, the decoding processes (or threads), unreadable files skipped or not, this process's
    share of the batch."""

    batch_size: int
    seed: int
    crop: int
    scale: tuple[int, int]
    lighting: float
    workers: int
    skip_corrupt: bool
    rank: int = 0
    world_size: int = 1
