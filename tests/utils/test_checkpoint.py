"""Checkpoint files: written atomically, with the mode the user's umask gives (not mkstemp's 0600)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest
import torch

from resnetlab.errors import UserError
from resnetlab.utils.checkpoint import link_atomic, load, save_atomic


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_checkpoint_mode_follows_umask(tmp_path, mask):
    reference = tmp_path / "plain.txt"
    old = os.umask(mask)
    try:
        save_atomic({"model": {"w": torch.zeros(1)}}, tmp_path / "ck.pt")
        reference.write_text("x")  # what any other file of a run gets
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "ck.pt").stat().st_mode)
    assert mode == stat.S_IMODE(reference.stat().st_mode) == 0o666 & ~mask
    assert load(tmp_path / "ck.pt")["model"]["w"].shape == (1,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "plain.txt"]  # no temp file left


def test_a_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path):
    """PyTorch's zip writer reports a failed write as `inline_container.cc ... unexpected pos`;
    save_atomic names the file and the OSError behind it, removes its temp file and keeps the old file."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        save_atomic({"model": {"w": torch.ones(10_000)}}, disk / "c.pt")  # 40 kB
        with pytest.raises(UserError) as e:
            save_atomic({"model": {"w": torch.zeros(100_000)}}, disk / "c.pt")  # 400 kB: does not fit
        assert str(e.value) == f"cannot write {disk / 'c.pt'}: No space left on device (the previous one is unchanged)"
        assert os.listdir(disk) == ["c.pt"]
        assert torch.equal(load(disk / "c.pt")["model"]["w"], torch.ones(10_000))
    finally:
        subprocess.run(["umount", str(disk)], check=False)



@pytest.mark.parametrize("hard_links", [True, False])
def test_a_kept_copy_outlives_the_file_it_was_made_from(tmp_path, monkeypatch, hard_links):
    """link_atomic: `dst` keeps what `src` held when it was made, after save_atomic replaced `src`; a
    hard link where the file system has them, else a copy; no temp file is left either way."""
    src, kept = tmp_path / "checkpoint.pt", tmp_path / "checkpoint-4.pt"
    save_atomic({"model": {}, "iteration": 4}, src)
    if not hard_links:

        def refuse(*args):
            raise OSError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", refuse)
    link_atomic(src, kept)
    assert (kept.stat().st_ino == src.stat().st_ino) is hard_links
    save_atomic({"model": {}, "iteration": 8}, src)
    assert load(kept)["iteration"] == 4 and load(src)["iteration"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4.pt", "checkpoint.pt"]
