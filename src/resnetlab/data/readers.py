"""Readers for the small datasets: CIFAR-10/100, MNIST, Fashion-MNIST -> uint8 tensors (N,C,H,W).

Parsing is torchvision's (`torchvision.datasets.*`, `download=False`); this module only makes sure
the files are where torchvision looks, fetching or unpacking them first, and turns every "not
there" into a `UserError` that says which files go where.

Layout under `data.dir` (torchvision's):
  cifar10        cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}  or  cifar-10-python.tar.gz
  cifar100       cifar-100-python/{train,test,meta}                             or  cifar-100-python.tar.gz
  mnist          MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
  fashion-mnist  FashionMNIST/raw/ (same names), else /usr/share/datasets/fashion-mnist/ (Debian)
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor

from resnetlab.data.archive import check_md5, download, safe_extract
from resnetlab.errors import UserError


@dataclass
class Split:
    images: Tensor  # (N,C,H,W) uint8, CPU
    labels: Tensor  # (N,) int64


@dataclass
class RawDataset:
    train: Split
    test: Split
    classes: list[str]


@dataclass(frozen=True)
class CifarArchive:
    title: str
    url: str
    md5: str
    folder: str  # what the archive unpacks to
    files: tuple[str, ...]  # expected inside `folder`

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# The official archives (https://www.cs.toronto.edu/~kriz/cifar.html) and their published MD5s.
CIFAR_ARCHIVES = {
    "cifar10": CifarArchive(
        "CIFAR-10",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
    ),
    "cifar100": CifarArchive(
        "CIFAR-100",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
        ("train", "test", "meta"),
    ),
}

# Debian/Ubuntu: `apt install dataset-fashion-mnist` puts the four .gz files here.
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# We check the archive's MD5 before unpacking it, so the per-file MD5s torchvision checks again
# (official files only) are cleared: that also lets a test write its own small archive.
class _CIFAR10(torchvision.datasets.CIFAR10):
    train_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.test_list]
    meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}


class _CIFAR100(torchvision.datasets.CIFAR100):
    train_list = [[name, None] for name, _ in torchvision.datasets.CIFAR100.train_list]
    test_list = [[name, None] for name, _ in torchvision.datasets.CIFAR100.test_list]
    meta = {**torchvision.datasets.CIFAR100.meta, "md5": None}


def ensure_cifar(name: str, root: Path, download_ok: bool) -> None:
    """Make `root/<folder>` complete: unpack `root/<archive>` (downloaded first if allowed)."""
    spec = CIFAR_ARCHIVES[name]
    folder, archive = root / spec.folder, root / spec.filename
    if all((folder / f).is_file() for f in spec.files):
        return
    where = (
        f"{spec.title} not found in {root} (data.dir): put the official archive {spec.filename} there "
        f"(MD5 {spec.md5}; e.g. `curl -L -o {archive} {spec.url}` on a machine with internet) "
        f"or its unpacked folder {spec.folder}/ ({', '.join(spec.files)})"
    )
    if not archive.is_file():
        if not download_ok:
            raise UserError(f"{where}; or run with data.download=true")
        try:
            download(spec.url, archive)
        except UserError as e:
            raise UserError(f"{e}; offline? {where}") from None
    check_md5(archive, spec.md5)
    safe_extract(archive, root)
    missing = [f for f in spec.files if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{archive}: unpacked, but {folder} lacks {', '.join(missing)}")


def _cifar_split(ds: torchvision.datasets.CIFAR10) -> Split:
    images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))  # (N,H,W,C) -> (N,C,H,W)
    return Split(images, torch.as_tensor(ds.targets, dtype=torch.int64))


def read_cifar(name: str, root: Path, download_ok: bool) -> RawDataset:
    ensure_cifar(name, root, download_ok)
    cls = _CIFAR10 if name == "cifar10" else _CIFAR100
    try:
        train, test = cls(str(root), train=True), cls(str(root), train=False)
    except (RuntimeError, OSError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as e:
        folder = root / CIFAR_ARCHIVES[name].folder
        raise UserError(f"{folder}: cannot read ({e.__class__.__name__}: {e}); delete it to unpack again") from None
    return RawDataset(_cifar_split(train), _cifar_split(test), list(train.classes))


def _gunzip(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    # One temporary name per process: several runs starting at once (reproduce --jobs-per-gpu) each
    # unpack, and each rename is atomic, so every reader sees a whole file (a shared name raced on an H200).
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    with gzip.open(src, "rb") as f, open(tmp, "wb") as out:
        shutil.copyfileobj(f, out)
    tmp.replace(dest)


def ensure_mnist(name: str, root: Path, download_ok: bool) -> None:
    """Make `root/<MNIST|FashionMNIST>/raw/` hold the four idx files torchvision reads.

    Sources, in order: the files themselves; their .gz in the same folder; for Fashion-MNIST the
    Debian package's copy; torchvision's download (when allowed)."""
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    raw = root / cls.__name__ / "raw"
    sources = [raw] + ([FASHION_MNIST_SYSTEM_DIR] if name == "fashion-mnist" else [])
    try:
        for f in MNIST_FILES:
            if (raw / f).is_file():
                continue
            src = next((d / f"{f}.gz" for d in sources if (d / f"{f}.gz").is_file()), None)
            if src is not None:
                _gunzip(src, raw / f)
    except (OSError, EOFError) as e:
        raise UserError(f"cannot unpack {name} into {raw}: {e}") from None
    if all((raw / f).is_file() for f in MNIST_FILES):
        return
    title = "MNIST" if name == "mnist" else "Fashion-MNIST"
    where = (
        f"{title} not found: put {', '.join(MNIST_FILES)} (or the same names + .gz, e.g. "
        f"`curl -L -O {cls.mirrors[0]}{MNIST_FILES[0]}.gz`, and the same for the other three) in {raw}"
    )
    if name == "fashion-mnist":
        where += f"; or `apt install dataset-fashion-mnist` (Debian/Ubuntu; files in {FASHION_MNIST_SYSTEM_DIR})"
    if not download_ok:
        raise UserError(f"{where}; or run with data.download=true")
    try:
        cls(str(root), train=True, download=True)
    except (RuntimeError, OSError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1].strip()  # torchvision: the last error
        raise UserError(f"could not download {title} ({reason}); offline? {where}") from None


def read_mnist(name: str, root: Path, download_ok: bool) -> RawDataset:
    ensure_mnist(name, root, download_ok)
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    splits = []
    try:
        for train in (True, False):
            ds = cls(str(root), train=train)
            splits.append(Split(ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)))
    except (RuntimeError, OSError, AssertionError, ValueError) as e:
        raise UserError(f"{root / cls.__name__ / 'raw'}: cannot read ({e.__class__.__name__}: {e})") from None
    return RawDataset(splits[0], splits[1], list(cls.classes))


READERS = {"cifar10": read_cifar, "cifar100": read_cifar, "mnist": read_mnist, "fashion-mnist": read_mnist}
