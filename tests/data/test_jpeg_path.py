"""The fast JPEG path: decoding against PIL, the windowed resize against resize-then-crop, the
training views against torchvision's transforms.v2 recipe in distribution, and the device-decode path
(run here on the CPU, where decode_jpeg is libjpeg-turbo) against the worker path."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from resnetlab.data.device_decode import decode_jpegs, device_views
from resnetlab.data.imagenet import _collate, _Views, build_imagefolder
from resnetlab.data.images import MAX_IMAGE_BYTES, decode_image, read_bytes, read_image, resized_crop
from resnetlab.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from make_imagefolder import natural_image, write_odd_files  # noqa: E402

from .test_imagenet import config, write_tree  # noqa: E402


@pytest.fixture(scope="module")
def odd(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("odd")
    return {p.stem.removeprefix("odd_"): p for p in write_odd_files(folder, np.random.default_rng(0))}


def pil_rgb(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        return TF.pil_to_tensor(im.convert("RGB"))


@pytest.mark.parametrize("kind", ["png", "cmyk", "gray"])
def test_decoded_images_match_pil(odd, kind):
    # RGB/gray JPEGs go through decode_jpeg (libjpeg-turbo), the rest through PIL: either way PIL's pixels,
    # within JPEG decoder tolerance (the same libjpeg-turbo IDCT: here exact or off by one level).
    ours = read_image(str(odd[kind]))
    ref = pil_rgb(odd[kind])
    assert ours.shape == ref.shape == (3, 375, 500) and ours.dtype == torch.uint8
    assert (ours.int() - ref.int()).abs().max() <= 1


def test_rgb_jpeg_matches_pil(tmp_path):
    path = tmp_path / "a.JPEG"
    Image.fromarray(natural_image(np.random.default_rng(1), 333, 250)).save(path, quality=90)
    ours, full = decode_image(path.read_bytes(), str(path))
    assert full == (250, 333) and (ours.int() - pil_rgb(path).int()).abs().max() <= 1


def test_reduced_decode_is_never_smaller_than_asked(tmp_path):
    path = tmp_path / "big.JPEG"
    Image.fromarray(natural_image(np.random.default_rng(2), 1200, 900)).save(path, quality=90)
    img, full = decode_image(path.read_bytes(), str(path), at_least=(256, 341))
    assert full == (900, 1200) and img.shape[-2:] == (450, 600)  # 1/2: 1/4 would be 225 < 256
    ref = TF.resize(pil_rgb(path), [256], antialias=True)
    ours = TF.resize(img, [256], antialias=True)
    assert (ours.float() - ref.float()).abs().mean() < 3  # DCT-domain downscaling: close, not equal


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_unreadable_files_are_named(odd, kind):
    with pytest.raises(UserError, match=f"odd_{kind}.JPEG"):
        read_image(str(odd[kind]))


def _coordinate_image(path: Path, w: int = 500, h: int = 375) -> None:
    """PNG (lossless) whose red channel is the column and green the row: a view tells where it came from."""
    x = np.broadcast_to(np.linspace(0, 255, w), (h, w))
    y = np.broadcast_to(np.linspace(0, 255, h)[:, None], (h, w))
    Image.fromarray(np.stack([x, y, np.zeros((h, w))], -1).round().astype(np.uint8)).save(path, format="PNG")


def _geometry(view: torch.Tensor, w: int = 500, h: int = 375) -> tuple[float, float, float, float]:
    """(shorter side it was resized to, left, top in the resized image, flipped 0/1) of a coordinate view."""
    r, gch = view[0].double(), view[1].double()
    slope = (r[:, -20:].mean() - r[:, :20].mean()) / (view.shape[-1] - 20)  # red levels per output column
    flipped = float(slope < 0)
    width = 255 / abs(slope) * (w - 1) / w  # resized width W'
    scale = width * min(h, w) / w
    rows = (gch[-20:].mean() - gch[:20].mean()) / (view.shape[-2] - 20)
    height = 255 / rows * (h - 1) / h
    left = (r[:, -1] if flipped else r[:, 0]).mean() / 255 * (w - 1) * width / w
    top = gch[0].mean() / 255 * (h - 1) * height / h
    return float(scale), float(left), float(top), flipped


def _ks(a: list[float], b: list[float]) -> float:
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    return float(np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b)).max())


def test_training_views_agree_in_distribution_with_torchvision(tmp_path):
    path = tmp_path / "coords.png"
    _coordinate_image(path)
    n = 300
    views = _Views([(str(path), 0)], crop=224, view="random", scale=(256, 480))
    ours = [_geometry(views[(0, seed)][0]) for seed in range(n)]
    torch.manual_seed(0)
    ref_t = v2.Compose([v2.RandomShortestSize(list(range(256, 481))), v2.RandomCrop(224), v2.RandomHorizontalFlip()])
    with Image.open(path) as im:
        im = im.convert("RGB")
        ref = [_geometry(TF.pil_to_tensor(ref_t(im))) for _ in range(n)]
    critical = 1.95 * np.sqrt(2 / n)  # KS at alpha = 0.001
    for k, name in enumerate(("scale", "left", "top", "flip")):
        a, b = [o[k] for o in ours], [r[k] for r in ref]
        assert _ks(a, b) < critical, name
    scales = np.array([o[0] for o in ours])
    assert 250 < scales.min() < 270 and 465 < scales.max() < 490  # the draws span [256, 480]


def test_device_decode_path_on_cpu_equals_worker_path(tmp_path):
    root = write_tree(tmp_path / "tree", per_class=4, val_per_class=1)
    cfg = ["data.lighting=0.1", "train.batch_size=6"]
    a = build_imagefolder(config(root, *cfg), torch.device("cpu")).train
    b = build_imagefolder(config(root, *cfg, "data.decode=device"), torch.device("cpu")).train
    assert b.loader.dataset.encoded
    for (xa, ya), (xb, yb), _ in zip(a.batches(0), b.batches(0), range(3)):
        # the same pixels; the float work ran per image in a's workers and on the batch in b's process
        torch.testing.assert_close(xb, xa, atol=1e-6, rtol=0)
        assert torch.equal(ya, yb)


def test_device_views_fall_back_and_drop(odd, tmp_path):
    good = tmp_path / "good.JPEG"
    Image.fromarray(natural_image(np.random.default_rng(3), 300, 200)).save(good, quality=90)
    items = []
    for path in (good, odd["truncated"], odd["gray"]):
        data = path.read_bytes()
        items.append((None, 0, torch.zeros(3), [], None, (data, str(path), (256, 384), 10, 20, True)))
    *_, encoded = _collate(items)
    views, kept, failed = device_views(encoded, 224, torch.device("cpu"))
    assert views.shape == (2, 3, 224, 224) and kept == [0, 2] and failed == [str(odd["truncated"])]
    ref = resized_crop(read_image(str(good)), (256, 384), 10, 20, 224).flip(-1)
    assert torch.equal(views[0], ref)
    assert decode_jpegs([torch.frombuffer(bytearray(b"nope"), dtype=torch.uint8)], torch.device("cpu")) == [None]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA: nvjpeg decoding is covered by the CPU tests above")
def test_nvjpeg_matches_cpu_decoding(tmp_path):
    path = tmp_path / "a.JPEG"
    Image.fromarray(natural_image(np.random.default_rng(4), 500, 375)).save(path, quality=90)
    data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    gpu = decode_jpegs([data, data], torch.device("cuda"))
    cpu = read_image(str(path))
    assert (gpu[0].cpu().int() - cpu.int()).abs().float().mean() < 1.0  # different IDCTs: close, not equal


def test_skip_corrupt_with_device_decoding(tmp_path, odd):
    root = write_tree(tmp_path / "tree", per_class=2, val_per_class=1)
    for kind in ("truncated", "png", "cmyk"):
        (root / "train" / "bee" / odd[kind].name).write_bytes(odd[kind].read_bytes())
    bundle = build_imagefolder(
        config(root, "data.skip_corrupt=true", "train.batch_size=9", "data.decode=device"), torch.device("cpu")
    )
    x, y = next(bundle.train.batches(0))  # the whole epoch; PNG and CMYK decoded by the workers (PIL)
    # The truncated JPEG has a valid header, so it reaches the device decoder, fails there and on the
    # CPU, and is dropped from its batch (the worker path replaces it instead), counted and named.
    assert x.shape == (8, 3, 32, 32) and len(y) == 8 and bundle.train.skipped == 1
    assert bundle.train.skipped_files == {str(root / "train" / "bee" / "odd_truncated.JPEG")}


def test_dali_absent_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if not installed (the dev install has it)
    root = write_tree(tmp_path / "tree", per_class=2, val_per_class=1)
    with pytest.raises(UserError, match=r"NVIDIA DALI is not installed \(pip install 'resnetlab\[dali\]'"):
        build_imagefolder(config(root, "data.loader=dali"), torch.device("cpu"))


# ---- files that are not regular files, and pixels PIL would clip (issue 22) ----------------------


@pytest.fixture
def no_hang():
    """A read that blocks (a FIFO) fails the test after 20 s instead of hanging the suite."""
    import signal

    def hung(*_):
        raise TimeoutError("the read blocked")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_jpg_is_refused_without_blocking(tmp_path, no_hang):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match=f"{fifo}: a FIFO, not a regular file"):
        read_image(str(fifo))


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_link_to_dev_zero_is_refused_before_reading(tmp_path, no_hang):
    link = tmp_path / "zero.png"
    link.symlink_to("/dev/zero")
    with pytest.raises(UserError, match=f"{link}: a character device, not a regular file"):
        read_bytes(str(link))


def test_a_link_to_a_regular_image_is_read(tmp_path):
    Image.fromarray(natural_image(np.random.default_rng(3), 40, 30)).save(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    assert torch.equal(read_image(str(tmp_path / "b.png")), pil_rgb(tmp_path / "a.png"))


def test_a_file_over_the_size_cap_is_refused(tmp_path):
    path = tmp_path / "big.jpg"
    path.write_bytes(b"\xff" * 5000)
    assert len(read_bytes(str(path), limit=5000)) == 5000
    with pytest.raises(UserError, match=f"{path}: larger than 4999 bytes"):
        read_bytes(str(path), limit=4999)
    assert MAX_IMAGE_BYTES == 256 * 1024 * 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_the_cap_holds_for_a_file_that_reports_size_0(tmp_path):
    # /proc's files are regular files of size 0 by fstat that still hold bytes: the cap is on what is read
    link = tmp_path / "status.jpg"
    link.symlink_to("/proc/self/status")
    assert read_bytes(str(link)).startswith(b"Name:")
    with pytest.raises(UserError, match=f"{link}: larger than 100 bytes"):
        read_bytes(str(link), limit=100)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_dali_filter_leaves_out_fifos_and_devices(tmp_path, no_hang):
    from resnetlab.data.dali import image_files

    good = tmp_path / "good.png"
    Image.fromarray(natural_image(np.random.default_rng(4), 40, 30)).save(good)
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    kept, left_out = image_files([(str(good), 0), (str(tmp_path / "pipe.jpg"), 0), (str(tmp_path / "zero.jpg"), 1)])
    assert kept == [(str(good), 0)] and left_out == [str(tmp_path / "pipe.jpg"), str(tmp_path / "zero.jpg")]


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    # a ramp over the whole 16-bit range: PIL's convert("RGB") makes every pixel above 255 white
    ramp = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16" and (np.array(im.convert("RGB"))[ramp > 255] == 255).all()
    ours = read_image(str(path))
    assert ours.shape == (3, 30, 40) and torch.equal(ours[0], ours[2])
    assert np.abs(ours[0].numpy().astype(int) - (ramp >> 8)).max() <= 1  # the top byte, within rounding
    assert ours.max() == 255 and ours.min() == 0


def test_float_tiff_in_0_1_is_scaled(tmp_path):
    x = np.random.default_rng(5).random((30, 40)).astype(np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(x).save(path)
    with Image.open(path) as im:
        assert im.mode == "F" and np.array(im.convert("RGB")).max() <= 1  # PIL: everything black
    ours = read_image(str(path))[1].numpy().astype(float)
    assert np.abs(ours - x * 255).max() <= 0.5 + 1e-6


@pytest.mark.parametrize("lo, hi", [(-1.0, 1.0), (0.0, 1000.0)])
def test_float_tiff_outside_0_1_is_refused_naming_file_and_mode(tmp_path, lo, hi):
    x = np.linspace(lo, hi, 12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "f.tif"
    Image.fromarray(x).save(path)
    with pytest.raises(
        UserError, match=rf"cannot read image {path}: mode F \(32-bit float pixels from {lo:g} to {hi:g}"
    ):
        read_image(str(path))


def test_8_bit_images_are_read_as_before(odd):
    # the mode handling must leave ordinary PNG / CMYK / grey files to PIL's own conversion
    for kind in ("png", "cmyk", "gray"):
        assert (read_image(str(odd[kind])).int() - pil_rgb(odd[kind]).int()).abs().max() <= 1
