"""File modes: what we write gets the permissions the user's umask gives, like any `open()`.

`tempfile.mkstemp` (used for atomic writes: temp file, then rename) creates files with mode 0600
whatever the umask; `file_mode()` is the mode an ordinary `open(path, "w")` would have given."""

from __future__ import annotations

import os


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
