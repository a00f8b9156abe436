"""Checkpoint I/O: atomic writes, safe loads (`weights_only=True`), one-line errors.

A checkpoint is a dict. Every file we write has at least:
  "format": "resnetlab"   marks our files (a foreign file is refused with a clear message)
  "model":  state dict
  "config": the resolved config as a plain dict (see `resnetlab.config.Config.to_dict`)
  "meta":   {"num_classes", "in_channels", "classes", "mean", ...} what evaluation needs
Training checkpoints add "optimizer", "iteration" and the loop's own state.
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from resnetlab.errors import UserError
from resnetlab.utils.files import make_ordinary

FORMAT = "resnetlab"


def temp_name(path: Path) -> tuple[str, str]:
    """The (prefix, suffix) of `save_atomic`'s temp files for `path`: `.NAME.<random>.tmp` beside it."""
    return f".{path.name}.", ".tmp"


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash never leaves half a file.

    A write that fails (a full disk, a quota, a folder gone read-only) is a one-line UserError naming
    `path` and the reason; the temp file is removed and the file that was at `path` stays as it was.
    A process killed mid-write leaves its temp file: `remove_stale_temps` clears them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = temp_name(path)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            sink = _Sink(f)
            try:
                torch.save({"format": FORMAT, **obj}, sink)
            except RuntimeError:  # PyTorch's writer turns our OSError into "inline_container.cc: unexpected pos"
                if sink.error is None:
                    raise
                raise sink.error from None
            f.flush()
            os.fsync(f.fileno())
            make_ordinary(f.fileno())  # mkstemp's 0600 -> the umask's mode, like every other file of a run
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        before = "the previous one is unchanged" if path.exists() else "nothing was written"
        raise UserError(f"cannot write {path}: {e.strerror or e} ({before})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Sink:
    """The file torch.save writes into, remembering the OSError of a failed write (PyTorch's zip
    writer replaces it by a message about stream positions)."""

    def __init__(self, f: Any) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def link_atomic(src: Path, dst: Path) -> None:
    """`dst` as a second name of the file `src` (a hard link; a copy where the file system has none),
    put in place by a rename: `dst` is whole or absent. `src` replaced later (by `save_atomic`, a new
    file) leaves `dst` as it was."""
    prefix, suffix = temp_name(dst)
    tmp = dst.with_name(f"{prefix}link{suffix}")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot keep {src} as {dst}: {e.strerror or e}") from None


def remove_stale_temps(folder: str | Path, names: tuple[str, ...]) -> list[Path]:
    """Remove the temp files that `save_atomic` left for `folder/NAME` (NAME in `names`) when its
    process was killed mid-write; returns them. Call only while no one else writes those files (a
    run's lock held)."""
    folder, removed = Path(folder), []
    for name in names:
        prefix, suffix = temp_name(folder / name)
        for p in folder.glob(f"{glob.escape(prefix)}*{suffix}"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


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
