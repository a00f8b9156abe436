"""ImageFolder trees of small images through the CIFAR recipe (issue 21): the same batches as the
built-in CIFAR-10 path on the same pixels (decoded independently here, with PIL), the decoded
cache and its key, sizes, grey images, the evaluated folder by name, the start-up summary."""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.config import load_config
from resnetlab.data import build_data, smallfolder
from resnetlab.data.imagenet import build_imagefolder, compute_stats
from resnetlab.data.summary import summary_lines
from resnetlab.errors import UserError

CPU = torch.device("cpu")
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_folder(root: Path, splits=(("train", 4), ("test", 2)), size=(32, 32), classes=CLASSES, mode="RGB", seed=0):
    """root/SPLIT/CLASS/NNNN.jpg of random smooth images (width, height = size)."""
    g = np.random.default_rng(seed)
    for split, n in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                write_jpeg(root / split / c / f"{i:04d}.jpg", g, size, mode)
    return root


def write_jpeg(path: Path, g: np.random.Generator, size=(32, 32), mode="RGB") -> None:
    w, h = size
    small = g.integers(0, 256, size=(max(1, h // 4), max(1, w // 4), 3), dtype=np.uint8)
    Image.fromarray(small).resize((w, h), Image.BILINEAR).convert(mode).save(path, quality=90)


def pil_split(root: Path, split: str) -> tuple[np.ndarray, list[int]]:
    """Every image of root/split decoded with PIL, in ImageFolder's order: (N, 3, H, W) uint8, labels."""
    images, labels = [], []
    for label, c in enumerate(sorted(p.name for p in (root / split).iterdir())):
        for path in sorted((root / split / c).iterdir()):
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB")).transpose(2, 0, 1))
            labels.append(label)
    return np.stack(images), labels


def write_cifar_archive(path: Path, train: tuple[np.ndarray, list[int]], test: tuple[np.ndarray, list[int]]) -> None:
    """The official CIFAR-10 format: five pickled training batches, a test batch, batches.meta."""
    x, y = train
    parts = np.array_split(np.arange(len(x)), 5)
    batches = {f"data_batch_{i + 1}": (x[p], [y[j] for j in p]) for i, p in enumerate(parts)}
    batches["test_batch"] = test
    with tarfile.open(path, "w:gz") as tar:
        for name, (images, labels) in batches.items():
            _add(tar, name, {"data": images.reshape(len(images), -1), "labels": [int(v) for v in labels]})
        _add(tar, "batches.meta", {"label_names": CLASSES, "num_vis": 3072})


def _add(tar: tarfile.TarFile, name: str, obj: dict) -> None:
    blob = pickle.dumps(obj, protocol=2)
    info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
    info.size = len(blob)
    tar.addfile(info, io.BytesIO(blob))


def folder_cfg(root: Path, *extra: str):
    return load_config(
        None,
        [
            "data.name=imagefolder",
            f"data.dir={root}",
            "data.eval_split=test",
            "data.workers=0",
            "train.batch_size=8",
            "train.eval_batch_size=7",
            *extra,
        ],
    )


@pytest.fixture
def twin(tmp_path, official_cifar):
    """The same pixels twice: a folder of JPEGs, and its PIL decoding packed as the built-in CIFAR-10."""
    folder = write_folder(tmp_path / "folder")
    archive = tmp_path / "cifar" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    write_cifar_archive(archive, pil_split(folder, "train"), pil_split(folder, "test"))
    official_cifar("cifar10", archive)
    return folder, archive.parent


def test_folder_batches_equal_the_builtin_path(twin):
    folder, cifar = twin
    a = build_data(folder_cfg(folder), CPU)
    builtin = [f"data.dir={cifar}", "data.download=false", "train.batch_size=8", "train.eval_batch_size=7"]
    b = build_data(load_config(None, builtin), CPU)
    assert a.meta["recipe"] == "cifar" and (a.image_size, a.in_channels, a.classes) == (32, 3, CLASSES)
    assert torch.equal(a.meta["mean"], b.meta["mean"]) and a.meta["mean"].shape == (3, 32, 32)
    for it in (0, 1, 5, 9):  # 40 images, batch 8: epochs 0, 1 and 2
        (xa, ya), (xb, yb) = a.train.batch(it), b.train.batch(it)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(a.test.batches(), b.test.batches(), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_folder_trains_like_the_builtin_path_and_evaluates_by_split(twin, tmp_path, capsys):
    from resnetlab.cli import main
    from resnetlab.train import run_training

    folder, cifar = twin
    common = ["train.max_iters=2", "train.eval_every=2", "train.log_every=1", "train.device=cpu", "train.batch_size=8"]
    run_training(folder_cfg(folder, *common), tmp_path / "a")
    run_training(load_config(None, [f"data.dir={cifar}", "data.download=false", *common]), tmp_path / "b")
    wa = torch.load(tmp_path / "a" / "final.pt", weights_only=True)["model"]
    wb = torch.load(tmp_path / "b" / "final.pt", weights_only=True)["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    out = capsys.readouterr().out
    assert "CIFAR recipe (data.recipe=auto and cifar_resnet20 is a CIFAR network)" in out
    assert "train 40 images, 10 classes; test 20 images, 10 classes (evaluated: test)" in out
    assert "test error" in out
    summary = json.loads((tmp_path / "a" / "data.json").read_text())
    assert summary["splits"] == {"train": {"images": 40, "classes": 10}, "test": {"images": 20, "classes": 10}}
    assert summary["input_size"] == [3, 32, 32] and summary["iters_per_epoch"] == 5
    last = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["eval_split"] == "test"

    # evaluate: the folder's test/ on the original images gives the error training measured.
    argv = ["evaluate", "--checkpoint", str(tmp_path / "a" / "final.pt"), "--device", "cpu", "--json"]
    assert main([*argv, "--split", "test"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["split"] == "test" and r["images"] == 20 and r["top1_error"] == pytest.approx(last["test_error"])
    assert main([*argv, "--split", "val"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the "data: DIR (from the checkpoint)" note
    assert err.startswith("error: ") and "does not exist (--split=val); it has test/: set --split=test" in err
    # a built-in dataset's checkpoint has one test split: --split is refused, not ignored
    argv[2] = str(tmp_path / "b" / "final.pt")
    assert main([*argv, "--split", "test", "--data-dir", str(cifar)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --split test: cifar10 checkpoints") and "\n" not in err


def user_caches(xdg: Path, pattern: str = "decoded-*.pt") -> list[Path]:
    return sorted((xdg / "resnetlab" / "folders").glob(f"*/{pattern}"))


@pytest.fixture
def xdg(tmp_path, monkeypatch) -> Path:
    """The user cache folder of this test ($XDG_CACHE_HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


def test_decoded_cache_is_reused_and_rebuilt_when_the_folder_changes(tmp_path, monkeypatch, xdg):
    folder = write_folder(tmp_path / "f", classes=CLASSES[:2])
    cfg = folder_cfg(folder, "train.batch_size=4")
    first = build_data(cfg, CPU)
    caches = [p.name for p in user_caches(xdg)]
    assert [n.split("-")[1] for n in caches] == ["test", "train"]
    assert not [p for p in folder.rglob("*") if p.name.startswith(".")]  # the data folder is the user's

    real = smallfolder.decode_images
    calls = []
    monkeypatch.setattr(smallfolder, "decode_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = build_data(cfg, CPU)  # unchanged: read from the cache
    assert calls == [] and torch.equal(again.train.images, first.train.images)

    # Repaint one image: same name, same 32x32 size, new pixels, a new modification time.
    path = folder / "train" / CLASSES[1] / "0002.jpg"
    write_jpeg(path, np.random.default_rng(99))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    repainted = build_data(cfg, CPU)
    assert calls == [1]  # train decoded afresh, test still cached
    expected, _ = pil_split(folder, "train")
    assert torch.equal(repainted.train.images, torch.from_numpy(expected))
    assert [p.name for p in user_caches(xdg, "decoded-train-*.pt")] != [caches[1]]
    assert len(user_caches(xdg, "decoded-train-*.pt")) == 1  # the stale one is gone

    write_jpeg(folder / "train" / CLASSES[0] / "0009.jpg", np.random.default_rng(7))  # one more image
    added = build_data(cfg, CPU)
    assert len(added.train) == 9 and added.summary["splits"]["train"]["images"] == 9


@pytest.mark.parametrize("place", ["user", "data", "none"])
def test_data_cache_says_where_the_cache_goes(tmp_path, xdg, place):
    folder = write_folder(tmp_path / "f", classes=CLASSES[:2])
    build_data(folder_cfg(folder, "train.batch_size=4", f"data.cache={place}"), CPU)
    beside = sorted(p.name.split("-")[2] for p in folder.glob(".resnetlab-decoded-*.pt"))
    assert beside == (["test", "train"] if place == "data" else [])
    assert len(user_caches(xdg)) == (2 if place == "user" else 0)


def test_mixed_sizes_are_refused_in_one_line(tmp_path):
    folder = write_folder(tmp_path / "f", classes=CLASSES[:2])
    write_jpeg(folder / "train" / CLASSES[1] / "0001.jpg", np.random.default_rng(1), size=(40, 40))
    with pytest.raises(UserError) as e:
        build_data(folder_cfg(folder, "train.batch_size=4"), CPU)
    msg = str(e.value)
    assert "\n" not in msg and "0001.jpg is 40x40" in msg and "data.image_size=N" in msg
    write_jpeg(folder / "train" / CLASSES[1] / "0001.jpg", np.random.default_rng(1), size=(32, 40))
    with pytest.raises(UserError, match="is 32x40, not square"):
        build_data(folder_cfg(folder, "train.batch_size=4"), CPU)


def test_image_size_resizes_once_when_decoding(tmp_path):
    folder = write_folder(tmp_path / "f", size=(48, 40), classes=CLASSES[:2])
    b = build_data(folder_cfg(folder, "train.batch_size=4", "data.image_size=20"), CPU)
    assert b.image_size == 20 and b.train.images.shape == (8, 3, 20, 20) and b.summary["input_size"] == [3, 20, 20]
    # Independently: PIL's antialiased resize of the shorter side to 20, then the central 20x20.
    with Image.open(folder / "train" / CLASSES[0] / "0000.jpg") as im:
        ref = np.asarray(im.convert("RGB").resize((24, 20), Image.BILINEAR))[:, 2:22].transpose(2, 0, 1)
    diff = (b.train.images[0].int() - torch.from_numpy(ref.copy()).int()).abs().float()
    assert diff.mean() < 0.5 and diff.max() <= 2

    # Mixed sizes are fine with a size; a large JPEG is decoded reduced (DCT) to >= 2x, then resized.
    big = folder / "train" / CLASSES[1] / "0009.jpg"
    write_jpeg(big, np.random.default_rng(5), size=(256, 200))
    b = build_data(folder_cfg(folder, "train.batch_size=4", "data.image_size=20"), CPU)
    with Image.open(big) as im:
        ref = np.asarray(im.convert("RGB").resize((25, 20), Image.BILINEAR))[:, 2:22].transpose(2, 0, 1)
    diff = (b.train.images[-1].int() - torch.from_numpy(ref.copy()).int()).abs().float()
    assert b.train.images.shape == (9, 3, 20, 20) and diff.mean() < 3


def test_grey_folder_gives_one_channel(tmp_path):
    folder = write_folder(tmp_path / "f", classes=CLASSES[:2], mode="L")
    b = build_data(folder_cfg(folder, "train.batch_size=4"), CPU)
    assert b.in_channels == 1 and b.train.images.shape[1:] == (1, 32, 32)
    with Image.open(folder / "train" / CLASSES[0] / "0000.jpg") as im:
        assert torch.equal(b.train.images[0, 0], torch.from_numpy(np.array(im)))


@pytest.mark.parametrize("recipe", ["cifar", "imagenet"])
def test_eval_split_names_the_folder(tmp_path, recipe):
    folder = write_folder(tmp_path / "f", classes=CLASSES[:2], splits=(("train", 4), ("test", 3)))
    extra = ["train.batch_size=4", f"data.recipe={recipe}", "data.crop=32", "data.scale_min=32", "data.scale_max=40"]
    with pytest.raises(UserError) as e:
        build_data(folder_cfg(folder, *extra, "data.eval_split=val"), CPU)
    assert f"{folder / 'val'} does not exist" in str(e.value) and "set data.eval_split=test" in str(e.value)
    b = build_data(folder_cfg(folder, *extra), CPU)
    assert len(b.test) == 6 and b.summary["eval_split"] == "test" and b.summary["recipe"] == recipe
    held = build_data(folder_cfg(folder, *extra, "data.val_split=2"), CPU)
    assert len(held.test) == 2 and held.summary["splits"]["train"]["images"] == 6


def test_summary_warns_about_keys_that_do_not_apply(tmp_path):
    folder = write_folder(tmp_path / "f", classes=CLASSES[:2])
    cifar = build_data(folder_cfg(folder, "train.batch_size=4", "data.scale_min=300", "data.scale_max=400"), CPU)
    assert [w.split(" does not apply")[0] for w in cifar.summary["warnings"]] == [
        "data.scale_min=300",
        "data.scale_max=400",
    ]
    assert "to the CIFAR recipe" in cifar.summary["warnings"][0]
    extra = ["train.batch_size=4", "data.recipe=imagenet", "data.pad=2", "data.mean_samples=8"]
    imagenet = build_imagefolder(folder_cfg(folder, *extra), CPU)
    warnings = imagenet.summary["warnings"]
    assert warnings[0].startswith("data.pad=2 does not apply to the ImageNet recipe")
    assert "about 32x32, much smaller than the ImageNet recipe's shorter side [256, 480] and crop 224" in warnings[1]
    lines = summary_lines(imagenet.summary)
    assert lines[0].startswith("data: imagefolder") and "ImageNet recipe (data.recipe=imagenet)" in lines[0]
    assert sum(line.startswith("warning: ") for line in lines) == 2


def test_builtin_summary_warns_about_folder_keys(cifar10_dir):
    root, written = cifar10_dir
    cfg = load_config(None, [f"data.dir={root}", "train.batch_size=32", "data.eval_split=test", "data.crop=32"])
    s = build_data(cfg, CPU).summary
    assert s["splits"]["test"] == {"images": 20, "classes": len(set(written["test"]["labels"]))}
    assert s["iters_per_epoch"] == 3 and s["augmentation"].startswith("pad 4 + random 32x32 crop + horizontal flip")
    assert [w.split("=")[0] for w in s["warnings"]] == ["data.crop", "data.eval_split"]


def test_imagenet_mean_cache_follows_the_pixels(tmp_path, xdg):
    """Issue 22: repainting every image (same names, sizes and count) must not reuse the old mean."""
    folder = write_folder(tmp_path / "f", classes=CLASSES[:2], splits=(("train", 4), ("val", 1)))
    cfg = folder_cfg(
        folder, "data.recipe=imagenet", "data.eval_split=val", "data.crop=32", "data.scale_min=32", "train.batch_size=4"
    )
    before = build_imagefolder(cfg, CPU).meta["mean"]
    for i, path in enumerate(sorted((folder / "train").rglob("*.jpg"))):
        write_jpeg(path, np.random.default_rng(100 + i))
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    after = build_imagefolder(cfg, CPU).meta["mean"]
    samples = [(str(p), 0) for p in sorted((folder / "train").rglob("*.jpg"))]
    fresh, _ = compute_stats(samples, crop=32, count=10000, per="pixel", workers=0, skip_corrupt=False)
    assert not torch.equal(before, after) and torch.equal(after, fresh)
    assert len(list((tmp_path / "xdg").rglob("mean-*.pt"))) == 1


def test_unreadable_image_is_named_or_left_out(tmp_path):
    folder = write_folder(tmp_path / "f", classes=CLASSES[:2])
    bad = folder / "train" / CLASSES[0] / "0001.jpg"
    bad.write_bytes(bad.read_bytes()[:30])  # cut short
    with pytest.raises(UserError, match=f"cannot read image {bad}: corrupt or not an image") as e:
        build_data(folder_cfg(folder, "train.batch_size=4"), CPU)
    assert "data.skip_corrupt=true" in str(e.value)
    b = build_data(folder_cfg(folder, "train.batch_size=4", "data.skip_corrupt=true"), CPU)
    assert len(b.train) == 7 and b.summary["warnings"] == [
        f"1 unreadable images left out (data.skip_corrupt=true), e.g. {bad}"
    ]


def test_the_default_data_workers_decodes_the_folder(tmp_path):
    """data.workers: null (one per core, the default since issue 22) reaches the decoding loader resolved."""
    folder = write_folder(tmp_path / "f", classes=CLASSES[:2])
    b = build_data(folder_cfg(folder, "train.batch_size=4", "data.workers=null"), CPU)
    assert b.train.images.shape[1:] == (3, 32, 32)


# ---- pixels, refusals and warnings of the decode (issue 27) --------------------------------------


def test_16_bit_and_float_images_decode_by_their_range_as_predict_reads_them(tmp_path):
    """A folder of 16-bit grey PNGs and float TIFFs: each pixel scaled by its range (v / 257, f * 255,
    rounded; computed here with numpy), not clipped to white or cut to black, and the same values
    `predict` reads (`read_image`)."""
    from resnetlab.data.images import read_image

    g = np.random.default_rng(0)
    expected = {}
    for split, n in (("train", 3), ("test", 1)):
        for c in ("deep", "float"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(n):
                if c == "deep":
                    v = g.integers(0, 65536, size=(32, 32)).astype(np.uint16)
                    path = tmp_path / split / c / f"{i}.png"
                    Image.fromarray(v).save(path)
                    expected[str(path)] = np.rint(v / 257.0).astype(np.uint8)
                else:
                    f = g.random((32, 32), dtype=np.float32)
                    path = tmp_path / split / c / f"{i}.tif"
                    Image.fromarray(f).save(path)
                    expected[str(path)] = np.rint(f.astype(np.float64) * 255.0).astype(np.uint8)
    b = build_data(folder_cfg(tmp_path, "train.batch_size=2"), CPU)
    assert b.in_channels == 1
    paths = sorted(str(p) for p in (tmp_path / "train").rglob("*.*"))
    for x, path in zip(b.train.images, paths, strict=True):
        assert torch.equal(x[0], torch.from_numpy(expected[path])), path
        assert torch.equal(x, read_image(path, channels=1)), path


def bomb_png(path: Path, side: int = 20000) -> None:
    """The header of a side x side 8-bit grey PNG (and an empty image stream): PIL refuses it on
    opening, as a possible decompression bomb, whatever the file holds."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("recipe", ["cifar", "imagenet"])
def test_a_decompression_bomb_is_named_as_such(tmp_path, recipe):
    folder = write_folder(tmp_path / "f", classes=CLASSES[:2], splits=(("train", 2), ("test", 1)))
    bomb = folder / "train" / CLASSES[1] / "huge.png"
    bomb_png(bomb)
    extra = ["train.batch_size=2", f"data.recipe={recipe}", "data.crop=32", "data.scale_min=32", "data.mean_samples=8"]
    with pytest.raises(UserError) as e:
        build_data(folder_cfg(folder, *extra), CPU)
    msg = str(e.value)
    assert f"cannot read image {bomb}: 400,000,000 pixels" in msg and "decompression-bomb" in msg, msg
    assert "corrupt or not an image" not in msg and "\n" not in msg


def test_large_images_under_the_cifar_recipe_are_warned_about(tmp_path):
    """A CIFAR preset on 96-pixel images trains at 96x96 without a word before; now the start says
    what was found and what to set. Resized with data.image_size, nothing to say."""
    folder = write_folder(tmp_path / "f", classes=CLASSES[:2], size=(96, 96), splits=(("train", 2), ("test", 1)))
    b = build_data(folder_cfg(folder, "train.batch_size=2"), CPU)
    [warning] = b.summary["warnings"]
    assert warning.startswith("the training images are 96x96, large for the CIFAR recipe: cifar_resnet20")
    assert "data.image_size=32" in warning and "data.recipe=imagenet" in warning
    assert b.summary["recipe"] == "cifar" and b.summary["input_size"] == [3, 96, 96]
    assert build_data(folder_cfg(folder, "train.batch_size=2", "data.image_size=32"), CPU).summary["warnings"] == []


@pytest.fixture
def decodes(monkeypatch):
    """The number of images of each `decode_images` call, in order; `available(n)` sets the memory."""
    import resnetlab.data.smallfolder as smallfolder

    class Calls(list):
        def available(self, n: int | None) -> None:
            monkeypatch.setattr(smallfolder, "available_memory", lambda: n)

    calls, real = Calls(), smallfolder.decode_images
    monkeypatch.setattr(smallfolder, "decode_images", lambda s, **k: calls.append(len(s)) or real(s, **k))
    return calls


@pytest.mark.parametrize(
    "mode, extra, image, where",
    [
        ("RGB", (), 3 * 96 * 96, "at their own size (96x96, as "),
        ("L", (), 96 * 96, "at their own size (96x96, as "),  # grey: one channel
        ("RGB", ("data.image_size=32",), 3 * 32 * 32, "at 32x32 (data.image_size)"),
    ],
)
def test_a_folder_that_would_not_fit_in_memory_is_refused_before_decoding(tmp_path, decodes, mode, extra, image, where):
    """4 training and 2 test images of 96x96, `image` bytes each decoded. The peak: the training split
    and the float32 copy that its statistics sum (n + 4n images; its batches and their joined tensor:
    2n), 20 images. One byte less: refused in one line that says what to set, before any image is
    decoded; that much: built."""
    folder = write_folder(
        tmp_path / "f", classes=CLASSES[:2], size=(96, 96), mode=mode, splits=(("train", 2), ("test", 1))
    )
    cfg = folder_cfg(folder, "train.batch_size=2", "data.cache=none", *extra)
    decodes.available(20 * image - 1)
    with pytest.raises(UserError) as e:
        build_data(cfg, CPU)
    msg = str(e.value)
    assert f"decoding 4 + 2 images {where}" in msg and "about 0.0 GiB" in msg, msg
    assert "data.image_size=32" in msg and "data.recipe=imagenet" in msg and decodes == []
    decodes.available(20 * image)
    assert build_data(cfg, CPU).summary["input_size"] == [1 if mode == "L" else 3, *[96 if not extra else 32] * 2]
    assert decodes == [4, 2]


def test_a_split_loaded_from_its_cache_is_not_counted_again(tmp_path, decodes):
    """96x96 photos (27,648 bytes each decoded), 8 training and 2 test images. Nothing cached: the
    training split's peak, 8 + 4 x 8 images (1,105,920 bytes), refused with 1,000,000 available. Both
    splits cached: nothing decoded, nothing refused. A test file renamed, its split's cache no longer
    matches: the training split is loaded (it is in use, so MemAvailable has counted it) and only the
    test split is decoded, its peak 2 + 4 x 2 images: built with 276,480, refused with one byte less."""
    folder = write_folder(tmp_path / "f", classes=CLASSES[:2], size=(96, 96), splits=(("train", 4), ("test", 1)))
    decodes.available(1_000_000)
    with pytest.raises(UserError, match=r"decoding 8 \+ 2 images at their own size \(96x96"):
        build_data(folder_cfg(folder, "train.batch_size=2", "data.cache=none"), CPU)
    assert decodes == []
    decodes.available(None)  # unknown: never refused
    cfg = folder_cfg(folder, "train.batch_size=2", "data.cache=data")
    build_data(cfg, CPU)
    assert decodes == [8, 2]
    decodes.available(1_000)
    assert build_data(cfg, CPU).summary["input_size"] == [3, 96, 96] and decodes == [8, 2]
    test = folder / "test" / CLASSES[0]
    (test / "0000.jpg").rename(test / "0001.jpg")
    decodes.available(276_480)
    assert build_data(cfg, CPU).summary["input_size"] == [3, 96, 96] and decodes == [8, 2, 2]
    (test / "0001.jpg").rename(test / "0002.jpg")
    decodes.available(276_479)
    with pytest.raises(UserError, match=r"decoding 2 images at their own size \(96x96, as .*test"):
        build_data(cfg, CPU)
    assert decodes == [8, 2, 2]


def test_a_test_split_of_another_size_is_refused_before_it_is_decoded(tmp_path, decodes):
    folder = write_folder(tmp_path / "f", classes=CLASSES[:2], splits=(("train", 2),))
    write_folder(folder, classes=CLASSES[:2], size=(40, 40), splits=(("test", 1),))
    with pytest.raises(UserError) as e:
        build_data(folder_cfg(folder, "train.batch_size=2"), CPU)
    assert str(e.value) == (
        f"{folder / 'test'} holds 40x40 images, {folder / 'train'} 32x32; set data.image_size=N to resize both"
    )
    assert decodes == [4]  # the training split only


def test_held_out_images_are_the_same_files_when_unreadable_ones_are_left_out(tmp_path):
    """data.val_split holds out a fixed choice of training files; with data.skip_corrupt a file left
    out must not shift that choice onto other files (the indices are into the file list, the rows of
    the decoded tensor skip the file). Each image's pixels say which file it is."""
    folder = tmp_path / "f"
    for c in CLASSES[:2]:
        (folder / "train" / c).mkdir(parents=True)
        for i in range(5):
            Image.new("L", (32, 32), 10 * i + (100 if c == CLASSES[1] else 0)).save(folder / "train" / c / f"{i}.png")
    whole = build_data(folder_cfg(folder, "train.batch_size=2", "data.val_split=4", "data.cache=none"), CPU)
    held = sorted(int(v) for v in whole.test.images[:, 0, 0, 0])
    bad = folder / "train" / CLASSES[0] / "4.png"
    bad.write_bytes(b"not an image")
    cfg = folder_cfg(folder, "train.batch_size=2", "data.val_split=4", "data.cache=none", "data.skip_corrupt=true")
    b = build_data(cfg, CPU)
    assert sorted(int(v) for v in b.test.images[:, 0, 0, 0]) == [v for v in held if v != 40]
    assert len(b.train) + len(b.test) == 9 and 40 not in b.train.images[:, 0, 0, 0].tolist()


GiB = 2**30


def fake_machine(tmp_path: Path, self_cgroup: str, groups: dict[str, dict[str, str]]) -> tuple[Path, Path]:
    """A /proc with 20 GiB MemAvailable and /proc/self/cgroup, and a /sys/fs/cgroup of `groups`
    (folder -> its files)."""
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: {24 * GiB // 1024} kB\nMemAvailable: {20 * GiB // 1024} kB\n")
    (proc / "self" / "cgroup").write_text(self_cgroup)
    for folder, files in groups.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (root / folder / name).write_text(text)
    return proc, root


@pytest.mark.parametrize(
    "self_cgroup, groups, expected",
    [
        # cgroup v2, a container limit of 4 GiB with 1 GiB used, of it 0.5 GiB droppable page cache
        ("0::/box\n", {"box": {"memory.max": f"{4 * GiB}\n", "memory.current": f"{GiB}\n",
                               "memory.stat": f"anon 1\ninactive_file {GiB // 2}\n"}}, 3.5 * GiB),
        # v2 without a limit: the machine's 20 GiB
        ("0::/box\n", {"box": {"memory.max": "max\n", "memory.current": "5\n", "memory.stat": ""}}, 20 * GiB),
        # v1 (this machine's kind), the group seen at the mount's root from inside a container
        ("4:memory:/docker/abc\n1:cpu:/\n", {"memory": {"memory.limit_in_bytes": f"{2 * GiB}\n",
                                                        "memory.usage_in_bytes": f"{GiB}\n",
                                                        "memory.stat": "total_inactive_file 0\n"}}, 1 * GiB),
        # v1 without a limit (2**63 rounded down to a page)
        ("4:memory:/a\n", {"memory/a": {"memory.limit_in_bytes": "9223372036854771712\n",
                                        "memory.usage_in_bytes": "7\n", "memory.stat": ""}}, 20 * GiB),
        ("", {}, 20 * GiB),  # no cgroup information at all
    ],
)  # fmt: skip
def test_available_memory_is_the_smaller_of_the_machines_and_the_cgroups(tmp_path, self_cgroup, groups, expected):
    """A container with a memory limit was asked to decode what only the whole machine could hold."""
    proc, root = fake_machine(tmp_path, self_cgroup, groups)
    assert smallfolder.available_memory(proc, root) == expected


def test_the_memory_refusal_counts_only_splits_that_have_images(tmp_path):
    """With data.val_split the test split is held out of train/: it has no files of its own to count."""
    write_folder(tmp_path, splits=(("train", 3),))
    train = sorted((str(p), 0) for p in (tmp_path / "train").rglob("*.jpg"))
    with pytest.raises(UserError) as e:
        smallfolder.refuse_beyond_memory([train, []], image_size=0, channels=None, available=1)
    assert str(e.value).startswith(f"decoding {len(train)} images at their own size (32x32, as ")



def test_data_flip_false_trains_a_folder_without_mirror_images(tmp_path):
    """A folder of digits or text: data.flip=false keeps the pad + crop, drops the flips (the built-in
    MNIST does so by itself)."""
    folder = write_folder(tmp_path / "f")
    b = build_data(folder_cfg(folder, "data.flip=false"), CPU)
    assert not any(b.train.augmentation(it)[2].any() for it in range(4))
    assert b.summary["augmentation"] == "pad 4 + random 32x32 crop, on the device"
    assert any(build_data(folder_cfg(folder), CPU).train.augmentation(it)[2].any() for it in range(4))
