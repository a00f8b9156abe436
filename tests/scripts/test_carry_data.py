"""scripts/carry_data.py: a folder packed here into parts of at most --part-mib each with a SHA-256
manifest, carried part by part, checked and unpacked there; a damaged part or an escaping member is
refused in one line before anything is written."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "carry_data.py"
LIMIT_MIB = 0.05  # 52,428 bytes a part: a folder of ~200 KB needs several


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=os.environ
    )


def make_folder(root: Path) -> dict[str, bytes]:
    """train/<class>/*.jpg and test/<class>/*.jpg of random (incompressible) bytes, one long path."""
    files = {}
    for split, n in (("train", 6), ("test", 3)):
        for cls in ("cat", "dog", "frog"):
            for i in range(n):
                files[f"{split}/{cls}/{i:04d}.jpg"] = os.urandom(3000 + 1500 * i)
    files[f"train/cat/{'x' * 120}.jpg"] = b"a name longer than a tar header's 100 bytes"
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def carried(here: Path, there: Path, name: str) -> Path:
    """What the lent machine holds once every call carried its part and the MANIFEST."""
    (there / ".carry" / name).mkdir(parents=True)
    for f in (here / ".carry" / name).iterdir():
        shutil.copy(f, there / ".carry" / name / f.name)
    return there / ".carry" / name


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_round_trip_in_small_parts_and_unpacking_twice_skips(tmp_path):
    src, here, there = tmp_path / "src", tmp_path / "here", tmp_path / "there"
    src.mkdir()
    here.mkdir()
    files = make_folder(src)
    proc = run(here, "pack", str(src), "toy", "--part-mib", str(LIMIT_MIB))
    assert proc.returncode == 0, proc.stderr
    parts = sorted((here / ".carry" / "toy").glob("part-*"))
    payload = sum(len(b) for b in files.values())
    assert len(parts) >= payload // int(LIMIT_MIB * 2**20) + 1 >= 3
    assert all(p.stat().st_size <= LIMIT_MIB * 2**20 for p in parts)
    # The MANIFEST is sha256sum's format: each part, and the joined archive (`cat part-*`).
    manifest = (here / ".carry" / "toy" / "MANIFEST").read_text().splitlines()
    joined = b"".join(p.read_bytes() for p in parts)
    assert manifest[0] == f"{hashlib.sha256(joined).hexdigest()}  toy.tar.gz"
    assert manifest[1:] == [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in parts]
    listing = run(here, "parts", "toy").stdout.splitlines()
    assert listing[0] == '[".carry/toy/part-00", ".carry/toy/MANIFEST"]' and len(listing) == len(parts)

    carried(here, there, "toy")
    target = tmp_path / "data"
    proc = run(there, "unpack", "toy", str(target))
    assert proc.returncode == 0, proc.stderr
    got = tree(target)
    assert got.pop(".carried").decode().count("part-") == len(parts)
    assert got == files
    (target / "train/cat/0000.jpg").write_bytes(b"changed there")  # a part already unpacked is skipped
    proc = run(there, "unpack", "toy", str(target))
    assert proc.returncode == 0 and f"unpacked 0 part(s), skipped {len(parts)}" in proc.stdout
    assert (target / "train/cat/0000.jpg").read_bytes() == b"changed there"


def test_a_damaged_or_missing_part_is_refused_in_one_line(tmp_path):
    src, here, there = tmp_path / "src", tmp_path / "here", tmp_path / "there"
    src.mkdir()
    here.mkdir()
    make_folder(src)
    assert run(here, "pack", str(src), "toy", "--part-mib", str(LIMIT_MIB)).returncode == 0
    folder = carried(here, there, "toy")
    data = bytearray((folder / "part-01").read_bytes())
    data[100] ^= 0xFF
    (folder / "part-01").write_bytes(bytes(data))
    target = tmp_path / "data"
    proc = run(there, "unpack", "toy", str(target))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "part-01: SHA-256 differs from the MANIFEST" in proc.stderr
    assert not target.exists()  # checked before anything was written
    (folder / "part-01").unlink()
    proc = run(there, "unpack", "toy", str(target))
    assert proc.returncode == 2 and "part-01 is missing" in proc.stderr and "Traceback" not in proc.stderr


def test_a_member_escaping_the_target_is_refused(tmp_path):
    folder = tmp_path / ".carry" / "evil"
    folder.mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("ok.txt", "../escaped.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    (folder / "part-00").write_bytes(buf.getvalue())
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    (folder / "MANIFEST").write_text(f"{digest}  evil.tar.gz\n{digest}  part-00\n")  # a valid manifest
    target = tmp_path / "there" / "data"
    proc = run(tmp_path, "unpack", "evil", str(target))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "refusing to extract '../escaped.txt'" in proc.stderr
    assert not (tmp_path / "there" / "escaped.txt").exists() and not (target / "ok.txt").exists()
    assert not (target / ".carried").exists()


def test_pack_refuses_links_and_a_file_larger_than_a_part(tmp_path):
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    (src / "train" / "a.jpg").write_bytes(b"x")
    (src / "train" / "link.jpg").symlink_to("/etc/passwd")
    proc = run(tmp_path, "pack", str(src), "toy")
    assert proc.returncode == 2 and "link.jpg: a link or special file" in proc.stderr
    (src / "train" / "link.jpg").unlink()
    (src / "train" / "big.jpg").write_bytes(os.urandom(60_000))
    proc = run(tmp_path, "pack", str(src), "toy", "--part-mib", str(LIMIT_MIB))
    assert proc.returncode == 2 and "big.jpg: 60000 bytes do not fit" in proc.stderr and "Traceback" not in proc.stderr
