"""The on-device training stream: augmentation, determinism, ranks, normalisation statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resnetlab.config import load_config
from resnetlab.data import build_data
from resnetlab.data.ondevice import DeviceTrainSource, FloatScratch, Normalizer
from resnetlab.errors import UserError

CPU = torch.device("cpu")


def _cfg(data_dir, *extra):
    return load_config(None, [f"data.dir={data_dir}", "data.download=false", "train.batch_size=32", *extra])


def _written_train(written) -> np.ndarray:
    return np.concatenate([b["data"] for b in written["train"]]).reshape(-1, 3, 32, 32)


def _pixel_mean(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float64).mean(0) / 255.0).float()


def test_every_image_is_a_crop_of_its_padded_original(cifar10_dir):
    root, written = cifar10_dir
    b = build_data(_cfg(root), CPU)
    images = _written_train(written)
    normalised = torch.from_numpy(images).float() / 255 - _pixel_mean(images)  # (N,3,32,32)
    padded = torch.nn.functional.pad(normalised, (4, 4, 4, 4))  # zero padding around the normalised image
    src: DeviceTrainSource = b.train
    draws = set()
    for it in (0, 4):
        x, y = src.batch(it)
        idx = src.indices(it)
        assert torch.equal(y, torch.tensor([sum((bb["labels"] for bb in written["train"]), [])[i] for i in idx]))
        for k in range(len(x)):
            p = padded[idx[k]]
            offsets = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)]
            crops = torch.stack(
                [
                    p[:, dy : dy + 32, dx : dx + 32].flip(-1) if f else p[:, dy : dy + 32, dx : dx + 32]
                    for dy, dx, f in offsets
                ]
            )  # (162, 3, 32, 32): every crop, flipped or not
            match = ((crops - x[k]).abs().amax((1, 2, 3)) < 1e-6).nonzero().flatten().tolist()
            assert match, f"iteration {it} image {k} is no crop of its padded original"
            draws.add(offsets[match[0]])
    assert len(draws) > 20  # each image has its own offsets and flip (162 possibilities)
    assert {f for _, _, f in draws} == {False, True}


def test_no_augmentation_and_eval_are_the_plain_normalised_images(cifar10_dir):
    root, written = cifar10_dir
    b = build_data(_cfg(root, "data.augment=false"), CPU)
    images = _written_train(written)
    mean = _pixel_mean(images)
    x, _ = b.train.batch(0)
    expected = torch.from_numpy(images[b.train.indices(0).numpy()]).float() / 255 - mean
    assert torch.allclose(x, expected, atol=1e-6)
    test = torch.from_numpy(written["test"]["data"].reshape(-1, 3, 32, 32)).float() / 255 - mean
    got = torch.cat([x for x, _ in b.test.batches()])
    assert got.dtype == torch.float32 and torch.allclose(got, test, atol=1e-6)


def test_epochs_are_permutations_and_drop_the_last_partial_batch(cifar10_dir):
    root, _ = cifar10_dir
    src = build_data(_cfg(root), CPU).train  # 100 images, batch 32 -> 3 iterations per epoch
    assert src.iters_per_epoch == 3
    for epoch in range(3):
        seen = torch.cat([src.indices(epoch * 3 + s) for s in range(3)])
        assert len(set(seen.tolist())) == 96  # no repeats within an epoch
    assert not torch.equal(src.indices(0), src.indices(3))  # a new order each epoch


def test_stream_is_the_same_wherever_it_starts(cifar10_dir):
    root, _ = cifar10_dir
    cfg = _cfg(root)
    stream = build_data(cfg, CPU).train.batches(0)
    from_zero = [next(stream) for _ in range(8)]  # crosses two epoch boundaries
    fresh = build_data(cfg, CPU).train
    for i in range(8):
        x, y = next(fresh.batches(i))
        assert torch.equal(x, from_zero[i][0]) and torch.equal(y, from_zero[i][1])
    assert not torch.equal(from_zero[0][0], from_zero[1][0])
    other_seed = next(build_data(load_config(None, [*_flat(cfg), "train.seed=1"]), CPU).train.batches(0))
    assert not torch.equal(other_seed[0], from_zero[0][0])


def _flat(cfg):
    return [f"data.dir={cfg.data.dir}", "data.download=false", f"train.batch_size={cfg.train.batch_size}"]


def test_ranks_partition_the_global_batch(cifar10_dir):
    root, _ = cifar10_dir
    cfg = _cfg(root)
    whole = build_data(cfg, CPU).train
    parts = [build_data(cfg, CPU, rank=r, world_size=4).train for r in range(4)]
    for it in (0, 4):
        x, y = whole.batch(it)
        xs, ys = zip(*(p.batch(it) for p in parts))
        assert all(len(px) == 8 for px in xs)
        assert torch.equal(torch.cat(xs), x) and torch.equal(torch.cat(ys), y)
    with pytest.raises(UserError, match="divisible"):
        build_data(cfg, CPU, rank=0, world_size=3)


def test_mean_from_the_training_split_without_the_validation_images(cifar10_dir):
    root, written = cifar10_dir
    images = _written_train(written)
    b = build_data(_cfg(root, "data.val_split=10"), CPU)
    assert len(b.train) == 90 and len(b.test) == 10
    assert torch.allclose(b.meta["mean"], _pixel_mean(images[:90]), atol=1e-6)
    assert not torch.allclose(b.meta["mean"], _pixel_mean(images), atol=1e-6)
    # The held-out images are the last 10 training images, normalised with the 90-image mean.
    val = torch.cat([x for x, _ in b.test.batches()])
    assert torch.allclose(val, torch.from_numpy(images[90:]).float() / 255 - _pixel_mean(images[:90]), atol=1e-6)
    assert set(b.train.indices(0).tolist()) <= set(range(90))
    # Without a val split: all 100 training images, never the test images.
    assert torch.allclose(build_data(_cfg(root), CPU).meta["mean"], _pixel_mean(images), atol=1e-6)


def test_channel_mean_and_std(cifar10_dir):
    root, written = cifar10_dir
    images = _written_train(written).astype(np.float64) / 255
    b = build_data(_cfg(root, "data.mean=channel", "data.normalize_std=true", "data.augment=false"), CPU)
    mean = torch.from_numpy(images.mean((0, 2, 3))).float().view(3, 1, 1)
    std = torch.from_numpy(images.std((0, 2, 3))).float().view(3, 1, 1)
    assert torch.allclose(b.meta["mean"], mean, atol=1e-6) and torch.allclose(b.meta["std"], std, atol=1e-6)
    x, _ = b.train.batch(0)
    raw = torch.from_numpy(_written_train(written)[b.train.indices(0).numpy()]).float() / 255
    assert torch.allclose(x, (raw - mean) / std, atol=1e-5)


def test_batch_larger_than_dataset_is_an_error():
    images = torch.zeros(10, 1, 28, 28, dtype=torch.uint8)
    norm = Normalizer(torch.zeros(1, 28, 28), None, CPU)
    with pytest.raises(UserError, match="larger than the training split"):
        DeviceTrainSource(images, torch.zeros(10, dtype=torch.int64), normalizer=norm, batch_size=16, seed=0)


def test_unknown_dataset(tmp_path):
    with pytest.raises(UserError, match="unknown dataset"):
        build_data(_cfg(tmp_path, "data.name=svhn"), CPU)


def test_no_flips_when_disabled_and_offsets_cover_the_range():
    images = torch.zeros(256, 1, 28, 28, dtype=torch.uint8)
    norm = Normalizer(torch.zeros(1, 28, 28), None, CPU)
    kw = dict(normalizer=norm, batch_size=256, seed=0, pad=4)
    no_flip = DeviceTrainSource(images, torch.zeros(256, dtype=torch.int64), flip=False, **kw)  # MNIST
    dx, dy, flip = no_flip.augmentation(0)
    assert not flip.any()
    assert set(dx.tolist()) == set(range(9)) and set(dy.tolist()) == set(range(9))
    _, _, flip = DeviceTrainSource(images, torch.zeros(256, dtype=torch.int64), **kw).augmentation(0)
    assert 0.3 < flip.float().mean() < 0.7


@pytest.mark.parametrize("per", ["pixel", "channel"])
def test_normalizer_equals_the_formula_and_leaves_its_input_alone(per):
    # (x / 255 - mean) / std written out in float64; the in-place multiply-add must never write into the
    # caller's tensor, even one that is float already (evaluation passes float views too).
    g = torch.Generator().manual_seed(0)
    mean = torch.rand(3, 8, 8, generator=g) if per == "pixel" else torch.rand(3, 1, 1, generator=g)
    std = torch.rand(3, 1, 1, generator=g) + 0.5
    x = torch.randint(0, 256, (5, 3, 8, 8), generator=g, dtype=torch.uint8)
    expected = (x.double() / 255 - mean.double()) / std.double()
    for inp in (x, x.float()):
        before = inp.clone()
        out = Normalizer(mean, std, torch.device("cpu"))(inp)
        assert out.dtype == torch.float32 and torch.allclose(out.double(), expected, atol=1e-6)
        assert torch.equal(inp, before) and out.data_ptr() != inp.data_ptr()


def test_normalizer_into_a_scratch_equals_a_fresh_result():
    # FloatScratch: one float tensor rewritten call after call on the CPU (a fresh one per batch costs its
    # page faults); the result must be the formula's, whatever the scratch held before.
    g = torch.Generator().manual_seed(1)
    mean, std = torch.rand(3, 8, 8, generator=g), torch.rand(3, 1, 1, generator=g) + 0.5
    norm, scratch = Normalizer(mean, std, torch.device("cpu")), FloatScratch()
    first = None
    for _ in range(3):
        x = torch.randint(0, 256, (5, 3, 8, 8), generator=g, dtype=torch.uint8)
        out = norm(x, into=scratch(x))
        expected = (x.double() / 255 - mean.double()) / std.double()
        assert torch.allclose(out.double(), expected, atol=1e-6)
        first = first if first is not None else out.data_ptr()
        assert out.data_ptr() == first  # the same memory every time
    other = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    assert scratch(other).shape == other.shape  # a new shape (the last, smaller batch): a new tensor
    assert scratch(torch.empty(2, 3, device="meta")) is None  # off the CPU: a fresh tensor each time
