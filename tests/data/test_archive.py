"""Archive handling: MD5 check, download errors, and an extraction that refuses hostile members."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import tarfile

import pytest

from resnetlab.data.archive import check_md5, download, safe_extract
from resnetlab.errors import UserError


def _tar(path, members):
    """members: (TarInfo, bytes | None) pairs written as given, hostile or not."""
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name, data=b"x"):
    return tarfile.TarInfo(name), data


def _special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def test_md5_mismatch_names_file_expected_and_actual(tmp_path):
    f = tmp_path / "a.tar.gz"
    f.write_bytes(b"not the archive")
    actual = hashlib.md5(b"not the archive").hexdigest()
    with pytest.raises(UserError) as e:
        check_md5(f, "0" * 32)
    assert str(f) in str(e.value) and "0" * 32 in str(e.value) and actual in str(e.value)
    check_md5(f, actual)  # the right one passes


def test_safe_extract_plain_archive(tmp_path):
    archive = _tar(tmp_path / "ok.tar.gz", [_file("top/a.txt", b"hello"), _file("top/sub/b.txt", b"world")])
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out/top/a.txt").read_bytes() == b"hello"
    assert (tmp_path / "out/top/sub/b.txt").read_bytes() == b"world"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["top"]  # no temp folder left behind


@pytest.mark.parametrize(
    "member",
    [
        _file("../evil"),
        _file("top/../../evil"),
        _file("/tmp/evil_absolute_resnetlab"),
        _special("top/link", tarfile.SYMTYPE, "/etc/passwd"),
        _special("top/inner_link", tarfile.SYMTYPE, "a.txt"),  # even a harmless-looking link
        _special("top/hard", tarfile.LNKTYPE, "top/a.txt"),
        _special("top/dev", tarfile.CHRTYPE),
        _special("top/fifo", tarfile.FIFOTYPE),
    ],
    ids=["parent", "nested-parent", "absolute", "symlink-out", "symlink-in", "hardlink", "chardev", "fifo"],
)
def test_safe_extract_refuses_hostile_members(tmp_path, member):
    archive = _tar(tmp_path / "bad.tar.gz", [_file("top/a.txt"), member])
    out = tmp_path / "out"
    with pytest.raises(UserError, match="refusing to extract"):
        safe_extract(archive, out)
    # Checked before anything is written: nothing at all lands, inside or outside.
    assert list(out.iterdir()) == []
    assert not (tmp_path / "evil").exists()


@pytest.mark.parametrize("mine", ["folder", "file"])
def test_safe_extract_never_swaps_a_file_for_a_folder_of_the_same_name(tmp_path, mine):
    # a file of the archive used to replace a folder of the user's (rmtree), after other files had moved in
    out = tmp_path / "out"
    (out / "top").mkdir(parents=True)
    if mine == "folder":
        (out / "top/notes").mkdir()
        (out / "top/notes/kept.txt").write_text("mine")
        archive = _tar(tmp_path / "a.tar.gz", [_file("top/a.txt", b"new"), _file("top/notes", b"theirs")])
    else:
        (out / "top/notes").write_text("mine")
        archive = _tar(tmp_path / "a.tar.gz", [_file("top/a.txt", b"new"), _file("top/notes/b.txt", b"theirs")])
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(UserError, match=f"refusing to extract: {out / 'top/notes'} is a {mine} here"):
        safe_extract(archive, out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before  # not even top/a.txt moved in


def test_safe_extract_corrupt_archive(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(UserError, match="cannot extract"):
        safe_extract(bad, tmp_path / "out")


def test_safe_extract_on_a_full_disk_blames_the_disk_not_the_archive(tmp_path, monkeypatch):
    # ENOSPC raised where tarfile writes a member's bytes (a real full disk: tests/scripts/test_carry_data.py).
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    archive = _tar(tmp_path / "ok.tar.gz", [_file("a.txt", b"hello")])
    monkeypatch.setattr(tarfile, "copyfileobj", full)
    with pytest.raises(UserError) as e:
        safe_extract(archive, tmp_path / "out")
    assert "no space left on the device" in str(e.value) and "fetch it again" not in str(e.value)
    assert list((tmp_path / "out").iterdir()) == []


def test_download_file_url_and_failure(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    download(src.as_uri(), tmp_path / "dl/copy.bin", md5=hashlib.md5(b"payload").hexdigest())
    assert (tmp_path / "dl/copy.bin").read_bytes() == b"payload"
    with pytest.raises(UserError, match="could not download"):
        download((tmp_path / "missing.bin").as_uri(), tmp_path / "dl/missing.bin", md5="0" * 32)
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["copy.bin"]  # no partial file left


def test_download_with_wrong_checksum_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"tampered")
    with pytest.raises(UserError) as e:
        download(src.as_uri(), tmp_path / "dl/archive.tar.gz", md5=hashlib.md5(b"official").hexdigest())
    msg = str(e.value)
    assert "\n" not in msg and hashlib.md5(b"tampered").hexdigest() in msg and "removed" in msg
    assert list((tmp_path / "dl").iterdir()) == []  # neither the file nor its .part


def test_download_refuses_plain_http(tmp_path):
    with pytest.raises(UserError, match="only https"):
        download("http://images.cocodataset.org/zips/val2017.zip", tmp_path / "x.zip", md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_downloaded_file_gets_the_umask_mode(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    old = os.umask(0o027)
    try:
        download(src.as_uri(), tmp_path / "copy.bin", md5=hashlib.md5(b"payload").hexdigest())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "copy.bin").stat().st_mode) == 0o640  # 0o666 & ~0o027, not mkstemp's 0600


def test_two_processes_unpacking_the_same_archive_both_succeed(tmp_path, monkeypatch):
    """Two runs unpack CIFAR-10 into one data.dir at once: the other one moves cifar-10-batches-py/ into
    place between this one's check and its rename (ENOTEMPTY), which ended in "cannot extract"."""
    from pathlib import Path

    archive = _tar(tmp_path / "ok.tar.gz", [_file("top/a.txt", b"hello"), _file("top/sub/b.txt", b"world")])
    real = os.replace

    def the_other_process_first(src, dst):
        if Path(src).is_dir() and not Path(dst).exists():
            (Path(dst) / "sub").mkdir(parents=True)
            (Path(dst) / "a.txt").write_bytes(b"hello")
            (Path(dst) / "sub" / "b.txt").write_bytes(b"world")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", the_other_process_first)
    safe_extract(archive, tmp_path / "out")
    assert (tmp_path / "out/top/a.txt").read_bytes() == b"hello"
    assert (tmp_path / "out/top/sub/b.txt").read_bytes() == b"world"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["top"]
