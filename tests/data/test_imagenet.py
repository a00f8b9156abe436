"""ImageNet / ImageFolder data on a tiny tree of real JPEG files (several classes and sizes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TV

from resnetlab.config import load_config
from resnetlab.data.imagenet import build_imagefolder
from resnetlab.data.images import IMAGENET_EIGVAL, IMAGENET_EIGVEC, lighting_shift
from resnetlab.errors import UserError

CLASSES = ("ant", "bee", "cat")
SIZES = ((40, 56), (64, 48), (50, 50), (72, 44))  # (width, height): landscape, portrait, square


def write_tree(root: Path, per_class: int = 4, val_per_class: int = 2) -> Path:
    """root/train/CLASS/*.JPEG and root/val/CLASS/*.JPEG: smooth random images, one colour cast per class."""
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = SIZES[i % len(SIZES)]
                img = torch.rand(3, h // 4, w // 4, generator=g) * 0.5
                img[c] += 0.5
                img = torch.nn.functional.interpolate(img[None], size=(h, w), mode="bilinear")[0]
                TV.to_pil_image(img.clamp(0, 1)).save(root / split / name / f"{name}_{i}.JPEG", quality=90)
    return root


def config(root: Path, *overrides: str):
    return load_config(
        None,
        [
            "data.name=imagefolder",
            f"data.dir={root}",
            "data.crop=32",
            "data.scale_min=36",
            "data.scale_max=48",
            "data.workers=0",
            "data.mean_samples=100",
            "train.batch_size=4",
            "train.eval_batch_size=5",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("imagefolder"))


def test_bundle_shapes_and_meta(tree):
    bundle = build_imagefolder(config(tree), torch.device("cpu"))
    assert bundle.classes == list(CLASSES) and bundle.num_classes == 3 and bundle.image_size == 32
    assert bundle.meta["mean"].shape == (3, 32, 32) and bundle.meta["std"] is None
    x, y = next(bundle.train.batches(0))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(bundle.test) == 6
    xs, ys = zip(*bundle.test.batches())
    assert sum(len(b) for b in xs) == 6 and torch.cat(ys).tolist() == [0, 0, 1, 1, 2, 2]


def test_per_channel_mean_and_std(tree):
    bundle = build_imagefolder(config(tree, "data.mean=channel", "data.normalize_std=true"), torch.device("cpu"))
    mean, std = bundle.meta["mean"], bundle.meta["std"]
    assert mean.shape == (3, 1, 1) and std.shape == (3, 1, 1)
    # Independently: the central 32x32 of every training image resized to shorter side 37, via PIL.
    views = []
    for path in sorted((tree / "train").rglob("*.JPEG")):
        with Image.open(path) as im:
            views.append(TV.to_tensor(TV.center_crop(TV.resize(im.convert("RGB"), 37), 32)))
    ref = torch.stack(views)
    torch.testing.assert_close(mean.flatten(), ref.mean((0, 2, 3)), atol=0.01, rtol=0)
    torch.testing.assert_close(std.flatten(), ref.std((0, 2, 3)), atol=0.01, rtol=0)


def test_eval_batches_are_the_normalised_center_view(tree):
    bundle = build_imagefolder(config(tree), torch.device("cpu"))
    x, _ = next(bundle.test.batches())
    with Image.open(tree / "val" / "ant" / "ant_0.JPEG") as im:
        ref = TV.to_tensor(TV.center_crop(TV.resize(im.convert("RGB"), 37), 32))
    torch.testing.assert_close(x[0] + bundle.meta["mean"], ref, atol=0.03, rtol=0)


def test_eval_batches_share_one_float_tensor_on_the_cpu(tree):
    # the contract of EvalSource.batches: valid until the next is drawn (the CPU reuses the memory)
    a = build_imagefolder(config(tree, "train.eval_batch_size=2"), torch.device("cpu")).test
    stream = a.batches()
    x0, _ = next(stream)
    kept, ptr = x0.clone(), x0.data_ptr()
    x1, _ = next(stream)
    assert x1.data_ptr() == ptr and not torch.equal(x1, kept)
    every = [x.clone() for x, _ in a.batches()]
    torch.testing.assert_close(every[0], kept, atol=0, rtol=0)


def test_resume_and_workers_give_the_same_stream(tree):
    cfg = config(tree, "data.lighting=0.1")
    a = build_imagefolder(cfg, torch.device("cpu")).train
    first = [x for (x, _), _ in zip(a.batches(0), range(5))]
    resumed = [x for (x, _), _ in zip(a.batches(3), range(2))]
    torch.testing.assert_close(torch.stack(resumed), torch.stack(first[3:5]), atol=0, rtol=0)
    b = build_imagefolder(config(tree, "data.lighting=0.1", "data.workers=1"), torch.device("cpu")).train
    with_workers = [x for (x, _), _ in zip(b.batches(2), range(2))]
    torch.testing.assert_close(torch.stack(with_workers), torch.stack(first[2:4]), atol=0, rtol=0)
    assert not torch.equal(first[0], first[1])


def test_each_epoch_visits_every_image_once(tree):
    src = build_imagefolder(config(tree, "train.batch_size=3", "data.augment=false"), torch.device("cpu")).train
    labels = torch.cat([y for (_, y), _ in zip(src.batches(0), range(4))])  # 12 images = one epoch
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_ranks_share_the_global_batch(tree):
    cfg = config(tree, "data.lighting=0.1")
    whole, _ = next(build_imagefolder(cfg, torch.device("cpu")).train.batches(1))
    parts = [
        next(build_imagefolder(cfg, torch.device("cpu"), rank=r, world_size=2).train.batches(1))[0] for r in (0, 1)
    ]
    torch.testing.assert_close(torch.cat(parts), whole, atol=0, rtol=0)


def test_lighting_matches_fb_resnet_torch():
    alpha = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.05, -0.01]])
    for a, shift in zip(alpha, lighting_shift(alpha)):
        # fb.resnet.torch: eigvec:clone():cmul(alpha:view(1,3):expand(3,3)):cmul(eigval:view(1,3):expand(3,3)):sum(2)
        rgb = (IMAGENET_EIGVEC * a.view(1, 3).expand(3, 3) * IMAGENET_EIGVAL.view(1, 3).expand(3, 3)).sum(1)
        torch.testing.assert_close(shift, rgb)


def test_val_split_holds_out_training_images(tree):
    bundle = build_imagefolder(config(tree, "data.val_split=3"), torch.device("cpu"))
    assert len(bundle.test) == 3 and len(bundle.train.sampler.sampler.epoch_order(0)) == 9


@pytest.fixture
def corrupt_tree(tmp_path) -> tuple[Path, Path]:
    root = write_tree(tmp_path / "tree", per_class=2, val_per_class=1)
    bad = root / "train" / "bee" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return root, bad


def test_corrupt_image_is_named(corrupt_tree):
    root, bad = corrupt_tree
    with pytest.raises(UserError, match="broken.JPEG"):
        bundle = build_imagefolder(config(root, "data.mean_samples=2", "train.batch_size=7"), torch.device("cpu"))
        next(bundle.train.batches(0))


def test_skip_corrupt_counts_skips(corrupt_tree):
    root, bad = corrupt_tree
    bundle = build_imagefolder(config(root, "data.skip_corrupt=true", "train.batch_size=7"), torch.device("cpu"))
    x, y = next(bundle.train.batches(0))  # 7 files, 1 unreadable: the whole epoch in one batch
    assert x.shape[0] == 7 and bundle.train.skipped == 1 and bundle.train.skipped_files == {str(bad)}



def test_a_tree_of_unreadable_images_skipped_is_one_line_not_a_shape_error(tmp_path):
    """Every sampled image skipped: the mean has nothing to average (it was a RuntimeError about sizes)."""
    root = write_tree(tmp_path / "tree", per_class=2, val_per_class=1)
    for f in (root / "train").rglob("*.JPEG"):
        f.write_bytes(b"not an image")
    with pytest.raises(UserError, match=r"^no readable training image to compute the mean from: the \d+ sampled"):
        build_imagefolder(config(root, "data.skip_corrupt=true"), torch.device("cpu"))


def test_dali_without_augmentation_is_refused_not_ignored(tmp_path):
    """DALI's pipeline always scales, crops and flips: data.augment=false was ignored while the run's
    summary said "augmentation: none"."""
    root = write_tree(tmp_path / "tree", per_class=2, val_per_class=1)
    with pytest.raises(UserError, match=r"^data.augment=false: data.loader=dali always augments"):
        build_imagefolder(config(root, "data.loader=dali", "data.augment=false"), torch.device("cpu"))


def test_data_flip_false_keeps_the_crops_and_drops_their_mirrors(tmp_path):
    """Digits and text must not be mirrored: the same crops (their draws kept), none flipped; the
    summary says so."""
    from resnetlab.data.imagenet import _Views

    root = write_tree(tmp_path / "tree", per_class=3, val_per_class=1)
    samples = sorted((str(p), 0) for p in (root / "train").rglob("*.JPEG"))
    kw = {"crop": 16, "view": "random", "scale": (20, 28)}
    mirrored = 0
    for seed in range(12):
        a, _, _, _, _, _ = _Views(samples, **kw)[(seed % len(samples), seed)]
        b, _, _, _, _, _ = _Views(samples, **kw, flip=False)[(seed % len(samples), seed)]
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
        mirrored += not torch.equal(a, b)
    assert mirrored > 0  # the default flips some of them
    bundle = build_imagefolder(config(root, "data.flip=false"), torch.device("cpu"))
    assert "flip" not in bundle.summary["augmentation"]
    with pytest.raises(UserError, match=r"^data.flip=false: data.loader=dali always augments"):
        build_imagefolder(config(root, "data.loader=dali", "data.flip=false"), torch.device("cpu"))


def test_a_mean_computed_skipping_unreadable_images_is_not_reused_by_a_run_that_reads_them(corrupt_tree):
    """The cache key left data.skip_corrupt out: a run without it got the skipping run's mean and met
    the broken file only in training; now it computes its own and names the file at once."""
    root, bad = corrupt_tree
    build_imagefolder(config(root, "data.skip_corrupt=true"), torch.device("cpu"))
    with pytest.raises(UserError, match="broken.JPEG"):
        build_imagefolder(config(root), torch.device("cpu"))

def test_missing_tree_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_imagefolder(config(tmp_path), torch.device("cpu"))


# AlexNet's "standard color augmentation" eigen-pairs of ImageNet RGB pixels in [0, 1], typed from
# fb.resnet.torch (datasets/imagenet.lua, `pca`): eigenvalues, and eigenvectors as the columns.
ALEXNET_EIGVAL = [0.2175, 0.0188, 0.0045]
ALEXNET_EIGVEC = [
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
]


def test_lighting_against_alexnet_pca_typed_from_the_source():
    # rgb_i = sum_j eigvec[i][j] * alpha_j * eigval_j, written out element by element.
    for alpha in ([0.1, -0.2, 0.3], [0.0, 0.05, -0.01], [1.0, 0.0, 0.0]):
        rgb = [sum(ALEXNET_EIGVEC[i][j] * alpha[j] * ALEXNET_EIGVAL[j] for j in range(3)) for i in range(3)]
        got = lighting_shift(torch.tensor([alpha], dtype=torch.float64))[0]
        torch.testing.assert_close(got, torch.tensor(rgb, dtype=torch.float64), atol=1e-7, rtol=0)
    # The columns are the principal axes: orthonormal to the 4 decimals they were published with.
    v = torch.tensor(ALEXNET_EIGVEC, dtype=torch.float64)
    torch.testing.assert_close(v.T @ v, torch.eye(3, dtype=torch.float64), atol=2e-4, rtol=0)


def test_lighting_shift_covariance_through_the_training_source(tree):
    # Training batches with and without lighting differ by one RGB shift per image (the crop and flip
    # draws come first, so they are the same). Over many images the shifts' covariance must be
    # std^2 * V diag(eigval)^2 V^T, computed here from the typed eigen-pairs.
    std = 0.1
    n_batches, batch = 100, 4
    common = ("data.mean=channel", f"train.batch_size={batch}")

    def shifts_per_image(lighting: float) -> torch.Tensor:
        src = build_imagefolder(config(tree, *common, f"data.lighting={lighting}"), torch.device("cpu")).train
        stream = src.batches(0)
        return torch.cat([next(stream)[0] for _ in range(n_batches)])  # (N, 3, 32, 32)

    diff = (shifts_per_image(std) - shifts_per_image(0.0)).double()  # [0, 1] units: no std division
    per_image = diff.mean((2, 3))  # (N, 3)
    torch.testing.assert_close(diff, per_image[:, :, None, None].expand_as(diff), atol=1e-5, rtol=0)  # a shift
    v, lam = torch.tensor(ALEXNET_EIGVEC, dtype=torch.float64), torch.tensor(ALEXNET_EIGVAL, dtype=torch.float64)
    expected = std**2 * v @ torch.diag(lam**2) @ v.T  # (3, 3); largest entry ~1.6e-4
    observed = per_image.T @ per_image / len(per_image)  # the shifts have mean zero
    torch.testing.assert_close(observed, expected, atol=4e-5, rtol=0)


def test_scale_augmentation_covers_256_to_480(tree, monkeypatch):
    # Sec. 3.4: the shorter side is random in [256, 480]. Record the shorter side of every resized
    # training image over 600 draws, with the paper's sizes (from the ResNet-50 preset). The training
    # view is cut by `resized_crop(img, (H', W'), top, left, crop)`: the window of the image resized to
    # (H', W'), whose shorter side is the drawn scale.
    import resnetlab.data.imagenet as imagenet

    sides = []
    crop_of_resized = imagenet.resized_crop

    def recording_crop(img, resized, top, left, crop):
        sides.append(min(resized))
        return crop_of_resized(img, resized, top, left, crop)

    monkeypatch.setattr(imagenet, "resized_crop", recording_crop)
    preset = load_config("imagenet-resnet50")
    assert (preset.data.scale_min, preset.data.scale_max, preset.data.crop) == (256, 480, 224)
    cfg = config(tree, "data.crop=224", "data.scale_min=256", "data.scale_max=480", "data.lighting=0")
    src = build_imagefolder(cfg, torch.device("cpu")).train
    sides.clear()
    stream = src.batches(0)
    for _ in range(150):
        next(stream)
    assert len(sides) == 600
    assert min(sides) >= 256 and max(sides) <= 480  # none outside
    assert min(sides) <= 259 and max(sides) >= 477  # and the whole range is reached
    assert 330 < sum(sides) / len(sides) < 406  # uniform: mean 368


# ---- the folder scan: links followed once, an image counted once (issue 22) ----------------------


def _tiny(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)


def test_scan_lists_what_torchvision_lists_in_its_order(tmp_path):
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    from resnetlab.data.images import scan_split

    for rel in ("a/x.jpg", "a/B.PNG", "a/sub/deeper/c.jpeg", "a/sub/a.jpg", "a/sub2/z.jpg", "b/1.jpg", "b/10.jpg"):
        _tiny(tmp_path / rel)
    (tmp_path / "a" / "notes.txt").write_text("not listed")
    _tiny(tmp_path / "elsewhere" / "linked.jpg")
    (tmp_path / "b" / "linked").symlink_to(tmp_path / "elsewhere")  # a linked folder without cycle: entered
    classes = {"a": 0, "b": 1}
    assert scan_split(tmp_path, classes) == make_dataset(str(tmp_path), classes, extensions=IMG_EXTENSIONS)


def test_a_link_cycle_in_a_class_folder_is_entered_once(tmp_path):
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    from resnetlab.data.images import find_images, scan_split

    for rel in ("a/x.jpg", "a/sub/y.jpg", "b/z.jpg"):
        _tiny(tmp_path / rel)
    (tmp_path / "a" / "sub" / "loop").symlink_to("..")  # a/sub/loop -> a
    classes = {"a": 0, "b": 1}
    followed = make_dataset(str(tmp_path), classes, extensions=IMG_EXTENSIONS)
    assert len(followed) > 10  # torchvision follows the cycle until the path is too deep: a wrong error rate
    expected = [(str(tmp_path / r), c) for r, c in (("a/sub/y.jpg", 0), ("a/x.jpg", 0), ("b/z.jpg", 1))]
    assert sorted(scan_split(tmp_path, classes)) == sorted(expected)
    assert sorted(find_images(tmp_path / "a")) == [str(tmp_path / "a/sub/y.jpg"), str(tmp_path / "a/x.jpg")]


def test_an_image_reached_twice_in_a_class_counts_once(tmp_path):
    from resnetlab.data.images import scan_split

    _tiny(tmp_path / "a" / "x.jpg")
    _tiny(tmp_path / "b" / "y.jpg")
    (tmp_path / "a" / "z_link.jpg").symlink_to("x.jpg")
    os.link(tmp_path / "b" / "y.jpg", tmp_path / "b" / "y_hard.jpg")
    twice: list[str] = []
    samples = scan_split(tmp_path, {"a": 0, "b": 1}, twice=twice)
    assert samples == [(str(tmp_path / "a" / "x.jpg"), 0), (str(tmp_path / "b" / "y.jpg"), 1)]
    assert twice == [str(tmp_path / "a" / "z_link.jpg"), str(tmp_path / "b" / "y_hard.jpg")]


def test_a_listing_without_inode_numbers_is_not_taken_for_one_file(tmp_path, monkeypatch):
    """sshfs and other FUSE file systems without `use_ino` list every entry under one inode number
    (FUSE_UNKNOWN_INO): taken as the files' identity, every image after the first of a class was "a
    second link" and the next class "the same file in two classes". Such numbers are asked of stat;
    a hard link is still found."""
    from resnetlab.data import images

    for rel in ("a/x.jpg", "a/y.jpg", "b/z.jpg"):
        _tiny(tmp_path / rel)
    os.link(tmp_path / "b" / "z.jpg", tmp_path / "b" / "z_hard.jpg")
    real = os.scandir

    class Entry:  # a directory entry as FUSE lists it
        def __init__(self, entry):
            self.entry = entry

        def __getattr__(self, name):
            return getattr(self.entry, name)

        def inode(self):
            return 0xFFFFFFFF

    class Listing:
        def __init__(self, path):
            self.listing = real(path)

        def __enter__(self):
            return (Entry(e) for e in self.listing.__enter__())

        def __exit__(self, *exc):
            return self.listing.__exit__(*exc)

    monkeypatch.setattr(images.os, "scandir", Listing)
    twice: list[str] = []
    samples = images.scan_split(tmp_path, {"a": 0, "b": 1}, twice=twice)
    assert samples == [(str(tmp_path / f), c) for f, c in (("a/x.jpg", 0), ("a/y.jpg", 0), ("b/z.jpg", 1))]
    assert twice == [str(tmp_path / "b" / "z_hard.jpg")]


def test_an_image_in_two_classes_is_refused(tmp_path):
    from resnetlab.data.images import scan_split

    _tiny(tmp_path / "a" / "x.jpg")
    _tiny(tmp_path / "b" / "y.jpg")
    (tmp_path / "b" / "x.jpg").symlink_to(tmp_path / "a" / "x.jpg")
    with pytest.raises(UserError, match=f"{tmp_path / 'b' / 'x.jpg'} and {tmp_path / 'a' / 'x.jpg'} are the same file"):
        scan_split(tmp_path, {"a": 0, "b": 1})


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_a_split_is_named_or_skipped(tmp_path):
    write_tree(tmp_path, per_class=2, val_per_class=1)
    fifo = tmp_path / "val" / "bee" / "pipe.JPEG"
    os.mkfifo(fifo)
    with pytest.raises(UserError, match=f"{fifo}: a FIFO, not a regular file"):
        list(build_imagefolder(config(tmp_path), torch.device("cpu")).test.batches())
    test = build_imagefolder(config(tmp_path, "data.skip_corrupt=true"), torch.device("cpu")).test
    assert sum(len(y) for _, y in test.batches()) == 3 and test.skipped_files == [str(fifo)]
