"""Checkpoint I/O: atomic writes, safe loads (`weights_only=True`), one-line errors.

A checkpoint is a dict. Every file we write has at least:
  "format": "resnetlab"   marks our files (a foreign file is refused with a clear message)
  "model":  state dict
  "config": the resolved config as a plain dict (see `resnetlab.config.Config.to_dict`)
  "meta":   {"num_classes", "in_channels", "classes", "mean", ...} what evaluation needs
Training checkpoints add "optimizer", "iteration" and the loop's own state.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from resnetlab.errors import UserError
from resnetlab.utils.files import make_ordinary

FORMAT = "resnetlab"


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **obj}, f)
            f.flush()
            os.fsync(f.fileno())
            make_ordinary(f.fileno())  # mkstemp's 0600 -> the umask's mode, like every other file of a run
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one of our checkpoints safely; a missing, truncated or foreign file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickled objects outside the allow-list
        raise UserError(f"checkpoint {path} is unreadable or truncated ({type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or "model" not in obj:
        raise UserError(
            f"checkpoint {path} is not a resnetlab checkpoint "
            "(for a torchvision .pth file use `resnetlab import-weights`)"
        )
    return obj
