"""CIFAR batches are pickles, i.e. programs: a planted file must never run, whatever its name."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torchvision

from resnetlab.data import readers
from resnetlab.data.cifar_pickle import RefusedPickle, load_cifar_pickle
from resnetlab.errors import UserError


class _Payload:
    """What an attacker would plant: unpickling it creates `marker` (stands for any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _hostile(marker, where: str) -> bytes:
    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1], "label_names": ["a", "b"]}
    batch[where] = _Payload(marker)
    return pickle.dumps(batch, protocol=2)


def test_payload_is_live(tmp_path):
    """The payload really runs under plain pickle (so the tests below can fail)."""
    pickle.loads(_hostile(tmp_path / "ran", "batch_label"))
    assert (tmp_path / "ran").exists()


def test_md5_table_is_torchvisions():
    """Our per-file MD5s against an independent source: torchvision's CIFAR classes."""
    for name, cls in (("cifar10", torchvision.datasets.CIFAR10), ("cifar100", torchvision.datasets.CIFAR100)):
        theirs = dict(cls.train_list + cls.test_list) | {cls.meta["filename"]: cls.meta["md5"]}
        assert readers.CIFAR_ARCHIVES[name].file_md5 == theirs


@pytest.mark.parametrize("name", ["data_batch_1", "test_batch", "batches.meta"])
def test_planted_file_is_refused_by_its_md5(cifar10_dir, name):
    root, _ = cifar10_dir
    readers.read_cifar("cifar10", root, download_ok=False)  # unpack the (trusted) archive
    marker = root / "marker"
    (root / "cifar-10-batches-py" / name).write_bytes(_hostile(marker, "labels"))
    with pytest.raises(UserError, match=f"{name}: not the official file"):
        readers.read_cifar("cifar10", root, download_ok=False)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["data_batch_1", "test_batch", "batches.meta"])
def test_planted_file_with_matching_md5_is_refused_by_the_unpickler(tmp_path, monkeypatch, name):
    """Even were the MD5 table wrong, the unpickler builds nothing outside the batch format."""
    spec = readers.CIFAR_ARCHIVES["cifar10"]
    folder = tmp_path / spec.folder
    folder.mkdir()
    blobs = {f: pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]}) for f in spec.files}
    blobs["batches.meta"] = pickle.dumps({"label_names": ["a"]})
    marker = tmp_path / "marker"
    blobs[name] = _hostile(marker, "filenames")
    for f, blob in blobs.items():
        (folder / f).write_bytes(blob)
    md5s = {f: hashlib.md5(b).hexdigest() for f, b in blobs.items()}
    monkeypatch.setitem(readers.CIFAR_ARCHIVES, "cifar10", type(spec)(**{**spec.__dict__, "file_md5": md5s}))
    with pytest.raises(UserError, match=f"{name}: refusing to read it: it names __builtin__.exec"):
        readers.read_cifar("cifar10", tmp_path, download_ok=False)
    assert not marker.exists()


def test_official_layout_of_both_numpy_eras():
    """The official files (numpy 1) name numpy.core.multiarray; numpy >= 2 writes numpy._core."""
    data = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    blob = pickle.dumps({"data": data, "labels": [3, 4], "batch_label": b"raw bytes"}, protocol=2)
    for module in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
        text = blob.replace(b"numpy._core.multiarray", module).replace(b"numpy.core.multiarray", module)
        assert module in text
        got = load_cifar_pickle(text)
        assert np.array_equal(got["data"], data) and got["labels"] == [3, 4] and got["batch_label"] == b"raw bytes"


def test_refuses_arrays_that_are_not_uint8_and_other_codecs():
    with pytest.raises(ValueError, match="object"):
        load_cifar_pickle(pickle.dumps({"data": np.array([1, "x"], dtype=object)}, protocol=2))
    blob = pickle.dumps({"x": b"ab"}, protocol=2).replace(b"latin1", b"rot13_")
    with pytest.raises(RefusedPickle, match="encoding"):
        load_cifar_pickle(blob)
