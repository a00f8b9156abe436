"""Image files and the views of the paper's ImageNet recipe, shared by every ImageNet source.

Below `imagenet.py` (the DataLoader sources), `dali.py` and `device_decode.py`, which all import from
here and never from each other: reading and decoding a file (`read_bytes`, `decode_image`), the
geometry of a view (`resized_size`, `resized_crop`, `center_view`, `test_resize`), the scan of a
`SPLIT/CLASS/IMAGE` folder, the AlexNet PCA lighting and the `TrainRecipe` every training source takes.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
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


def read_image(path: str, *, channels: int = 3) -> Tensor:
    """Decode an image file to uint8 (channels, H, W), RGB or grey (`pil_array`); an unreadable file
    is a UserError naming it."""
    return decode_image(read_bytes(path), path, channels=channels)[0]


MAX_IMAGE_BYTES = 256 * 2**20  # the largest sane image file (a 16k x 16k 8-bit RGB PNG stored raw is 768 MiB,
# but no photograph's JPEG or PNG comes near 256 MiB): a larger file is refused before it is read


def read_bytes(path: str, *, limit: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of an image file (`open_image`), at most `limit` of them."""
    with open_image(path, limit=limit) as f:
        try:
            # read(n) allocates n bytes up front: ask for the size fstat gave, +1 to see a file that grew
            # (or one that reports size 0, as /proc's do); the rest, if any, in chunks up to the limit
            size = os.fstat(f.fileno()).st_size
            data = f.read(size + 1)
            while size < len(data) <= limit and (chunk := f.read(1 << 20)):
                data += chunk
        except OSError as e:
            raise UserError(f"cannot read image {path} ({type(e).__name__}): {e.strerror or e}") from None
    if len(data) > limit:
        raise UserError(_too_big(path, limit))
    return data


def open_image(path: str, *, limit: int = MAX_IMAGE_BYTES) -> io.BufferedReader:
    """An image file opened for reading: a regular file (a link to one is fine) of at most `limit` bytes.

    Opened non-blocking and checked with fstat before the first read: a FIFO named `*.jpg` would
    block the read forever and a link to /dev/zero would read until memory runs out; both are
    refused in one line naming the file, as is a file over the limit."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise UserError(f"cannot read image {path} ({type(e).__name__}): {e.strerror or e}") from None
    f = os.fdopen(fd, "rb")
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
        f.close()
        if st.st_size > limit and stat.S_ISREG(st.st_mode):
            raise UserError(_too_big(path, limit))
        raise UserError(f"cannot read image {path}: {_file_kind(st.st_mode)}, not a regular file")
    return f


def _too_big(path: str, limit: int) -> str:
    most = f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit} bytes"
    return f"cannot read image {path}: larger than {most}, the most an image file may hold"


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))  # fmt: skip
    return next((name for test, name in kinds if test(mode)), "a special file")


def decode_image(
    data: bytes, name: str, *, at_least: tuple[int, int] | None = None, channels: int = 3
) -> tuple[Tensor, tuple[int, int]]:
    """Encoded bytes -> (uint8 (channels, h, w), RGB or grey, the full (H, W) of the file).

    RGB and grayscale JPEGs wanted as RGB go through `torchvision.io.decode_jpeg` (libjpeg-turbo
    straight into a tensor: measured faster than PIL + conversion, benchmarks/README.md). When
    `at_least` = (h, w) allows it, the JPEG is decoded at 1/2, 1/4 or 1/8 size in the DCT domain (PIL
    `draft`), which costs a fraction of a full decode; the result is never smaller than `at_least`, so
    it is still downscaled (antialiased) afterwards. Everything else (PNG, CMYK JPEGs, grey output,
    ...) goes through PIL and `pil_array`, the one mode-aware conversion every reader shares. The
    tensor has channels-last strides (as decoded), which is what the fast uint8 resize kernels want.
    A file neither can decode is a UserError naming it (`open_pil`).
    """
    with open_pil(data, name) as im:  # reads the header only
        full = (im.height, im.width)
        jpeg = im.format == "JPEG"
        reduce = _dct_reduction(full, at_least) if jpeg else 1
        if not (jpeg and im.mode in ("RGB", "L") and reduce == 1 and channels == 3):
            if reduce > 1:
                im.draft(im.mode if channels == 1 else "RGB", (at_least[1], at_least[0]))
            return torch.from_numpy(pil_array(im, name, grey=channels == 1)).permute(2, 0, 1), full
    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec's; still the fast one
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB), full
    except Exception:  # decode_jpeg: RuntimeError on corrupt data; whatever it raises, the file is unreadable
        raise UserError(f"cannot read image {name}: corrupt or not an image") from None


@contextlib.contextmanager
def open_pil(data: bytes, name: str) -> Iterator[Image.Image]:
    """PIL's image of `data` (the header read; pixels are decoded when asked for, inside the block).
    A failure to open or decode it there is a one-line UserError naming `name`: an image over PIL's
    decompression-bomb limit says so (it is refused, not broken); anything else is "corrupt or not an
    image". Every reader of image files opens them here (both recipes, evaluate, predict)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            yield im
    except Image.DecompressionBombError as e:
        raise UserError(_bomb(name, e)) from None
    except UserError:  # pil_array's refusal of a pixel range, already one line
        raise
    except Exception:
        # UnidentifiedImageError, truncated data, a bad header; a format PIL half-recognises raises what
        # its plugin happens to raise (a SPIDER image from a stack: AttributeError). Whatever it is, the
        # file is unreadable, not our bug.
        raise UserError(f"cannot read image {name}: corrupt or not an image") from None


def _bomb(name: str, e: Exception) -> str:
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(e))
    size = f"{int(found[1]):,} pixels, over the {int(found[2]):,}" if found else "more pixels than the"
    return (
        f"cannot read image {name}: {size} PIL decodes at most (its decompression-bomb guard); "
        "refused unread, not corrupt: shrink the image or leave it out"
    )


def is_grey(mode: str) -> bool:
    """A PIL mode without colour: 1-bit, 8-bit (with alpha), 16/32-bit integer, 32-bit float."""
    return mode in ("1", "L", "LA", "La", "F") or mode.startswith("I")


def pil_array(im: Image.Image, name: str, *, grey: bool = False) -> np.ndarray:
    """A PIL image -> uint8 (H, W, 3), or (H, W, 1) with `grey`, scaled by the range its mode really
    has. PIL's convert("RGB") or ("L") clips 16-bit grey (mode I;16, or I from a 16-bit PNG) at 255 and
    truncates float pixels (mode F) to 0 or 1: a white image, a black one, and a confident prediction
    on either. 16-bit values are divided by 257 (65535 -> 255), floats in [0, 1] multiplied by 255;
    any other integer or float image is refused in one line naming the file, its mode and its range.
    Colour to grey is PIL's ITU-R 601-2 luma (convert("L")), for training, evaluate and predict alike."""
    mode = im.mode
    if not (mode.startswith("I") or mode == "F"):
        a = np.array(im.convert("L" if grey else "RGB"))  # 8-bit modes (16-bit RGB PNGs PIL reads as RGB >> 8)
        return a[..., None] if grey else a
    a = np.asarray(im)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    sixteen = mode.startswith("I;16") or (mode == "I" and im.format in ("PNG", "PPM") and lo >= 0 and hi <= 65535)
    if sixteen:
        scaled = np.rint(a.astype(np.float64) / 257.0)
    elif mode == "F" and np.isfinite(a).all() and lo >= 0.0 and hi <= 1.0:
        scaled = np.rint(a.astype(np.float64) * 255.0)
    else:
        kind = "32-bit float" if mode == "F" else "integer"
        raise UserError(
            f"cannot read image {name}: mode {mode} ({kind} pixels from {lo:g} to {hi:g}) has no known 8-bit "
            "range (read: 8-bit, 16-bit integer, float in [0, 1]); save it as 8-bit"
        )
    return np.repeat(scaled.astype(np.uint8)[..., None], 1 if grey else 3, axis=2)


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


def scan_split(root: str | Path, class_to_idx: dict[str, int], *, twice: list[str] | None = None) -> list[Sample]:
    """(path, label) of every image under root/CLASS/ for the given classes, in ImageFolder's order
    (`find_images` per class, classes sorted). A missing folder is fine (a split may hold a subset of
    the classes); a folder without a single image is a UserError.

    A file reached twice within a class (a second link to it, a hard link) counts once, at its first
    path; the other paths are appended to `twice` when given. A file reached from two classes would
    be one image with two labels: a UserError naming both paths."""
    samples: list[Sample] = []
    first: dict[tuple[int, int], tuple[str, int]] = {}  # file identity -> (first path, label)
    for name in sorted(class_to_idx):
        label = class_to_idx[name]
        for path, key in _find_images(os.path.join(str(root), name)):
            if key is not None and key in first:
                other, other_label = first[key]
                if other_label != label:
                    raise UserError(
                        f"{path} and {other} are the same file in two classes; "
                        "an image has one label: remove one of them"
                    )
                if twice is not None:
                    twice.append(path)
                continue
            if key is not None:
                first[key] = (path, label)
            samples.append((path, label))
    seen = {label for _, label in samples}
    empty = [c for c, i in class_to_idx.items() if i not in seen and (Path(root) / c).is_dir()]
    if empty:
        raise UserError(
            f"{Path(root) / empty[0]} holds no images ({', '.join(IMG_EXTENSIONS)}); add them or remove the folder"
        )
    return samples


def find_images(folder: str | Path) -> list[str]:
    """Every file below `folder` named like an image (IMG_EXTENSIONS), in ImageFolder's order (folders
    sorted by path, files by name), a file reached twice listed once. See `_find_images`."""
    seen: set[tuple[int, int]] = set()
    out = []
    for path, key in _find_images(str(folder)):
        if key is not None and key in seen:
            continue
        if key is not None:
            seen.add(key)
        out.append(path)
    return out


def _find_images(top: str) -> list[tuple[str, tuple[int, int] | None]]:
    """(path, file identity (st_dev, st_ino) or None if it has none) of every entry below `top` named
    like an image that is not a folder, in ImageFolder's order: torchvision's make_dataset is
    `sorted(os.walk(top, followlinks=True))`, files sorted in each folder.

    Unlike that walk, a linked folder is entered once at most: a folder already entered (by its
    identity) is not entered again, so a link cycle (`a/loop -> ..`) ends there instead of listing
    every image forty times over. Entries that are not regular files (a FIFO, a device, a dangling
    link) stay in the list, so that reading them refuses them by name (`read_bytes`) rather than
    dropping them unseen."""
    folders: list[tuple[str, list[tuple[str, tuple[int, int] | None]]]] = []
    entered: set[tuple[int, int]] = set()
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in entered or not stat.S_ISDIR(st.st_mode):
                continue
            entered.add((st.st_dev, st.st_ino))
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue  # a folder that cannot be listed holds no images (as os.walk has it)
        files, subfolders = [], []
        for e in entries:
            if _is_dir(e):
                subfolders.append(e.path)
            elif e.name.lower().endswith(IMG_EXTENSIONS):
                files.append((e.path, _identity(e, st.st_dev)))
        folders.append((d, files))
        stack.extend(reversed(subfolders))  # depth first, in name order
    folders.sort(key=lambda f: f[0])
    return [f for _, files in folders for f in files]


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows a link
    except OSError:
        return False


# Inode numbers a listing gives when it does not know them: libfuse without `use_ino` (sshfs and the
# like) lists every entry as FUSE_UNKNOWN_INO, which would make every image "the same file".
UNKNOWN_INODES = frozenset({0, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF})


def _identity(entry: os.DirEntry, device: int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file an entry is or links to, from the listing where it can (no stat
    call per file); None for a dangling link."""
    try:
        if not entry.is_symlink() and entry.inode() not in UNKNOWN_INODES:
            return device, entry.inode()
        st = entry.stat()
        return st.st_dev, st.st_ino
    except OSError:
        return None


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
    flip: bool = True  # data.flip=false: crops without their mirror images
