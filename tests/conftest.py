"""Every test's caches go to a folder of the test session, never the user's ~/.cache/resnetlab
(data.cache's default); the default data folder stays what it was. `tmpfs`: a small real file system,
for a disk that fills up. `fake_data`: training reads the tiny fake source of train/train_fake_data.py;
`one_thread`: one intra-op thread (the test machine is shared). `tiny_checkpoint`: a small image
classifier checkpoint that `resnetlab evaluate --checkpoint` rebuilds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from resnetlab.config import default_data_dir


@pytest.fixture(autouse=True, scope="session")
def _session_cache_dir(tmp_path_factory):
    saved = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "RESNETLAB_DATA")}
    os.environ["RESNETLAB_DATA"] = default_data_dir()  # computed from the real XDG_CACHE_HOME, kept
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Callable[[str, str], Path]]:
    """`tmpfs(size, name)`: a tmpfs of `size` ("64k", "1m") mounted at tmp_path/name, unmounted after
    the test: a real ENOSPC from the kernel, through every layer that writes. Mounting needs root (as on
    the project's machines); the test is skipped where `mount` is refused, never faked."""
    mounts: list[Path] = []

    def make(size: str, name: str = "disk") -> Path:
        mount = tmp_path / name
        mount.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a small tmpfs needs root")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()})")
        mounts.append(mount)
        return mount

    yield make
    for mount in mounts:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.fixture
def fake_data(monkeypatch):
    """Training runs in this test read the tiny fake source (train/train_fake_data.py); returns it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "train"))
    import train_fake_data

    import resnetlab.train.loop as loop

    monkeypatch.setattr(loop, "build_data", train_fake_data.build_fake_data)
    return train_fake_data


@pytest.fixture
def one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Callable[..., None]:
    """`tiny_checkpoint(path, classes, config)`: cifar_resnet20 (torch seed 0) for 32-pixel RGB images of
    `classes` (an imagefolder, mean 0.5, no std) with the meta and the `config` dict a run would save."""

    def write(path: Path, classes: list[str], config: dict) -> None:
        import torch

        from resnetlab.models import create_model
        from resnetlab.utils.checkpoint import save_atomic

        torch.manual_seed(0)
        net = create_model("cifar_resnet20", num_classes=len(classes))
        meta = {
            "dataset": "imagefolder",
            "classes": classes,
            "num_classes": len(classes),
            "in_channels": 3,
            "image_size": 32,
            "mean": torch.full((3, 32, 32), 0.5),
            "std": None,
            "model": "cifar_resnet20",
            "model_options": {"num_classes": len(classes)},
        }
        save_atomic({"model": net.state_dict(), "config": config, "meta": meta}, path)

    return write
