"""ImageNet / ImageFolder data on a tiny tree of real JPEG files (several classes and sizes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TV

from resnetlab.config import load_config
from resnetlab.data.imagenet import IMAGENET_EIGVAL, IMAGENET_EIGVEC, build_imagefolder, lighting_shift
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


def test_missing_tree_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_imagefolder(config(tmp_path), torch.device("cpu"))
