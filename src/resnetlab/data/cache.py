"""Caches of what is computed from a folder of images (the decoded small-image tensor, the ImageNet
mean), keyed by everything they depend on.

The key is `fingerprint(root, samples, settings)`: a hash of the sorted relative paths, sizes,
modification times (ns) and labels of the files, the settings the result was computed with, and
`VERSION` (the format of what is cached). A repainted image (same name, same size, new pixels) has
a new mtime, an added or removed file changes the list, so a changed folder is never served from a
stale cache. A cache lives beside the data when that folder is writable (`.resnetlab-*.pt`), else
under the user's cache dir (`$XDG_CACHE_HOME/resnetlab`, default ~/.cache/resnetlab). It is a plain
tensor file (read with weights_only=True), written atomically (temp file + rename); a damaged one
is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from resnetlab.errors import UserError
from resnetlab.utils.checkpoint import save_atomic

VERSION = 2  # bump when what a cache holds changes (2: the decoded split carries its statistics)


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


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/resnetlab, default ~/.cache/resnetlab."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "resnetlab"


def cache_path(root: str | Path, name: str) -> Path:
    """Where the cache `name` goes: beside the data (`root/name`) when root is writable, else in the
    user's cache dir under a name that also says which folder it is for."""
    root = Path(root)
    if os.access(root, os.W_OK):
        return root / name
    tag = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return user_cache_dir() / f"{tag}{name}"


def cached(path: Path, compute: Callable[[], dict[str, Any]], *, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """The dict of tensors in `path`, else `compute()` written there atomically. Under torchrun, rank 0
    computes and writes first; the others then read its file (or compute the same themselves when it
    could not be written)."""
    distributed = world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and rank != 0:
        torch.distributed.barrier()  # wait for rank 0's cache
    value = read_cache(path)
    if value is None:
        value = compute()
        try:
            save_atomic(value, path)
        except OSError:
            pass  # a read-only or full disk: the next run computes it again
    if distributed and rank == 0:
        torch.distributed.barrier()
    return value


def read_cache(path: Path) -> dict[str, Any] | None:
    """The cached dict, or None when there is none or it is unreadable (it is then recomputed)."""
    if not path.is_file():
        return None
    try:
        value = torch.load(path, weights_only=True)
    except Exception:
        return None
    return value if isinstance(value, dict) else None


def remove_stale(path: Path, prefix: str) -> None:
    """Delete the other caches `prefix*.pt` beside `path` (older fingerprints of the same folder and
    settings), so a folder that keeps changing does not pile up decoded copies of itself."""
    for old in path.parent.glob(f"{prefix}*.pt"):
        if old != path:
            old.unlink(missing_ok=True)
