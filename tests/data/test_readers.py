"""Readers: files written here in the official formats come back pixel for pixel; missing -> UserError."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import torchvision

from resnetlab.config import load_config
from resnetlab.data import build_data, readers
from resnetlab.errors import UserError

CPU = torch.device("cpu")


def _cfg(data_dir, *extra):
    return load_config(None, [f"data.dir={data_dir}", "data.download=false", "train.batch_size=20", *extra])


# ---- CIFAR -------------------------------------------------------------------------------------


def test_cifar10_archive_loads_pixels_and_labels(cifar10_dir):
    root, written = cifar10_dir
    raw = readers.read_cifar("cifar10", root, download_ok=False)
    # Independent decoding of the official row layout: 1024 R, then 1024 G, then 1024 B, row-major.
    train = np.concatenate([b["data"] for b in written["train"]]).reshape(-1, 3, 32, 32)
    train_labels = sum((b["labels"] for b in written["train"]), [])
    assert raw.train.images.dtype == torch.uint8 and raw.train.images.shape == (100, 3, 32, 32)
    assert np.array_equal(raw.train.images.numpy(), train)
    assert raw.train.labels.tolist() == train_labels
    assert np.array_equal(raw.test.images.numpy(), written["test"]["data"].reshape(-1, 3, 32, 32))
    assert raw.test.labels.tolist() == written["test"]["labels"]
    assert raw.classes[:3] == ["airplane", "automobile", "bird"]
    # A second read uses the unpacked folder, even with the archive gone.
    (root / "cifar-10-python.tar.gz").unlink()
    assert torch.equal(readers.read_cifar("cifar10", root, download_ok=False).train.images, raw.train.images)


def test_cifar10_bundle_fields(cifar10_dir):
    root, _ = cifar10_dir
    b = build_data(_cfg(root), CPU)
    assert (b.num_classes, b.in_channels, b.image_size) == (10, 3, 32)
    assert len(b.train) == 100 and len(b.test) == 20
    assert b.meta["dataset"] == "cifar10" and b.meta["classes"] == b.classes and b.meta["std"] is None
    assert b.meta["mean"].shape == (3, 32, 32)


def test_cifar10_wrong_checksum(cifar10_dir, monkeypatch):
    root, written = cifar10_dir
    spec = readers.CIFAR_ARCHIVES["cifar10"]
    monkeypatch.setitem(readers.CIFAR_ARCHIVES, "cifar10", type(spec)(**{**spec.__dict__, "md5": "f" * 32}))
    with pytest.raises(UserError) as e:
        build_data(_cfg(root), CPU)
    msg = str(e.value)
    assert "cifar-10-python.tar.gz" in msg and "f" * 32 in msg and written["md5"] in msg
    assert not (root / "cifar-10-batches-py").exists()  # nothing unpacked from an unverified archive


def test_cifar10_missing_offline_says_where(tmp_path):
    with pytest.raises(UserError) as e:
        build_data(_cfg(tmp_path), CPU)
    msg = str(e.value)
    assert str(tmp_path) in msg and "cifar-10-python.tar.gz" in msg and "cifar-10-batches-py" in msg


def test_cifar10_download_fails_offline(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(UserError) as e:
        build_data(_cfg(tmp_path, "data.download=true"), CPU)
    assert "could not download" in str(e.value) and str(tmp_path) in str(e.value)
    assert not list(tmp_path.glob("*.part"))


def test_cifar10_download_then_verify(tmp_path, monkeypatch, cifar10_writer, official_cifar):
    """data.download=true fetches into data.dir (here from a file:// copy of our archive), then checks it."""
    src = tmp_path / "mirror"
    src.mkdir()
    cifar10_writer(src / "cifar-10-python.tar.gz")
    official_cifar("cifar10", src / "cifar-10-python.tar.gz")
    spec = readers.CIFAR_ARCHIVES["cifar10"]
    fake = type(spec)(**{**spec.__dict__, "url": (src / "cifar-10-python.tar.gz").as_uri()})
    monkeypatch.setitem(readers.CIFAR_ARCHIVES, "cifar10", fake)
    data_dir = tmp_path / "data"
    raw = readers.read_cifar("cifar10", data_dir, download_ok=True)
    assert (data_dir / "cifar-10-python.tar.gz").is_file() and len(raw.train.images) == 100


def test_cifar100_archive(tmp_path, official_cifar):
    rng = np.random.default_rng(1)
    fine = [f"class{i}" for i in range(100)]

    def split(n):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(range(n))}

    parts = {"train": split(30), "test": split(10), "meta": {"fine_label_names": fine, "coarse_label_names": []}}
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, obj in parts.items():
            blob = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    official_cifar("cifar100", archive)
    b = build_data(_cfg(tmp_path, "data.name=cifar100"), CPU)
    assert (b.num_classes, b.classes[5]) == (100, "class5")
    x = torch.cat([x for x, _ in b.test.batches()])
    assert x.shape == (10, 3, 32, 32)


# ---- MNIST / Fashion-MNIST ---------------------------------------------------------------------


def _idx(array: np.ndarray) -> bytes:
    """The idx format: 0, 0, type 0x08 (ubyte), ndim; big-endian int32 dims; the bytes."""
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(raw_dir, compress: bool, n_train=30, n_test=10):
    rng = np.random.default_rng(2)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    raw_dir.mkdir(parents=True)
    for name, a in arrays.items():
        blob = _idx(a)
        if compress:
            (raw_dir / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (raw_dir / name).write_bytes(blob)
    return arrays


@pytest.mark.parametrize("compress", [False, True], ids=["idx", "idx.gz"])
def test_mnist_idx_files(tmp_path, compress):
    arrays = _write_mnist(tmp_path / "MNIST" / "raw", compress)
    b = build_data(_cfg(tmp_path, "data.name=mnist"), CPU)
    assert (b.num_classes, b.in_channels, b.image_size, len(b.train), len(b.test)) == (10, 1, 28, 30, 10)
    raw = readers.read_mnist("mnist", tmp_path, download_ok=False)
    assert np.array_equal(raw.train.images.numpy(), arrays["train-images-idx3-ubyte"][:, None])
    assert raw.test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    x, y = next(b.train.batches(0))
    assert x.shape == (20, 1, 28, 28) and y.dtype == torch.int64
    assert b.train.flip is False  # a mirrored digit is not the same digit


def test_mnist_missing_offline_says_where(tmp_path):
    with pytest.raises(UserError) as e:
        build_data(_cfg(tmp_path, "data.name=mnist"), CPU)
    assert str(tmp_path / "MNIST" / "raw") in str(e.value) and "train-images-idx3-ubyte" in str(e.value)


def test_fashion_mnist_missing_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    with pytest.raises(UserError) as e:
        build_data(_cfg(tmp_path, "data.name=fashion-mnist"), CPU)
    assert str(tmp_path / "FashionMNIST" / "raw") in str(e.value) and "dataset-fashion-mnist" in str(e.value)


def test_fashion_mnist_download_fails_offline(tmp_path, monkeypatch):
    """The download failing: one UserError naming the https URL, no traceback, nothing left behind."""
    monkeypatch.setattr(readers, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(UserError, match="could not download https://raw.githubusercontent.com/zalandoresearch/"):
        build_data(_cfg(tmp_path, "data.name=fashion-mnist", "data.download=true"), CPU)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def _mnist_mirror(tmp_path, monkeypatch, name: str, *, damage: str | None = None) -> dict[str, np.ndarray]:
    """A file:// mirror of the four .gz files (our small idx files), with their MD5s as the publisher's;
    `damage` names one whose bytes then differ from its listed MD5."""
    mirror = tmp_path / "mirror"
    arrays = _write_mnist(mirror, compress=True)
    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    md5s = [(f"{f}.gz", hashlib.md5((mirror / f"{f}.gz").read_bytes()).hexdigest()) for f in readers.MNIST_FILES]
    if damage:
        with gzip.open(mirror / f"{damage}.gz", "ab") as f:
            f.write(b"tampered")
    monkeypatch.setattr(cls, "resources", md5s)
    monkeypatch.setitem(readers.MNIST_URLS, name, mirror.as_uri() + "/")
    monkeypatch.setattr(readers, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "nowhere")
    return arrays


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_mnist_download_checks_the_publishers_md5(tmp_path, monkeypatch, name):
    arrays = _mnist_mirror(tmp_path, monkeypatch, name)
    raw = readers.read_mnist(name, tmp_path / "data", download_ok=True)
    assert np.array_equal(raw.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(raw.test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_mnist_download_with_a_wrong_md5_leaves_nothing(tmp_path, monkeypatch):
    _mnist_mirror(tmp_path, monkeypatch, "fashion-mnist", damage="t10k-images-idx3-ubyte")
    data = tmp_path / "data"
    with pytest.raises(UserError, match=r"t10k-images-idx3-ubyte.gz but its MD5 is [0-9a-f]{32}, not the publisher"):
        readers.read_mnist("fashion-mnist", data, download_ok=True)
    raw = data / "FashionMNIST" / "raw"
    assert not (raw / "t10k-images-idx3-ubyte").exists() and not (raw / "t10k-images-idx3-ubyte.gz").exists()


def test_mnist_urls_are_https():
    assert all(url.startswith("https://") for url in readers.MNIST_URLS.values())


@pytest.mark.skipif(not readers.FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_debian_package(tmp_path):
    b = build_data(_cfg(tmp_path, "data.name=fashion-mnist", "train.batch_size=128"), CPU)
    assert (b.num_classes, b.in_channels, b.image_size, len(b.train), len(b.test)) == (10, 1, 28, 60000, 10000)
    assert b.classes[0] == "T-shirt/top"
    # Independent parse of the package's first test image and labels.
    with gzip.open(readers.FASHION_MNIST_SYSTEM_DIR / "t10k-images-idx3-ubyte.gz") as f:
        blob = f.read(16 + 28 * 28)
    first = np.frombuffer(blob[16:], dtype=np.uint8).reshape(1, 28, 28).copy()
    with gzip.open(readers.FASHION_MNIST_SYSTEM_DIR / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read()[8:], dtype=np.uint8)
    x, y = next(b.test.batches())
    mean, scale = b.meta["mean"], 1 / 255
    assert torch.allclose(x[0], torch.from_numpy(first).float() * scale - mean, atol=1e-5)
    assert torch.cat([y for _, y in b.test.batches()]).tolist() == labels.tolist()


def test_corrupt_cifar_batch_is_a_user_error(cifar10_dir):
    root, _ = cifar10_dir
    readers.read_cifar("cifar10", root, download_ok=False)  # unpack
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="data_batch_3: not the official file"):
        readers.read_cifar("cifar10", root, download_ok=False)


def test_truncated_idx_file_is_a_user_error(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    _write_mnist(raw, compress=False)
    blob = (raw / "train-images-idx3-ubyte").read_bytes()
    (raw / "train-images-idx3-ubyte").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="cannot read"):
        readers.read_mnist("mnist", tmp_path, download_ok=False)


def test_concurrent_unpacking_of_mnist_gives_whole_files(tmp_path):
    """Four processes unpacking the same .gz files at once (four grid runs starting together), each then
    reading the training images as a run does: none fails, and every one reads exactly the true bytes.
    (An H200 grid once raced on a shared temporary name: a process truncating the file another was
    still writing left a full-size file with a hole of zero images, which a size check cannot see.)"""
    import subprocess
    import sys

    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    n = 60000  # Fashion-MNIST's size: unpacking lasts long enough for the starts to overlap it
    rng = np.random.default_rng(0)
    images = struct.pack(">IIII", 0x803, n, 28, 28) + rng.integers(1, 256, n * 28 * 28, dtype=np.uint8).tobytes()
    for prefix in ("train", "t10k"):
        with gzip.open(raw / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(images)
        with gzip.open(raw / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 0x801, n) + bytes(n))
    code = (
        "import hashlib, random, sys, time; from pathlib import Path; from resnetlab.data.readers import ensure_mnist; "
        "time.sleep(random.random() * 0.3); ensure_mnist('fashion-mnist', Path(sys.argv[1]), False); "
        "print(hashlib.md5((Path(sys.argv[1]) / 'FashionMNIST/raw/train-images-idx3-ubyte').read_bytes()).hexdigest())"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), [err.decode() for _, err in outs]
    assert [out.decode().strip() for out, _ in outs] == [hashlib.md5(images).hexdigest()] * 4
    assert not list(raw.glob(".*.part"))


@pytest.mark.parametrize("damage", ["deflate", "cut"])
def test_a_damaged_mnist_gz_is_one_line_and_leaves_no_part_file(tmp_path, damage):
    """A .gz cut short or with damaged deflate data (a manual download interrupted): zlib's error was a
    traceback, and every attempt left a .part file behind."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    blob = bytearray(gzip.compress(bytes(range(256)) * 4000))
    if damage == "deflate":
        blob[20:60] = bytes(b ^ 0xFF for b in blob[20:60])
    else:
        blob = blob[: len(blob) // 2]
    (raw / "train-images-idx3-ubyte.gz").write_bytes(bytes(blob))
    with pytest.raises(UserError, match=r"^cannot unpack mnist into .*train-images-idx3-ubyte.gz is damaged \("):
        readers.ensure_mnist("mnist", tmp_path, False)
    assert sorted(p.name for p in raw.iterdir()) == ["train-images-idx3-ubyte.gz"]
