"""Dataset downloads: https only, the publisher's MD5 checked, a mismatch leaves nothing behind."""

from __future__ import annotations

import hashlib
import re
import zipfile

import pytest

from resnetlab.data.readers import CIFAR_ARCHIVES
from resnetlab.detection import data
from resnetlab.errors import UserError


def test_every_download_is_https_with_an_md5():
    urls = [(u, m) for u, m in data.DOWNLOADS.values()] + [(a.url, a.md5) for a in CIFAR_ARCHIVES.values()]
    assert len(urls) == 11
    for url, md5 in urls:
        assert url.startswith("https://"), url
        assert re.fullmatch(r"[0-9a-f]{32}", md5), (url, md5)


def _coco_zip(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("val2017/000000000001.jpg", b"not really a jpeg")
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_coco_download_checked_and_unpacked(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    md5 = _coco_zip(mirror / "val2017.zip")
    monkeypatch.setitem(data.DOWNLOADS, "coco-val2017", ((mirror / "val2017.zip").as_uri(), md5))
    root = tmp_path / "coco"
    data.fetch("coco-val2017", root)
    assert (root / "val2017" / "000000000001.jpg").read_bytes() == b"not really a jpeg"
    assert sorted(p.name for p in root.iterdir()) == ["val2017"]  # the archive is removed once unpacked


def test_coco_download_with_wrong_md5_leaves_nothing(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _coco_zip(mirror / "val2017.zip")
    monkeypatch.setitem(data.DOWNLOADS, "coco-val2017", ((mirror / "val2017.zip").as_uri(), "0" * 32))
    monkeypatch.setitem(data.DOWNLOADS, "coco-annotations2017", ((mirror / "none.zip").as_uri(), "0" * 32))
    root = tmp_path / "coco"
    with pytest.raises(UserError) as e:
        data.download_coco(root, "val2017")
    msg = str(e.value)
    assert "\n" not in msg and "COCO val2017" in msg and "0" * 32 in msg and "removed" in msg
    assert list(root.iterdir()) == []


def test_zip_member_outside_the_target_is_refused(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with zipfile.ZipFile(mirror / "val2017.zip", "w") as z:
        z.writestr("../evil.txt", b"x")
    md5 = hashlib.md5((mirror / "val2017.zip").read_bytes()).hexdigest()
    monkeypatch.setitem(data.DOWNLOADS, "coco-val2017", ((mirror / "val2017.zip").as_uri(), md5))
    with pytest.raises(UserError, match="refusing to extract '../evil.txt'"):
        data.fetch("coco-val2017", tmp_path / "coco")
    assert not (tmp_path / "evil.txt").exists()


def test_unknown_coco_split_is_one_line(tmp_path):
    with pytest.raises(UserError, match="'test2099' cannot be downloaded; known: train2017, val2017"):
        data.download_coco(tmp_path, "test2099")


def test_zip_symlink_is_refused(tmp_path):
    from resnetlab.data.archive import safe_extract

    link = zipfile.ZipInfo("val2017/link")
    link.external_attr = (0o120777) << 16  # S_IFLNK | 0777
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr(link, "/etc/passwd")
    with pytest.raises(UserError, match="a link"):
        safe_extract(tmp_path / "a.zip", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
