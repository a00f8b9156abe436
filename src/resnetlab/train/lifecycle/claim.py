"""Claiming a run folder: make it, lock it (`OUT/.lock`, held for the run's life), and clear up after
a run that failed before it saved anything."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import shutil
import socket
import time
from pathlib import Path

from resnetlab.errors import UserError

LOCK = ".lock"
# What a run that saved nothing may have written: removed after it fails, unless there before.
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "data.json", "tb")


@dataclasses.dataclass
class Claim:
    """The run folder held by this process: the lock's descriptor, the folders this process made
    (outermost first), whether it made the lock file and which of a run's entries were there before."""

    out: Path
    fd: int
    created: list[Path]
    made_lock: bool
    found: frozenset[str] = frozenset()

    def clear_up(self) -> None:
        """After a failed run, with the lock still held: if the folder holds no run (no checkpoint, no
        final weights, no metrics), remove what this process made there."""
        metrics = self.out / "metrics.jsonl"
        if any((self.out / n).exists() for n in ("checkpoint.pt", "final.pt")) or (
            metrics.is_file() and metrics.stat().st_size
        ):
            return  # what --resume continues
        if self.out in self.created:
            shutil.rmtree(self.out, ignore_errors=True)
        else:  # a folder that was there: only the entries this run added go
            added = [name for name in RUN_ENTRIES if name not in self.found] + [LOCK] * self.made_lock
            for name in added:
                path = self.out / name
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        _remove_empty(self.created)

    def release(self) -> None:
        os.close(self.fd)  # releases the flock


def _remove_empty(folders: list[Path]) -> None:
    """rmdir `folders` innermost first; stops at the first that is not empty (never removes content)."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


def claim_folder(out: Path) -> Claim:
    """Make `out` (noting which folders this process made) and take its lock; UserError if it cannot
    be written or is in use. The lock is verified to be the file at OUT/.lock after it is taken: a
    holder that failed may remove the folder (see `Claim.clear_up`) between our open and our lock."""
    created: list[Path] = []
    try:
        for _ in range(10):
            created += _make_folders(out)
            fd, made_lock = _open_lock(out / LOCK)
            if fd is None:
                continue  # the folder went away under us: make it again
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                _remove_empty(created)  # only empty ones: the holder's files are never touched
                raise UserError(
                    f"--out {out} is in use by {holder}; wait for that run to end or choose another --out"
                ) from None
            if _same_file(fd, out / LOCK):
                break
            os.close(fd)  # we locked a file that its holder removed on failing: take the new one
        else:
            raise UserError(f"--out {out}: cannot take its lock (the folder keeps disappearing)")
    except FileExistsError:
        raise UserError(f"--out {out}: a file is in the way (a run folder must be a directory)") from None
    except NotADirectoryError:
        raise UserError(f"--out {out}: a file is in the way of the folder path") from None
    except OSError as e:
        _remove_empty(created)
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e})") from None
    claim = Claim(out, fd, created, made_lock, frozenset(n for n in RUN_ENTRIES if os.path.lexists(out / n)))
    if not os.access(out, os.W_OK):
        claim.clear_up()
        claim.release()
        raise UserError(f"--out {out}: cannot write there (permission denied)")
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} (started {started})\n".encode(), 0)
    return claim


def in_use(out: Path) -> bool:
    """Whether a live process holds `out`'s lock now, read from the kernel's lock table (/proc/locks:
    the lock file's device and inode), without taking or testing the lock itself: a run starting at
    that moment must not find its folder busy. False where that table is not readable (not Linux)."""
    try:
        st = os.stat(out / LOCK)
        table = Path("/proc/locks").read_text()
    except OSError:
        return False
    ours = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any(ours in line.split() for line in table.splitlines())


def _make_folders(out: Path) -> list[Path]:
    """mkdir `out` and its missing parents one by one; the ones this process made (a folder made by
    another process at the same moment is theirs: `mkdir` tells which one made it)."""
    missing = []
    p = out
    while not p.exists() and p != p.parent:  # os.stat: a name too long raises here
        missing.append(p)
        p = p.parent
    if not missing and not out.is_dir():
        raise FileExistsError(out)
    made = []
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            if not p.is_dir():
                raise
            continue
        made.append(p)
    return made


def _open_lock(path: Path) -> tuple[int | None, bool]:
    """(descriptor, made by us) for the lock file; (None, False) if its folder vanished meanwhile."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
    except FileExistsError:
        pass
    except FileNotFoundError:
        return None, False
    try:
        return os.open(path, os.O_RDWR), False
    except FileNotFoundError:
        return None, False


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)
