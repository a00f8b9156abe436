"""Readers for the small datasets: CIFAR-10/100, MNIST, Fashion-MNIST -> uint8 tensors (N,C,H,W).

MNIST parsing is torchvision's (`download=False`); CIFAR batches are pickles, so they are checked
against their official MD5 and read by our restricted unpickler (`cifar_pickle.py`), never by
`pickle.load`. This module makes sure the files are where torchvision looks, fetching or unpacking
them first, and turns every "not there" into a `UserError` that says which files go where.

Layout under `data.dir` (torchvision's):
  cifar10        cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}  or  cifar-10-python.tar.gz
  cifar100       cifar-100-python/{train,test,meta}                             or  cifar-100-python.tar.gz
  mnist          MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]
  fashion-mnist  FashionMNIST/raw/ (same names), else /usr/share/datasets/fashion-mnist/ (Debian)
"""

from __future__ import annotations

import gzip
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor

from resnetlab.data.archive import check_md5, download, md5sum, safe_extract
from resnetlab.data.cifar_pickle import RefusedPickle, load_cifar_pickle
from resnetlab.errors import UserError, one_line


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
    file_md5: dict[str, str]  # the official MD5 of every file inside `folder`
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str  # the labels in each batch
    names_key: str  # the class names in the meta file

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, self.test, self.meta)


# The official archives (https://www.cs.toronto.edu/~kriz/cifar.html), their published MD5s and
# the MD5 of each file in them (the same values torchvision's CIFAR10/CIFAR100 check; a test compares).
CIFAR_ARCHIVES = {
    "cifar10": CifarArchive(
        "CIFAR-10",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py",
        {
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": CifarArchive(
        "CIFAR-100",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python",
        {
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
        ("train",),
        "test",
        "meta",
        "fine_labels",
        "fine_label_names",
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
# Where data.download=true fetches the .gz files, over https only (torchvision's Fashion-MNIST mirror is
# http): the publisher's own repository for Fashion-MNIST, torchvision's https mirror for MNIST. The
# MD5 of each file is the publisher's, as torchvision lists them (`resources`).
MNIST_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
}


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
            download(spec.url, archive, md5=spec.md5)
        except UserError as e:
            raise UserError(f"{one_line(e)}; offline? {where}") from None
    check_md5(archive, spec.md5)
    safe_extract(archive, root)
    missing = [f for f in spec.files if not (folder / f).is_file()]
    if missing:
        raise UserError(f"{archive}: unpacked, but {folder} lacks {', '.join(missing)}")


def _read_batch(path: Path, expected_md5: str) -> dict:
    """One CIFAR file, checked against its official MD5 first, then read by the restricted
    unpickler (a pickle is a program: nothing outside the batch format is ever built)."""
    try:
        actual = md5sum(path)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if actual != expected_md5:
        raise UserError(
            f"{path}: not the official file (MD5 {actual}, expected {expected_md5}); refusing to read it: "
            f"delete {path.parent} and unpack the official archive again"
        )
    try:
        return load_cifar_pickle(path.read_bytes())
    except RefusedPickle as e:
        raise UserError(f"{path}: refusing to read it: {one_line(e)}") from None
    except Exception as e:  # truncated, not a pickle, a pickle of something else
        raise UserError(f"{path}: cannot read a CIFAR batch ({e.__class__.__name__}: {one_line(e)})") from None


def _cifar_split(spec: CifarArchive, folder: Path, files: tuple[str, ...]) -> Split:
    images, labels = [], []
    for f in files:
        batch = _read_batch(folder / f, spec.file_md5[f])
        data, ys = batch.get("data"), batch.get(spec.label_key)
        if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072 or not isinstance(ys, list):
            raise UserError(f"{folder / f}: not a CIFAR batch (needs 'data' (N, 3072) uint8 and '{spec.label_key}')")
        if len(ys) != len(data) or not all(isinstance(y, int) for y in ys):
            raise UserError(f"{folder / f}: {len(data)} images but {len(ys)} labels, or labels that are not integers")
        images.append(data)
        labels += ys
    # Each row is the R plane, then G, then B, each 32x32 row-major: (N, 3072) -> (N, C, H, W).
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate(images).reshape(-1, 3, 32, 32)))
    return Split(x, torch.tensor(labels, dtype=torch.int64))


def read_cifar(name: str, root: Path, download_ok: bool) -> RawDataset:
    ensure_cifar(name, root, download_ok)
    spec = CIFAR_ARCHIVES[name]
    folder = root / spec.folder
    train, test = _cifar_split(spec, folder, spec.train), _cifar_split(spec, folder, (spec.test,))
    classes = _read_batch(folder / spec.meta, spec.file_md5[spec.meta]).get(spec.names_key)
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{folder / spec.meta}: no list of class names under '{spec.names_key}'")
    bad = [y for y in (train.labels, test.labels) if len(y) and not (0 <= int(y.min()) and int(y.max()) < len(classes))]
    if bad:
        raise UserError(f"{folder}: labels outside 0..{len(classes) - 1}")
    return RawDataset(train, test, classes)


def _gunzip(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    # One temporary name per process: several runs starting at once (reproduce --jobs-per-gpu) each
    # unpack, and each rename is atomic, so every reader sees a whole file (a shared name raced on an H200).
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        with gzip.open(src, "rb") as f, open(tmp, "wb") as out:
            shutil.copyfileobj(f, out)
        tmp.replace(dest)
    except BaseException:  # a damaged .gz, a full disk, Ctrl-C: no part file left behind
        tmp.unlink(missing_ok=True)
        raise


def ensure_mnist(name: str, root: Path, download_ok: bool) -> None:
    """Make `root/<MNIST|FashionMNIST>/raw/` hold the four idx files torchvision reads.

    Sources, in order: the files themselves; their .gz in the same folder; for Fashion-MNIST the
    Debian package's copy; a download over https checked against the publisher's MD5 (when allowed)."""
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    raw = root / cls.__name__ / "raw"
    sources = [raw] + ([FASHION_MNIST_SYSTEM_DIR] if name == "fashion-mnist" else [])

    def unpack() -> list[str]:
        """Unpack what has a .gz in a source; the files still missing."""
        src = None
        try:
            for f in MNIST_FILES:
                if (raw / f).is_file():
                    continue
                src = next((d / f"{f}.gz" for d in sources if (d / f"{f}.gz").is_file()), None)
                if src is not None:
                    _gunzip(src, raw / f)
        except (OSError, EOFError, zlib.error) as e:  # EOFError, zlib.error: a .gz cut short or damaged
            damaged = src is not None and isinstance(e, (EOFError, zlib.error, gzip.BadGzipFile))
            why = f"{src} is damaged ({one_line(e)}): fetch it again" if damaged else one_line(e)
            raise UserError(f"cannot unpack {name} into {raw}: {why}") from None
        return [f for f in MNIST_FILES if not (raw / f).is_file()]

    missing = unpack()
    if not missing:
        return
    title = "MNIST" if name == "mnist" else "Fashion-MNIST"
    where = (
        f"{title} not found: put {', '.join(MNIST_FILES)} (or the same names + .gz, e.g. "
        f"`curl -L -O {MNIST_URLS[name]}{MNIST_FILES[0]}.gz`, and the same for the other three) in {raw}"
    )
    if name == "fashion-mnist":
        where += f"; or `apt install dataset-fashion-mnist` (Debian/Ubuntu; files in {FASHION_MNIST_SYSTEM_DIR})"
    if not download_ok:
        raise UserError(f"{where}; or run with data.download=true")
    md5s = dict(cls.resources)  # {"train-images-idx3-ubyte.gz": publisher's MD5, ...}
    for f in missing:
        try:
            download(MNIST_URLS[name] + f"{f}.gz", raw / f"{f}.gz", md5=md5s[f"{f}.gz"])
        except UserError as e:
            raise UserError(f"{one_line(e)}; offline? {where}") from None
    unpack()  # the downloaded .gz files are in raw/, the first source


def read_mnist(name: str, root: Path, download_ok: bool) -> RawDataset:
    ensure_mnist(name, root, download_ok)
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    splits = []
    try:
        for train in (True, False):
            ds = cls(str(root), train=train)
            splits.append(Split(ds.data.unsqueeze(1).contiguous(), ds.targets.to(torch.int64)))
    except (RuntimeError, OSError, AssertionError, ValueError) as e:
        raise UserError(f"{root / cls.__name__ / 'raw'}: cannot read ({e.__class__.__name__}: {one_line(e)})") from None
    return RawDataset(splits[0], splits[1], list(cls.classes))


READERS = {"cifar10": read_cifar, "cifar100": read_cifar, "mnist": read_mnist, "fashion-mnist": read_mnist}
