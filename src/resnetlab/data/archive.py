"""Fetching, checking and unpacking dataset archives (CIFAR's tar.gz, VOC's tar, COCO's zip), with
every failure a one-line `UserError`.

Written by hand rather than torchvision's `download_and_extract_archive` for two reasons: its errors
are raw exceptions, and its extraction trusts the archive. Ours refuses any member that is not a
plain file or folder, or whose path leaves the target folder (on top of tarfile's own "data" filter).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from resnetlab.errors import UserError, one_line
from resnetlab.utils.files import make_ordinary


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_md5(path: str | Path, expected: str) -> None:
    actual = md5sum(path)
    if actual != expected:
        raise UserError(
            f"{path}: wrong MD5 checksum (expected {expected}, got {actual}); the file is damaged or not the "
            "official archive: delete it and download it again"
        )


def download(url: str, dest: str | Path, *, md5: str, timeout: float = 60.0) -> None:
    """Stream `url` to `dest`, checking the publisher's MD5 on the way. Only https (and file:, a
    local mirror) is fetched. The bytes go to a temp file that becomes `dest` only once the checksum
    matches: an interrupted or tampered download is removed and never looks complete."""
    dest = Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("https", "file"):
        raise UserError(f"refusing to download {url}: only https:// (or a local file:) URL is fetched")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise UserError(f"cannot write into {dest.parent}: {e.strerror or e}") from None
    h = hashlib.md5()
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}", leave=False) as bar:
                while block := resp.read(1 << 20):
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
        if h.hexdigest() != md5:
            raise UserError(
                f"downloaded {url} but its MD5 is {h.hexdigest()}, not the publisher's {md5}: removed it "
                "(a damaged transfer or not the official file); try again"
            )
        make_ordinary(tmp)  # mkstemp's 0600 -> the umask's mode
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(f"could not download {url}: {reason}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# tarfile's "data" filter (Python >= 3.10.12 / 3.11.4) is a second line behind our own checks.
_DATA_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
_FILTER_ERRORS = getattr(tarfile, "FilterError", ())


def _check_member(name: str, kind: str, target: Path) -> None:
    if kind not in ("file", "dir"):
        raise UserError(f"refusing to extract {name!r}: a {kind}; only plain files and folders are allowed")
    if os.path.isabs(name) or name.startswith(("/", "\\")):
        raise UserError(f"refusing to extract {name!r}: absolute path")
    resolved = (target / name).resolve()
    if resolved != target and target not in resolved.parents:
        raise UserError(f"refusing to extract {name!r}: it resolves outside {target}")


def _tar_kind(m: tarfile.TarInfo) -> str:
    if m.isfile() or m.isdir():
        return "file" if m.isfile() else "dir"
    return "link" if (m.issym() or m.islnk()) else "device or special file"


def _zip_kind(info: zipfile.ZipInfo) -> str:
    kind = stat.S_IFMT(info.external_attr >> 16)  # the Unix file type, when the zip records one
    if kind == stat.S_IFLNK:
        return "link"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "device or special file"
    return "dir" if info.is_dir() else "file"


def _clash(src: Path, dest: Path) -> Path | None:
    """The first place where src has a file and dest a folder of that name, or the reverse."""
    for entry in src.iterdir():
        to = dest / entry.name
        if not to.exists() and not to.is_symlink():
            continue
        if entry.is_dir() != to.is_dir():
            return to
        if entry.is_dir() and (inner := _clash(entry, to)):
            return inner
    return None


def _move_into(src: Path, dest: Path) -> None:
    """Move src's entries into dest: files replace files, folders merge (COCO's annotations/ holds
    several years' files; extracting one keeps the others). `_clash` is checked first: a file of the
    archive never replaces a folder of the user's."""
    for entry in src.iterdir():
        to = dest / entry.name
        if entry.is_dir() and to.is_dir():
            _move_into(entry, to)
            continue
        try:
            os.replace(entry, to)
        except OSError as e:  # another process unpacking the same archive put the folder there first
            if not (entry.is_dir() and to.is_dir() and e.errno in (errno.ENOTEMPTY, errno.EEXIST)):
                raise
            _move_into(entry, to)


def safe_extract(archive: str | Path, target: str | Path) -> None:
    """Extract a tar(.gz) or zip into `target`. Every member is checked before anything is written,
    so a hostile archive leaves nothing behind; the files land in a temp folder first, then move in."""
    archive, target = Path(archive), Path(target)
    try:
        target.mkdir(parents=True, exist_ok=True)
        target = target.resolve()
        is_zip = zipfile.is_zipfile(archive)
        with zipfile.ZipFile(archive) if is_zip else tarfile.open(archive, "r:*") as arc:
            if is_zip:
                members = [(i.filename, _zip_kind(i)) for i in arc.infolist()]
            else:
                members = [(m.name, _tar_kind(m)) for m in arc.getmembers()]
            for name, kind in members:
                _check_member(name, kind, target)
            tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target))
            try:
                arc.extractall(tmp) if is_zip else arc.extractall(tmp, **_DATA_FILTER)
                if clash := _clash(tmp, target):
                    kind = "folder" if clash.is_dir() else "file"
                    raise UserError(
                        f"{archive}: refusing to extract: {clash} is a {kind} here and not in the archive; "
                        "move it away or extract elsewhere"
                    )
                _move_into(tmp, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except _FILTER_ERRORS as e:
        raise UserError(f"{archive}: refusing to extract: {one_line(e)}") from None
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):  # the disk, not the archive: fetching again would not help
            raise UserError(
                f"{target}: no space left on the device to extract {archive} ({e.strerror}); free some and try again"
            ) from None
        raise UserError(
            f"{archive}: cannot extract ({e.__class__.__name__}: {one_line(e)}); delete it, fetch it again"
        ) from None
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(
            f"{archive}: cannot extract ({e.__class__.__name__}: {one_line(e)}); delete it, fetch it again"
        ) from None
