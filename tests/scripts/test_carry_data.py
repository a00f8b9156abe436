"""scripts/carry_data.py: a folder packed here into parts of at most --part-mib each with a SHA-256
manifest, carried part by part, checked and unpacked there; a damaged part or an escaping member is
refused in one line before anything is written. Nothing of the user's is deleted or replaced: not a
folder or file in TARGET, not the previous pack when a new one fails, not on a full disk. Every case
runs the script in its own process: exit status, one stderr line, and the files after."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

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


def listing(root: Path) -> dict[str, bytes | None]:
    """Every entry under root, folders as None: what "as it was" means."""
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


def refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2 and one stderr line `error: ...` holding every needle."""
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, (proc.returncode, proc.stderr)
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def packed(tmp_path: Path, files: dict[str, bytes], name: str = "toy", part_mib: float = LIMIT_MIB) -> Path:
    """`files` written under tmp_path/src and packed into tmp_path/here/.carry/NAME: that folder."""
    src, here = tmp_path / "src", tmp_path / "here"
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    here.mkdir(exist_ok=True)
    proc = run(here, "pack", str(src), name, "--part-mib", str(part_mib))
    assert proc.returncode == 0, proc.stderr
    return here / ".carry" / name


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
    assert not (tmp_path / "there").exists()  # refused before anything was made, the target's parent too


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


def test_unpack_never_replaces_a_folder_or_other_bytes_in_the_target(tmp_path):
    folder = packed(tmp_path, {"train/cat/0000.jpg": b"cat", "train/dog/0000.jpg": b"dog"})
    target = tmp_path / "data"
    (target / "train" / "cat" / "0000.jpg").mkdir(parents=True)  # the user's folder of that name
    (target / "train" / "cat" / "0000.jpg" / "mine.txt").write_bytes(b"the user's")
    before = listing(target)
    proc = run(tmp_path, "unpack", str(folder), str(target))
    refused(proc, "0000.jpg is a folder; part-00 has a file there", "nothing was unpacked")
    assert listing(target) == before  # not even train/dog, nor a .carried

    shutil.rmtree(target / "train" / "cat")
    (target / "train" / "cat").write_bytes(b"a file where the pack has a folder")
    before = listing(target)
    refused(run(tmp_path, "unpack", str(folder), str(target)), "cat is a file; part-00 has a folder there")
    assert listing(target) == before

    (target / "train" / "cat").unlink()
    (target / "train" / "dog").mkdir()
    (target / "train" / "dog" / "0000.jpg").write_bytes(b"the user's own dog")
    before = listing(target)
    refused(run(tmp_path, "unpack", str(folder), str(target)), "0000.jpg exists with other bytes than part-00's")
    assert listing(target) == before

    # The same bytes are what an unpack cut short leaves: unpacking again goes on over them.
    (target / "train" / "dog" / "0000.jpg").write_bytes(b"dog")
    proc = run(tmp_path, "unpack", str(folder), str(target))
    assert proc.returncode == 0, proc.stderr
    got = tree(target)
    assert got.pop(".carried") and got == {"train/cat/0000.jpg": b"cat", "train/dog/0000.jpg": b"dog"}


def test_a_failed_pack_keeps_the_previous_one_and_a_good_one_replaces_it(tmp_path):
    folder = packed(tmp_path, {"a.jpg": os.urandom(20_000), "b.jpg": os.urandom(20_000)})
    first = listing(folder)
    (tmp_path / "src" / "c.jpg").write_bytes(os.urandom(60_000))  # larger than a part: refused after a.jpg, b.jpg
    refused(run(tmp_path / "here", "pack", str(tmp_path / "src"), "toy", "--part-mib", str(LIMIT_MIB)), "c.jpg")
    assert listing(folder) == first
    assert sorted(p.name for p in folder.parent.iterdir()) == ["toy"]  # no half-written pack beside it

    (tmp_path / "src" / "c.jpg").write_bytes(b"small now")
    assert run(tmp_path / "here", "pack", str(tmp_path / "src"), "toy", "--part-mib", str(LIMIT_MIB)).returncode == 0
    assert listing(folder) != first and sorted(p.name for p in folder.parent.iterdir()) == ["toy"]
    proc = run(tmp_path, "unpack", str(folder), str(tmp_path / "data"))
    assert proc.returncode == 0 and tree(tmp_path / "data")["c.jpg"] == b"small now"

    (folder / "notes.txt").write_text("the user's")  # not a pack's file: the folder is not ours to replace
    refused(run(tmp_path / "here", "pack", str(tmp_path / "src"), "toy"), "holds notes.txt, not a pack's")
    assert (folder / "notes.txt").read_text() == "the user's"


def test_what_a_killed_pack_left_is_swept_once_its_process_has_ended(tmp_path):
    """A pack killed between its two renames leaves the previous pack in .toy.old-PID-*/toy and no toy:
    `parts` puts it back; a killed pack's .toy.new-PID-* goes; a running pack's (a live PID) stays."""
    folder = packed(tmp_path, {"a.jpg": os.urandom(20_000), "b.jpg": os.urandom(20_000)})
    first, carry = listing(folder), folder.parent
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # a PID that has ended
    (carry / f".toy.old-{ended.pid}-x1").mkdir()
    folder.rename(carry / f".toy.old-{ended.pid}-x1" / "toy")
    (carry / f".toy.new-{ended.pid}-x2").mkdir()
    (carry / f".toy.new-{ended.pid}-x2" / "part-00").write_bytes(b"half a part")
    (carry / f".toy.new-{os.getpid()}-x3").mkdir()  # this test's PID: a pack still running
    (carry / f".other.new-{ended.pid}-x4").mkdir()  # another NAME's: not this sweep's

    proc = run(tmp_path / "here", "parts", "toy")
    assert proc.returncode == 0 and "part-00" in proc.stdout, proc.stderr
    assert listing(folder) == first
    assert sorted(p.name for p in carry.iterdir()) == [
        f".other.new-{ended.pid}-x4",
        f".toy.new-{os.getpid()}-x3",
        "toy",
    ]
    assert run(tmp_path / "here", "pack", str(tmp_path / "src"), "toy").returncode == 0
    assert f".toy.new-{os.getpid()}-x3" in {p.name for p in carry.iterdir()}


def test_the_marker_is_neither_packed_nor_overwritten_by_a_member(tmp_path):
    # A folder unpacked earlier holds its .carried: left out, and said so; the new target's own is made.
    folder = packed(tmp_path, {"a.jpg": b"a", ".carried": b"0" * 64 + b"  part-07\n"})
    proc = run(tmp_path / "here", "pack", str(tmp_path / "src"), "toy")
    assert proc.returncode == 0 and "left out 1 file(s) that are not data: .carried" in proc.stdout
    assert run(tmp_path, "unpack", str(folder), str(tmp_path / "data")).returncode == 0
    assert "part-07" not in (tmp_path / "data" / ".carried").read_text()

    # A part made by hand with a member .carried is refused before anything is written.
    evil = tmp_path / "evil"
    evil.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(".carried")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"x\n\n"))
    (evil / "part-00").write_bytes(buf.getvalue())
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    (evil / "MANIFEST").write_text(f"{digest}  evil.tar.gz\n{digest}  part-00\n")
    before = listing(tmp_path / "data")
    refused(run(tmp_path, "unpack", str(evil), str(tmp_path / "data")), "a member .carried would overwrite the record")
    assert listing(tmp_path / "data") == before


def test_resnetlab_caches_in_the_folder_are_left_out_and_said_so(tmp_path):
    # data/cache.py's decoded split (65 MB for 21k images: larger than a part) and a temp file of one.
    files = {"train/cat/0.jpg": b"cat", "train/.resnetlab-decoded-train-32-auto-0123abcd.pt": os.urandom(80_000)}
    files["train/..resnetlab-decoded-train-32-auto-0123abcd.pt.k2j3.tmp"] = b"half"
    folder = packed(tmp_path, files)
    proc = run(tmp_path / "here", "pack", str(tmp_path / "src"), "toy", "--part-mib", str(LIMIT_MIB))
    assert proc.returncode == 0, proc.stderr
    assert "left out 2 file(s) that are not data: resnetlab's caches .resnetlab-*.pt" in proc.stdout
    assert run(tmp_path, "unpack", str(folder), str(tmp_path / "data")).returncode == 0
    assert sorted(tree(tmp_path / "data")) == [".carried", "train/cat/0.jpg"]


@pytest.mark.parametrize(
    "name", ["a\nb.jpg", "tab\there.jpg", os.fsdecode(b"caf\xe9.jpg")], ids=["newline", "tab", "latin1"]
)
def test_a_name_that_would_not_come_back_the_same_is_refused_at_pack_time(tmp_path, name):
    src = tmp_path / "src" / "train"
    src.mkdir(parents=True)
    (src / "ok.jpg").write_bytes(b"ok")
    (src / name).write_bytes(b"x")
    proc = run(tmp_path, "pack", str(tmp_path / "src"), "toy")
    refused(proc, repr(str(src / name)), "would not unpack under the same name")
    assert not (tmp_path / ".carry" / "toy").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "0", "1e-9", "lots"])
def test_a_bad_part_size_is_one_line(tmp_path, value):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jpg").write_bytes(b"a")
    refused(run(tmp_path, "pack", str(tmp_path / "src"), "toy", f"--part-mib={value}"), repr(value), "MiB from 0.023")
    assert not (tmp_path / ".carry").exists()


def test_bad_arguments_and_a_manifest_that_is_not_text_are_one_line(tmp_path):
    refused(run(tmp_path, "pack", "only-a-folder"), "the following arguments are required: name")
    refused(run(tmp_path, "repack"), "invalid choice: 'repack'")
    refused(run(tmp_path, "pack", str(tmp_path), "a\nb"), "pack NAME: 'a\\nb' is not a plain folder name")
    (tmp_path / ".carry" / "toy").mkdir(parents=True)
    (tmp_path / ".carry" / "toy" / "MANIFEST").write_bytes(b"\xff\xfe not text\n")
    refused(run(tmp_path, "unpack", "toy", str(tmp_path / "data")), "MANIFEST: not a carry_data manifest (not UTF-8")
    refused(run(tmp_path, "parts", "toy"), "not UTF-8")
    assert not (tmp_path / "data").exists()
    (tmp_path / "file").write_text("the user's")
    (tmp_path / ".carry" / "toy" / "MANIFEST").unlink()
    packed(tmp_path, {"a.jpg": b"a"})
    refused(run(tmp_path, "unpack", str(tmp_path / "here" / ".carry" / "toy"), str(tmp_path / "file")), "not a folder")
    assert (tmp_path / "file").read_text() == "the user's"


@pytest.fixture
def small_disk(tmpfs):
    """A 1 MiB tmpfs: a real ENOSPC through tar and gzip."""
    return tmpfs("1m")


def test_a_full_disk_is_reported_as_such_and_loses_nothing(tmp_path, small_disk):
    # pack: a first pack fits; a second, larger than the disk, fails and leaves the first as it was.
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.jpg").write_bytes(os.urandom(100_000))
    assert run(small_disk, "pack", str(small), "toy").returncode == 0
    first = listing(small_disk / ".carry")
    big = tmp_path / "big"
    big.mkdir()
    for i in range(3):
        (big / f"{i}.jpg").write_bytes(os.urandom(400_000))
    proc = run(small_disk, "pack", str(big), "toy", "--part-mib", "0.5")
    refused(proc, "no space left on the device while packing", "the previous pack of toy, if any, is as it was")
    assert listing(small_disk / ".carry") == first
    shutil.rmtree(small_disk / ".carry")

    # unpack: the disk is blamed, not the part ("fetch it again"); the parts done stay recorded.
    here = tmp_path / "here"
    here.mkdir()
    assert run(here, "pack", str(big), "big", "--part-mib", "0.5").returncode == 0
    proc = run(here, "unpack", "big", str(small_disk / "data"))
    refused(proc, "no space left on the device to extract", "part(s) unpacked and recorded: unpack again")
    assert "fetch it again" not in proc.stderr
    done = (small_disk / "data" / ".carried").read_text().splitlines()
    assert done and f"({len(done)} part(s) unpacked and recorded" in proc.stderr
    shutil.rmtree(small_disk / "data")

    # A first part that does not fit: the target is not left behind, the user's file is untouched.
    (small_disk / "mine.bin").write_bytes(os.urandom(900_000))
    before = listing(small_disk)
    refused(run(here, "unpack", "big", str(small_disk / "data" / "sub")), "no space left on the device to extract")
    assert listing(small_disk) == before


def test_a_part_that_is_not_a_tar_gz_is_one_line(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "part-00").write_bytes(b"\x1f\x8b\x08 not a whole gzip stream")
    digest = hashlib.sha256((folder / "part-00").read_bytes()).hexdigest()
    (folder / "MANIFEST").write_text(f"{digest}  odd.tar.gz\n{digest}  part-00\n")  # the digests match
    refused(run(tmp_path, "unpack", str(folder), str(tmp_path / "data")), "part-00: not a carry_data part")
    assert not (tmp_path / "data").exists()
