"""File modes: what we write gets the permissions the user's umask gives, like any `open()`.

`tempfile.mkstemp` (used for atomic writes: temp file, then rename) creates files with mode 0600
whatever the umask; `file_mode()` is the mode an ordinary `open(path, "w")` would have given."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def umask() -> int:
    mask = os.umask(0)  # the only portable way to read the umask is to set it, then put it back
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~umask()


def make_ordinary(fd_or_path: int | str | os.PathLike) -> None:
    """Give a temp file (mode 0600) the mode an ordinary open() would have given it."""
    if isinstance(fd_or_path, int):
        os.fchmod(fd_or_path, file_mode())
    else:
        os.chmod(fd_or_path, file_mode())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside `path`, with its suffix (for writers that go by it), for a writer that
    takes a file name (torch.jit.save, torch.onnx.export): it becomes `path` when the block ends
    and is removed if the block fails, so a failed write leaves nothing, not even half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        make_ordinary(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
