"""Caches of what is computed from a folder of images (the decoded small-image tensor, the ImageNet
mean), keyed by everything they depend on, checked before use, and never in the way.

The key is `fingerprint(root, samples, settings)`: a hash of the sorted relative paths, sizes,
modification times (ns) and labels of the files, the settings the result was computed with, and
`VERSION` (the format of what is cached). A repainted image (same name, same size, new pixels) has
a new mtime, an added or removed file changes the list, so a changed folder is never served from a
stale cache.

Where (`data.cache`): "user" (the default) in the user's cache folder, `user_cache_dir()/folders/
NAME-HASH/` (HASH: of the data folder's resolved path), since a dataset folder is the user's, often
shared or read-only; "data" beside the images (`DIR/.resnetlab-*.pt`), only when asked; "none": never.

A cache is an optimisation: one that cannot be written (a full disk, a folder of another user) is
computed in memory with one warning; one that cannot be read, or does not hold what it claims (its
stored key is not this folder's, a key missing, labels that are not the file list's) is recomputed.
It is a plain tensor file (read with weights_only=True), written to a temp file that its writer holds
locked and then renamed; a run removes the temp files of writers that died (kill -9) on its way.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from resnetlab.config import user_cache_dir
from resnetlab.errors import UserError
from resnetlab.utils.checkpoint import _Sink
from resnetlab.utils.distributed import barrier
from resnetlab.utils.files import make_ordinary

try:
    import fcntl
except ImportError:  # Windows: temp files are then removed by age alone
    fcntl = None

__all__ = ["PLACES", "cache_path", "cached", "fingerprint", "remove_stale", "user_cache_dir"]

VERSION = 3  # bump when what a cache holds changes (3: the key stored inside, checked on reading)
PLACES = ("user", "data", "none")
_DATA_PREFIX = ".resnetlab-"  # the name of a cache beside the data (hidden in the user's folder)
_ORPHAN_AGE_S = 3600  # without file locks (or not locked yet): a temp file this old is an orphan
_TEMP_NAME = re.compile(r"\.(\.resnetlab-|decoded-|mean-).*\.pt\..+\.tmp(\.new)?")  # write_cache's temp files


def fingerprint(root: str | Path, samples: list[tuple[str, int]], settings: dict[str, Any]) -> str:
    """Hex digest of (VERSION, settings, every (relative path, size, mtime_ns, label) in sorted order)."""
    h = hashlib.sha256(json.dumps({"version": VERSION, "settings": settings}, sort_keys=True).encode())
    prefix = os.path.join(str(root), "")  # the scan joins paths onto root: strip it (relpath is 5x slower)
    rows = []
    for path, label in samples:
        try:
            st = os.stat(path)
        except OSError as e:
            raise UserError(f"cannot read image {path} ({type(e).__name__}): {e.strerror or e}") from None
        rel = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root)
        rows.append((rel, st.st_size, st.st_mtime_ns, label))
    for rel, size, mtime, label in sorted(rows):
        h.update(f"{rel}\0{size}\0{mtime}\0{label}\n".encode())
    return h.hexdigest()


def cache_path(root: str | Path, name: str, place: str = "user") -> Path | None:
    """Where the cache `name` of the data folder `root` goes (see the module doc); None for "none"."""
    if place not in PLACES:
        raise UserError(f"data.cache={place!r}: must be one of {', '.join(PLACES)}")
    if place == "none":
        return None
    root = Path(root)
    if place == "data":
        return root / f"{_DATA_PREFIX}{name}"
    resolved = root.resolve()
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    label = re.sub(r"[^A-Za-z0-9._-]", "_", resolved.name)[:40] or "root"
    return user_cache_dir() / "folders" / f"{label}-{tag}" / name


def cached(
    path: Path | None,
    compute: Callable[[], dict[str, Any]],
    *,
    key: str,
    check: Callable[[dict[str, Any]], str | None] | None = None,
    rank: int = 0,
) -> dict[str, Any]:
    """The dict of tensors cached at `path` if it was stored under `key` and `check(value)` finds
    nothing wrong (it returns what is wrong, or None); else `compute()`, written there. Under
    torchrun, rank 0 computes and writes first; the others then read its file (or compute the same
    themselves when it could not be written). `path` None (data.cache=none): computed, never stored."""
    if rank != 0:
        barrier()  # wait for rank 0's cache (barrier: identity for one process)
    value = None
    if path is not None:
        if rank == 0:
            remove_orphans(path.parent)
        value = read_cache(path, key, check)
    if value is None:
        value = compute()
        if path is not None and rank == 0:
            write_cache(value, path, key)
    if rank == 0:
        barrier()
    return value


def read_cache(
    path: Path, key: str, check: Callable[[dict[str, Any]], str | None] | None = None
) -> dict[str, Any] | None:
    """The cached dict, or None when there is none, it is unreadable, or it does not hold what it
    claims (then said once on stderr; it is recomputed and replaced)."""
    try:
        value = torch.load(path, weights_only=True)
    except FileNotFoundError:
        return None
    except Exception:  # damaged, truncated, not ours, not readable by us: recomputed
        return None
    if not isinstance(value, dict) or value.pop("key", None) != key:
        wrong = "it was not made from this folder's files and settings"
    else:
        wrong = check(value) if check is not None else None
    if wrong:
        warn(f"ignored the cache {path}: {wrong}; computing it afresh", kind=f"bad {path}")
        return None
    return value


def write_cache(value: dict[str, Any], path: Path, key: str) -> bool:
    """Write `value` (with `key`) to `path` atomically; a failure (a full disk, a read-only or foreign
    folder) is one warning, not an error: the run goes on with what it computed. True if written.

    The temp file (`.NAME.<random>.tmp` beside `path`) is held under an exclusive lock until it is
    renamed, so that `remove_orphans` can tell a live writer's temp file from a dead one's. It is made
    as `...tmp.new`, a name `remove_orphans` does not touch, and takes its `.tmp` name only once locked:
    made under that name, another process's clean-up could delete it between mkstemp and flock."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, new = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp.new", dir=path.parent)
        tmp = new
        with os.fdopen(fd, "wb") as f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            tmp = new.removesuffix(".new")
            os.rename(new, tmp)  # the lock stays with the open file
            sink = _Sink(f)  # keeps the OSError of a failed write, which torch's zip writer turns into a RuntimeError
            try:
                torch.save({"key": key, **value}, sink)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise sink.error from None
            f.flush()
            os.fsync(f.fileno())
            make_ordinary(f.fileno())
            os.replace(tmp, path)  # still locked: the lock ends with the writer, after the rename
        return True
    except OSError as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        reason = e.strerror or str(e)
        warn(
            f"cannot write the cache {path} ({reason}); the run goes on with what it computed in memory, and the "
            "next run computes it again (data.cache=none stops trying)",
            kind="write",
        )
        return False
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def remove_orphans(folder: Path) -> None:
    """Delete the temp files of cache writers that died (kill -9, power loss) in `folder`: those no
    live writer holds locked (`write_cache`); those not locked yet (`.tmp.new`), or all of them without
    file locks, once older than an hour. Files that cannot be opened or deleted (another user's) are
    left alone."""
    try:
        names = [e.name for e in os.scandir(folder) if _TEMP_NAME.fullmatch(e.name)]  # only ours
    except OSError:
        return
    for name in names:
        tmp = folder / name
        try:
            if fcntl is None or name.endswith(".new"):  # no locks here, or a writer killed before it locked
                if tmp.stat().st_mtime < time.time() - _ORPHAN_AGE_S:
                    tmp.unlink()
                continue
            with open(tmp, "rb") as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer
                tmp.unlink()
        except OSError:
            continue


def remove_stale(path: Path, prefix: str) -> None:
    """Delete the other caches `prefix*.pt` beside `path` (older fingerprints of the same folder and
    settings), so a folder that keeps changing does not pile up decoded copies of itself. One that
    cannot be deleted (another user's) stays."""
    try:
        old = [p for p in path.parent.glob(f"{prefix}*.pt") if p != path]
    except OSError:
        return
    for p in old:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


_warned: set[str] = set()


def warn(message: str, *, kind: str) -> None:
    """`warning: message` on stderr, once per process for each kind."""
    if kind not in _warned:
        _warned.add(kind)
        print(f"warning: {message}", file=sys.stderr, flush=True)
