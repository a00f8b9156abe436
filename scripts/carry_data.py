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
leaving TARGET. gzip at level 1: the 60,000 CIFAR-10 JPEGs share their JPEG headers and tables and
the tar headers compress away (93 MB of tar -> 20 MB); Imagenette's larger JPEGs barely shrink.

`pack` needs only Python's standard library; `unpack` the project's data/archive.py (found from here)
and tqdm, which it imports: the project's Python (on the lent machine /opt/torch/.venv/bin/python).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CARRY = Path(".carry")  # relative to the current folder, as carry_wheels.sh's (the repository root)
PART_BYTES = 60_000_000  # carry_wheels.sh's PART_BYTES
MARKER = ".carried"  # in TARGET: "<sha256>  part-NN" for every part unpacked there
BLOCK = tarfile.BLOCKSIZE  # 512
END = 2 * BLOCK + tarfile.RECORDSIZE  # a tar's end-of-archive blocks, at most, with its record padding


class CarryError(Exception):
    """Bad input or a damaged part: `error: <message>`, exit 2."""


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    """Every file under `folder`, sorted; a link or a special file is refused (it is not data, and a
    link could name something outside the folder)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                raise CarryError(f"{path}: a link or special file; only plain files and folders are packed")
        found += [Path(dirpath) / n for n in sorted(filenames)]
    return found


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


def pack(folder: Path, name: str, part_bytes: int = PART_BYTES, *, carry: Path = CARRY) -> list[dict]:
    """FOLDER's files into carry/NAME/part-NN (each <= part_bytes on disk) and carry/NAME/MANIFEST.
    Returns one {"part", "files", "bytes"} per part."""
    if not folder.is_dir():
        raise CarryError(f"{folder}: not a folder")
    if not name or "/" in name or name.startswith("."):
        raise CarryError(f"pack NAME: {name!r} is not a plain folder name (it becomes .carry/NAME)")
    files = _files(folder)
    if not files:
        raise CarryError(f"{folder}: no files to pack")
    out = carry / name
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("part-*"), out / "MANIFEST"]:  # an earlier pack of the same name
        old.unlink(missing_ok=True)
    parts: list[dict] = []
    part = None
    for path in files:
        member = path.relative_to(folder).as_posix()
        size = path.stat().st_size
        more = _tar_bytes(member, size)
        if part is not None and not part.fits(more, part_bytes):
            parts.append({"part": part.path.name, "files": part.files, "bytes": part.close()})
            part = None
        if part is None:
            if len(parts) == 100:
                raise CarryError(f"{folder}: more than 100 parts of {part_bytes} bytes; pack a larger --part-mib")
            part = _Part(out / f"part-{len(parts):02d}")
            if not part.fits(more, part_bytes):
                part.close()
                raise CarryError(f"{path}: {size} bytes do not fit in a part of {part_bytes} bytes (--part-mib)")
        part.add(path, member, size)
    parts.append({"part": part.path.name, "files": part.files, "bytes": part.close()})
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
    entries = []
    for line in manifest.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) != 64 or not name or "/" in name:
            raise CarryError(f"{manifest}: not a carry_data manifest (line {line[:80]!r})")
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
    """(safe_extract, UserError) of resnetlab.data.archive, loaded from its file: importing it as
    `resnetlab.data.archive` would run data/__init__.py, which imports torch (seconds) for nothing."""
    import importlib.util

    sys.path.insert(0, str(ROOT / "src"))
    from resnetlab.errors import UserError

    spec = importlib.util.spec_from_file_location("_carry_archive", ROOT / "src" / "resnetlab" / "data" / "archive.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.safe_extract, UserError


def unpack(folder: Path, target: Path) -> dict:
    """Check every part, then extract those not yet recorded in TARGET/.carried, recording each."""
    parts = check(folder)
    safe_extract, UserError = _archive()

    target.mkdir(parents=True, exist_ok=True)
    marker = target / MARKER
    done = set(marker.read_text().splitlines()) if marker.is_file() else set()
    unpacked, skipped = [], []
    for digest, name in parts:
        line = f"{digest}  {name}"
        if line in done:
            skipped.append(name)
            continue
        try:
            safe_extract(folder / name, target)
        except UserError as e:
            raise CarryError(str(e)) from None
        with open(marker, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())
        unpacked.append(name)
    return {"target": str(target), "unpacked": unpacked, "skipped": skipped}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="FOLDER -> .carry/NAME/part-NN + MANIFEST")
    pk.add_argument("folder", type=Path)
    pk.add_argument("name")
    pk.add_argument("--part-mib", type=float, default=PART_BYTES / 2**20, help="largest part (default 57.2)")
    ps = sub.add_parser("parts", help="the carry list of each call, one per part")
    ps.add_argument("name")
    up = sub.add_parser("unpack", help="check every part, then unpack into TARGET (parts done are skipped)")
    up.add_argument("name", help="NAME (.carry/NAME) or a folder holding MANIFEST and the parts")
    up.add_argument("target", type=Path)
    args = p.parse_args(argv)
    try:
        if args.cmd == "pack":
            limit = int(args.part_mib * 2**20)
            if limit < 2 * END + 2048:
                raise CarryError(f"--part-mib {args.part_mib}: too small for a part (at least {2 * END + 2048} bytes)")
            parts = pack(args.folder, args.name, limit)
            for part in parts:
                print(json.dumps(part))
            files, size = sum(q["files"] for q in parts), sum(q["bytes"] for q in parts)
            where = CARRY / args.name
            print(f"carry_data: {files} files of {args.folder} in {len(parts)} part(s), {size / 1e6:.1f} MB: {where}")
        elif args.cmd == "parts":
            folder = CARRY / args.name
            _, parts = read_manifest(folder)
            for _, name in parts:
                print(json.dumps([str(folder / name), str(folder / "MANIFEST")]))
        else:
            folder = Path(args.name) if (Path(args.name) / "MANIFEST").is_file() else CARRY / args.name
            res = unpack(folder, args.target)
            n, skipped = len(res["unpacked"]), len(res["skipped"])
            print(f"carry_data: unpacked {n} part(s), skipped {skipped} already there: {args.target}")
    except (CarryError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
