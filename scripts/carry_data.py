"""A folder of files (a dataset, a grid's run folders) carried to a machine that takes at most 64 MiB
of files per call: packed here into numbered parts, each a self-contained tar.gz of whole files, with a
SHA-256 manifest; there, checked and unpacked into a folder, part by part.

    python3 scripts/carry_data.py pack FOLDER NAME [--part-mib M]   # here: .carry/NAME/part-NN + MANIFEST
    python3 scripts/carry_data.py parts NAME                        # the carry list, one call per part
    PY scripts/carry_data.py unpack NAME TARGET                     # there, once every part is carried

The conventions are scripts/carry_wheels.sh's: parts `part-NN` under the ignored `.carry/`, of at most
60,000,000 bytes by default (+ the working tree, ~3 MB, stays under the 64 MiB a call carries), and a
MANIFEST in `sha256sum` format: one line per part and one for the joined archive (`cat part-*`, here
`NAME.tar.gz`), so `cd .carry/NAME && sha256sum -c MANIFEST` checks them by hand once joined.

Unlike the wheels' one compressed stream cut into pieces, each part here is a whole tar.gz, so a part
can be unpacked alone and the unpacking is idempotent: `TARGET/.carried` records the SHA-256 of every
part unpacked, and a part already there is skipped. Before anything is written, every part and the
joined archive are checked against the MANIFEST (a mismatch is one line, exit 2); each part is then
extracted by `resnetlab.data.archive.safe_extract`, which refuses a link, a special file or a path
leaving TARGET.

Nothing of the user's is deleted or replaced. `pack` writes the new parts into a hidden folder beside
`.carry/NAME` and swaps them in only once the MANIFEST is written (a failed pack leaves the previous
one as it was; what a killed one leaves, `.carry/.NAME.new-PID-*` and the previous pack moved aside
in `.carry/.NAME.old-PID-*`, is swept by the next `pack` or `parts` of NAME once PID has ended).
`unpack` lists every member of every part still to unpack before it writes anything, and refuses
(leaving TARGET as it was) one that would land on a folder, under a file, on a file with other bytes,
or on the `.carried` record. A name
that would not come back the same (a control character such as a newline, bytes that are not UTF-8)
is refused at pack time. resnetlab's own caches in the folder (`.resnetlab-*.pt`, rebuilt from the
images wherever they are used, 65 MB for 21k images) and an earlier unpack's `.carried` are left out,
and `pack` says so. gzip at level 1: the 60,000 CIFAR-10 JPEGs share their JPEG headers and tables and
the tar headers compress away (93 MB of tar -> 20 MB); Imagenette's larger JPEGs barely shrink.

`pack` needs only Python's standard library; `unpack` the project's data/archive.py (found from here)
and tqdm, which it imports: the project's Python (on the lent machine /opt/torch/.venv/bin/python).
"""

from __future__ import annotations

import argparse
import errno
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tarfile
import tempfile
import unicodedata
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = Path(".carry")  # relative to the current folder, as carry_wheels.sh's (the repository root)
PART_BYTES = 60_000_000  # carry_wheels.sh's PART_BYTES
MARKER = ".carried"  # in TARGET: "<sha256>  part-NN" for every part unpacked there
BLOCK = tarfile.BLOCKSIZE  # 512
END = 2 * BLOCK + tarfile.RECORDSIZE  # a tar's end-of-archive blocks, at most, with its record padding
SMALLEST = 2 * END + 2048  # the smallest --part-mib, in bytes
PART = re.compile(r"part-\d{2}")
# resnetlab's caches beside the data (data/cache.py: `.resnetlab-*.pt`) and save_atomic's temp files of
# them (`.<name>.<random>.tmp`): derived from the images, and one is larger than a part.
CACHE = re.compile(r"\.?\.resnetlab-.*\.(pt|tmp)")


class CarryError(Exception):
    """Bad input or a damaged part: `error: <message>`, exit 2."""


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _plain(text: str) -> bool:
    """No control character or line separator (a newline, a tab), and no bytes that are not UTF-8
    (os.fsdecode's surrogates): a name that tar, a terminal and a one-line message all keep as it is."""
    return not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in text)


def shown(text: object) -> str:
    """`text` on one printable line: a name that is not `_plain` in repr form."""
    text = str(text)
    return text if _plain(text) else repr(text)


def _files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(every file under `folder` to pack, sorted; the files left out: resnetlab's caches, the
    `.carried` record). A link, a special file or a name that would not come back the same is refused
    (a link could name something outside the folder)."""
    found, left_out = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if not _plain(name):
                raise CarryError(
                    f"{shown(path)}: a name with a control character or bytes that are not UTF-8 would not "
                    "unpack under the same name; rename it"
                )
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                raise CarryError(f"{shown(path)}: a link or special file; only plain files and folders are packed")
        for name in sorted(filenames):
            path = Path(dirpath) / name
            top_marker = name == MARKER and Path(dirpath) == folder
            (left_out if top_marker or CACHE.fullmatch(name) else found).append(path)
    return found, left_out


def _tar_bytes(name: str, size: int) -> int:
    """The most a member adds to a tar: its header, a GNU long-name header when needed, its data
    padded to whole blocks."""
    long_name = BLOCK + -(-len(name.encode()) // BLOCK) * BLOCK if len(name.encode()) > 100 else 0
    return BLOCK + long_name + -(-size // BLOCK) * BLOCK


class _Part:
    """One part being written: a tar inside gzip, with a bound on its size on disk that holds before
    each member is added (compressed bytes written + bytes not yet flushed by the compressor)."""

    def __init__(self, path: Path) -> None:
        self.path, self.files = path, 0
        self.raw = open(path, "wb")
        self.gz = gzip.GzipFile(fileobj=self.raw, mode="wb", compresslevel=1, mtime=0)  # mtime 0: reproducible
        self.tar = tarfile.open(fileobj=self.gz, mode="w", format=tarfile.GNU_FORMAT)
        self.unflushed = 0

    def bound(self, more: int) -> int:
        # deflate never grows data by more than 5 bytes per 16 KiB stored block; 1% + 1 KiB is ample
        return self.raw.tell() + int(1.01 * (self.unflushed + more + END)) + 1024

    def fits(self, more: int, limit: int) -> bool:
        if self.bound(more) <= limit:
            return True
        if self.unflushed:  # near the limit: flush the compressor, so that the bound becomes exact again
            self.gz.flush()
            self.unflushed = 0
        return self.bound(more) <= limit

    def add(self, path: Path, name: str, size: int) -> None:
        info = self.tar.gettarinfo(str(path), arcname=name)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        with open(path, "rb") as f:
            self.tar.addfile(info, f)
        self.unflushed += _tar_bytes(name, size)
        self.files += 1

    def close(self) -> int:
        self.tar.close()
        self.gz.close()
        self.raw.close()
        return self.path.stat().st_size

    def abort(self) -> None:
        """Close without the errors of a full disk: the part is removed with its folder."""
        for f in (self.tar, self.gz, self.raw):
            try:
                f.close()
            except (OSError, ValueError):
                pass


def pack(folder: Path, name: str, part_bytes: int = PART_BYTES, *, carry: Path = CARRY) -> dict:
    """FOLDER's files into carry/NAME/part-NN (each <= part_bytes on disk) and carry/NAME/MANIFEST,
    written beside an earlier pack of NAME and swapped in once complete. Returns {"parts": one
    {"part", "files", "bytes"} per part, "left_out": the files not packed (caches, a `.carried`)}."""
    if not folder.is_dir():
        raise CarryError(f"{shown(folder)}: not a folder")
    if not name or "/" in name or name.startswith(".") or not _plain(name):
        raise CarryError(f"pack NAME: {name!r} is not a plain folder name (it becomes .carry/NAME)")
    out = carry / name
    sweep(carry, name)
    if out.is_symlink() or out.exists() and not out.is_dir():
        raise CarryError(f"{out}: not a folder of parts; move it away or pack under another NAME")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if not (PART.fullmatch(p.name) or p.name == "MANIFEST"))
        if others:  # carry_wheels.sh's files, or the user's: not ours to replace
            raise CarryError(f"{out} holds {shown(others[0])}, not a pack's; pack under another NAME or move it away")
    files, left_out = _files(folder)
    if not files:
        raise CarryError(f"{shown(folder)}: no files to pack")
    carry.mkdir(parents=True, exist_ok=True)
    new = Path(tempfile.mkdtemp(prefix=f".{name}.new-{os.getpid()}-", dir=carry))
    try:
        parts = _write_parts(folder, files, new, name, part_bytes)
        os.chmod(new, 0o777 & ~_umask())  # mkdtemp's 0700 -> an ordinary folder's mode
        if out.is_dir():  # the previous pack goes only once the new one is whole
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-{os.getpid()}-", dir=carry))
            os.replace(out, old / name)
            try:
                os.replace(new, out)
            except OSError:
                os.replace(old / name, out)
                raise
            shutil.rmtree(old)
        else:
            os.replace(new, out)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CarryError(
                f"{carry}: no space left on the device while packing ({e.strerror}); the previous pack of "
                f"{name}, if any, is as it was: free some space and pack again"
            ) from None
        raise
    finally:
        shutil.rmtree(new, ignore_errors=True)  # gone already when swapped in
    return {"parts": parts, "left_out": left_out}


def sweep(carry: Path, name: str) -> None:
    """What a killed pack of NAME left in `carry`, once its process has ended: the previous pack it had
    moved aside (.NAME.old-PID-*/NAME) goes back to NAME if NAME is missing; the rest goes."""
    if not carry.is_dir():
        return
    for tmp in sorted(carry.iterdir()):
        m = re.fullmatch(rf"\.{re.escape(name)}\.(new|old)-(\d+)-[^/]+", tmp.name)
        if not m or not tmp.is_dir() or tmp.is_symlink() or _alive(int(m[2])):
            continue
        if m[1] == "old" and (tmp / name).is_dir() and not os.path.lexists(carry / name):
            os.replace(tmp / name, carry / name)
        shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _add(part: _Part | None, parts: list[dict], path: Path, member: str, out: Path, part_bytes: int) -> _Part:
    """`path` as `member` into the open part, or into a new one when it would not fit (the closed part
    joins `parts`). Returns the part it went into."""
    size = path.stat().st_size
    more = _tar_bytes(member, size)
    if part is not None and not part.fits(more, part_bytes):
        parts.append({"part": part.path.name, "files": part.files, "bytes": part.close()})
        part = None
    if part is None:
        if len(parts) == 100:
            raise CarryError(f"more than 100 parts of {part_bytes} bytes; pack a larger --part-mib")
        part = _Part(out / f"part-{len(parts):02d}")
        if not part.fits(more, part_bytes):
            part.abort()
            raise CarryError(f"{shown(path)}: {size} bytes do not fit in a part of {part_bytes} bytes (--part-mib)")
    part.add(path, member, size)
    return part


def _write_parts(folder: Path, files: list[Path], out: Path, name: str, part_bytes: int) -> list[dict]:
    """`files` into out/part-NN and out/MANIFEST."""
    parts: list[dict] = []
    part = None
    try:
        for path in files:
            part = _add(part, parts, path, path.relative_to(folder).as_posix(), out, part_bytes)
        parts.append({"part": part.path.name, "files": part.files, "bytes": part.close()})
    except BaseException:
        if part is not None:
            part.abort()
        raise
    joined = hashlib.sha256()
    lines = []
    for p in parts:
        lines.append(f"{sha256(out / p['part'])}  {p['part']}\n")
        with open(out / p["part"], "rb") as f:
            while block := f.read(1 << 20):
                joined.update(block)
    (out / "MANIFEST").write_text(f"{joined.hexdigest()}  {name}.tar.gz\n" + "".join(lines))
    return parts


def read_manifest(folder: Path) -> tuple[tuple[str, str], list[tuple[str, str]]]:
    """((digest, name) of the joined archive, [(digest, part name), ...]) from folder/MANIFEST."""
    manifest = folder / "MANIFEST"
    if not manifest.is_file():
        raise CarryError(f"no {manifest}: carry it with the parts (`parts` lists them)")
    try:
        text = manifest.read_bytes().decode()
    except UnicodeDecodeError:
        raise CarryError(f"{manifest}: not a carry_data manifest (not UTF-8 text)") from None
    entries = []
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or not name or "/" in name or not _plain(name):
            raise CarryError(f"{manifest}: not a carry_data manifest (line {line[:80]!r})")
        if name.startswith("part-") and not PART.fullmatch(name):
            raise CarryError(f"{manifest}: not a carry_data manifest (part {name[:80]!r})")
        entries.append((digest, name))
    joined = [e for e in entries if not e[1].startswith("part-")]
    parts = [e for e in entries if e[1].startswith("part-")]
    if len(joined) != 1 or not parts:
        raise CarryError(f"{manifest}: not a carry_data manifest (one joined archive and its parts)")
    return joined[0], parts


def check(folder: Path) -> list[tuple[str, str]]:
    """Every part of folder/MANIFEST present with its SHA-256, and the joined archive's: the parts."""
    (joined_digest, joined_name), parts = read_manifest(folder)
    for digest, name in parts:
        path = folder / name
        if not path.is_file():
            raise CarryError(f"{path} is missing: carry every part ({len(parts)}) before unpacking")
        if sha256(path) != digest:
            raise CarryError(f"{path}: SHA-256 differs from the MANIFEST (damaged, or from another pack); carry again")
    joined = hashlib.sha256()
    for _, name in parts:
        with open(folder / name, "rb") as f:
            while block := f.read(1 << 20):
                joined.update(block)
    if joined.hexdigest() != joined_digest:
        raise CarryError(f"{folder}: the joined parts differ from {joined_name} in the MANIFEST (parts of two packs?)")
    return parts


def _archive():
    """(safe_extract, its member checks, UserError) of resnetlab.data.archive, loaded from its file: importing it as
    `resnetlab.data.archive` would run data/__init__.py, which imports torch (seconds) for nothing."""
    import importlib.util

    sys.path.insert(0, str(ROOT / "src"))
    from resnetlab.errors import UserError

    spec = importlib.util.spec_from_file_location("_carry_archive", ROOT / "src" / "resnetlab" / "data" / "archive.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.safe_extract, module._check_member, module._tar_kind, UserError


def unpack(folder: Path, target: Path) -> dict:
    """Check every part, and every member of the parts not yet recorded in TARGET/.carried against
    what TARGET holds; then extract those parts, recording each. A refusal leaves TARGET as it was."""
    parts = check(folder)
    safe_extract, check_member, tar_kind, UserError = _archive()
    if target.exists() and not target.is_dir():
        raise CarryError(f"{shown(target)}: not a folder to unpack into")
    marker = target / MARKER
    if marker.exists() and not marker.is_file():
        raise CarryError(f"{shown(marker)}: not carry_data's record of the parts unpacked here; move it away")
    # a damaged record costs only a re-check: a part it does not name is unpacked again over its own files
    done = set(marker.read_bytes().decode(errors="replace").splitlines()) if marker.is_file() else set()
    todo = [(digest, name) for digest, name in parts if f"{digest}  {name}" not in done]
    try:
        _check_members(folder, [name for _, name in todo], target, check_member, tar_kind)
    except UserError as e:
        raise CarryError(shown(e)) from None

    created = [d for d in (target, *target.parents) if not d.exists()]
    target.mkdir(parents=True, exist_ok=True)
    unpacked = []
    for digest, name in todo:
        try:
            safe_extract(folder / name, target)
        except UserError as e:
            if not unpacked:
                for d in created:  # only the empty folders made above: the target is as it was
                    _rmdir(d)
                raise CarryError(shown(e)) from None
            raise CarryError(f"{shown(e)} ({len(unpacked)} part(s) unpacked and recorded: unpack again)") from None
        with open(marker, "a") as f:
            f.write(f"{digest}  {name}\n")
            f.flush()
            os.fsync(f.fileno())
        unpacked.append(name)
    skipped = [name for _, name in parts if name not in unpacked]
    return {"target": str(target), "unpacked": unpacked, "skipped": skipped}


def _rmdir(folder: Path) -> None:
    try:
        folder.rmdir()  # never anything in it
    except OSError:
        pass


def _check_members(folder: Path, parts: list[str], target: Path, check_member, tar_kind) -> None:
    """Refuse (CarryError) before anything is written: a member archive.safe_extract refuses (a link, a
    path leaving TARGET), one under the name of the `.carried` record, one whose path crosses another's
    (a file in one part where another has a folder), and one that would replace what TARGET holds: a
    folder, a file with other bytes (the same bytes are a part cut short, unpacked again), or a file
    or link on its way."""
    kinds: dict[str, str] = {}  # every path the parts make, relative to TARGET: "file" or "dir"
    where = target.resolve()
    for name in parts:
        part = folder / name
        try:
            with tarfile.open(part, "r:gz") as tar:
                for m in tar:
                    check_member(m.name, tar_kind(m), where)  # after it, a member is a file or a folder
                    _check_path(m, tar, part, target, kinds)
        except (tarfile.TarError, EOFError, zlib.error) as e:  # the MANIFEST's digest, yet not a tar.gz
            raise CarryError(f"{part}: not a carry_data part ({e.__class__.__name__}: {e})") from None


def _check_path(m: tarfile.TarInfo, tar: tarfile.TarFile, part: Path, target: Path, kinds: dict[str, str]) -> None:
    """Member `m` and each folder on its way against the parts seen so far (`kinds`) and TARGET."""
    rel = os.path.normpath(m.name)
    if rel == ".":
        return
    steps = rel.split("/")
    if steps[0] == MARKER:
        raise CarryError(f"{part}: a member {shown(rel)} would overwrite the record {MARKER} of the parts unpacked")
    for i in range(len(steps)):
        sub = "/".join(steps[: i + 1])
        want = ("dir" if m.isdir() else "file") if i == len(steps) - 1 else "dir"
        if sub in kinds:
            if kinds[sub] != want:
                raise CarryError(f"{part.parent}: {shown(sub)} is both a file and a folder in the parts")
            continue  # checked already
        kinds[sub] = want
        _check_existing(target / sub, want, tar, m if want == "file" else None, part)


def _check_existing(dest: Path, want: str, tar: tarfile.TarFile, member: tarfile.TarInfo | None, part: Path) -> None:
    """Refuse a member `want` ("file" or "dir") at `dest` when TARGET holds something it would replace."""
    if not (dest.exists() or dest.is_symlink()):
        return
    if dest.is_symlink() or (want == "dir") != dest.is_dir() or not (dest.is_dir() or dest.is_file()):
        held = "link" if dest.is_symlink() else "folder" if dest.is_dir() else "file" if dest.is_file() else "special"
        raise CarryError(
            f"{shown(dest)} is a {held}; {part.name} has a {'folder' if want == 'dir' else 'file'} there: "
            "nothing was unpacked (unpack into another folder, or move it away)"
        )
    if member is not None and not _same_bytes(dest, tar, member):
        raise CarryError(
            f"{shown(dest)} exists with other bytes than {part.name}'s: nothing was unpacked (unpack into another "
            "folder, or move it away)"
        )


def _same_bytes(path: Path, tar: tarfile.TarFile, member: tarfile.TarInfo) -> bool:
    if path.stat().st_size != member.size:
        return False
    h = hashlib.sha256()
    with tar.extractfile(member) as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest() == sha256(path)


class _Parser(argparse.ArgumentParser):
    """One-line errors (argparse's own are the usage block plus a line), as resnetlab's CLI has them
    (cli/args.py, which `pack` cannot import: it runs on the standard library alone)."""

    def error(self, message: str) -> None:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def part_mib(text: str) -> int:
    """--part-mib: a finite number of MiB, at least SMALLEST bytes; the part's size in bytes."""
    allowed = f"a number of MiB from {SMALLEST / 2**20:.3f} up"
    try:
        mib = float(text)
    except ValueError:
        mib = math.nan
    if not (math.isfinite(mib) and mib * 2**20 >= SMALLEST):
        raise argparse.ArgumentTypeError(f"{shown(repr(text)[:60])} is not {allowed}")
    return int(mib * 2**20)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="FOLDER -> .carry/NAME/part-NN + MANIFEST")
    pk.add_argument("folder", type=Path)
    pk.add_argument("name")
    pk.add_argument("--part-mib", type=part_mib, default=PART_BYTES, help="largest part in MiB (default 57.2)")
    ps = sub.add_parser("parts", help="the carry list of each call, one per part")
    ps.add_argument("name")
    up = sub.add_parser("unpack", help="check every part, then unpack into TARGET (parts done are skipped)")
    up.add_argument("name", help="NAME (.carry/NAME) or a folder holding MANIFEST and the parts")
    up.add_argument("target", type=Path)
    args = p.parse_args(argv)
    try:
        if args.cmd == "pack":
            res = pack(args.folder, args.name, args.part_mib)
            for part in res["parts"]:
                print(json.dumps(part))
            if left := res["left_out"]:
                kinds = sorted({MARKER if q.name == MARKER else "resnetlab's caches .resnetlab-*.pt" for q in left})
                print(f"carry_data: left out {len(left)} file(s) that are not data: {', '.join(kinds)}")
            files, size = sum(q["files"] for q in res["parts"]), sum(q["bytes"] for q in res["parts"])
            what = f"{files} files of {args.folder} in {len(res['parts'])} part(s), {size / 1e6:.1f} MB"
            print(f"carry_data: {what}: {CARRY / args.name}")
        elif args.cmd == "parts":
            folder = CARRY / args.name
            sweep(CARRY, args.name)
            _, parts = read_manifest(folder)
            for _, name in parts:
                print(json.dumps([str(folder / name), str(folder / "MANIFEST")]))
        else:
            folder = Path(args.name) if (Path(args.name) / "MANIFEST").is_file() else CARRY / args.name
            res = unpack(folder, args.target)
            n, skipped = len(res["unpacked"]), len(res["skipped"])
            print(f"carry_data: unpacked {n} part(s), skipped {skipped} already there: {args.target}")
    except CarryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        where = f"{shown(e.filename)}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (a pack is swapped in only when whole; unpack records each part)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
