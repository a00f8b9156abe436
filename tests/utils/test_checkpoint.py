"""Checkpoint files: written atomically, with the mode the user's umask gives (not mkstemp's 0600)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from resnetlab.utils.checkpoint import load, save_atomic


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
