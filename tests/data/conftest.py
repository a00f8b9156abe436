"""A tiny CIFAR-10 written in the official format (pickled batches in cifar-10-batches-py/, .tar.gz)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PER_BATCH = 20  # 5 training batches -> 100 training images; 20 test images


def _batch(rng: np.random.Generator, n: int) -> dict:
    # The official layout: "data" (n, 3072) uint8 rows, each R plane then G then B, row-major 32x32.
    # Keys are str, as the official Python 2 pickles read with encoding="latin1" give.
    return {
        "batch_label": "synthetic",
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        "labels": [int(v) for v in rng.integers(0, 10, size=n)],
        "filenames": [f"img{i}.png" for i in range(n)],
    }


def write_cifar10_archive(path: Path, seed: int = 0) -> dict:
    """Write the archive; return {"train": [batches], "test": batch, "md5": hex} to compare against."""
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{i}": _batch(rng, PER_BATCH) for i in range(1, 6)}
    batches["test_batch"] = _batch(rng, PER_BATCH)
    batches["batches.meta"] = {"label_names": CLASSES, "num_vis": 3072}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in batches.items():
            blob = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    return {"train": [batches[f"data_batch_{i}"] for i in range(1, 6)], "test": batches["test_batch"], "md5": md5}


@pytest.fixture
def cifar10_writer():
    """`write_cifar10_archive` itself, for tests that place the archive somewhere else."""
    return write_cifar10_archive


def make_official(monkeypatch, name: str, archive: Path) -> None:
    """Tell the reader to expect `archive`'s MD5 and the MD5s of the files in it, as it expects the
    official ones (what the test writes is the real format, but not the real bytes)."""
    from resnetlab.data import readers

    with tarfile.open(archive) as tar:
        files = {Path(m.name).name: hashlib.md5(tar.extractfile(m).read()).hexdigest() for m in tar if m.isfile()}
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    spec = dataclasses.replace(readers.CIFAR_ARCHIVES[name], md5=md5, file_md5=files)
    monkeypatch.setitem(readers.CIFAR_ARCHIVES, name, spec)


@pytest.fixture
def cifar10_dir(tmp_path, monkeypatch):
    """data.dir holding a tiny official-format CIFAR-10 archive whose MD5s the reader is told to expect."""
    written = write_cifar10_archive(tmp_path / "cifar-10-python.tar.gz")
    make_official(monkeypatch, "cifar10", tmp_path / "cifar-10-python.tar.gz")
    return tmp_path, written


@pytest.fixture
def official_cifar(monkeypatch):
    """`make_official(name, archive)` for tests that write their own archive."""
    return lambda name, archive: make_official(monkeypatch, name, archive)
