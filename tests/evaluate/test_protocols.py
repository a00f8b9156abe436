"""The test protocols against views and scores computed one by one with torchvision's functional API."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import functional as TV
from torchvision.transforms.v2 import functional as TV2

from resnetlab.data.images import read_image, scan_split
from resnetlab.errors import UserError
from resnetlab.evaluate import (
    ensemble_probs,
    evaluate_checkpoints,
    fully_convolutional_logits,
    load_model,
    multiscale_probs,
    ten_crop,
)

CPU = torch.device("cpu")


def normalise(x: torch.Tensor, meta: dict) -> torch.Tensor:
    """(C, h, w) uint8 -> float, the per-pixel mean resized to (h, w) (the documented choice)."""
    mean = meta["mean"]
    if mean.shape[-1] != 1:
        mean = F.interpolate(mean[None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0]
    out = x.float() / 255 - mean
    return out / meta["std"] if meta["std"] is not None else out


@torch.no_grad()
def softmax_of(model, view: torch.Tensor) -> torch.Tensor:
    return model.model(normalise(view, model.meta)[None]).softmax(-1)[0]


def resize(img: torch.Tensor, side: int) -> torch.Tensor:
    # v2's uint8 resize (v1 goes through float and can differ by 1 grey level; see the test below).
    return TV2.resize(img, [side], antialias=True)


@torch.no_grad()
def ten_crop_one_by_one(model, img: torch.Tensor) -> torch.Tensor:
    resized = resize(img, 37)  # 256/224 * 32
    five = TV.five_crop(resized, 32)
    crops = [normalise(c, model.meta) for c in (*five, *(TV.hflip(c) for c in five))]
    return model.model(torch.stack(crops)).softmax(-1).mean(0)


def val_images(tree):
    return scan_split(tree / "val", {"ant": 0, "bee": 1, "cat": 2})


def test_ten_crop_views_are_torchvisions(tree):
    img = read_image(str(val_images(tree)[0][0]))
    ours = ten_crop(img, 32)
    # The paper's "4 corners + center, and their flips": the mirror of each crop. (torchvision's
    # ten_crop takes the five crops of the mirrored image: its centre one can sit a pixel off.)
    five = TV.five_crop(TV.resize(img, 37, antialias=True), 32)  # tl, tr, bl, br, centre
    ref = torch.stack([*five, *(TV.hflip(c) for c in five)])
    assert ours.shape == ref.shape == (10, 3, 32, 32)
    torch.testing.assert_close(ours.int(), ref.int(), atol=1, rtol=0)  # v1 resizes via float: +-1


@pytest.mark.parametrize("name", ["a", "b"])
def test_ten_crop_equals_average_of_the_ten_crops(tree, checkpoints, name):
    model = load_model(checkpoints[name], CPU)
    for path, _ in val_images(tree)[:2]:
        img = read_image(path)
        probs = ensemble_probs([model], ten_crop(img, 32)[None])[0]
        torch.testing.assert_close(probs, ten_crop_one_by_one(model, img), atol=1e-5, rtol=1e-4)


def test_evaluate_counts_like_the_one_by_one_computation(tree, checkpoints):
    model = load_model(checkpoints["a"], CPU)
    samples = val_images(tree)
    probs = torch.stack([softmax_of(model, TV.center_crop(resize(read_image(p), 37), 32)) for p, _ in samples])
    labels = torch.tensor([y for _, y in samples])
    top1 = (probs.argmax(-1) == labels).float().mean().item()
    r = evaluate_checkpoints([str(checkpoints["a"])], protocol="center", batch_size=4, workers=0, device="cpu")
    assert r["images"] == 6 and r["skipped"] == 0
    assert r["top1_error"] == pytest.approx(100 * (1 - top1)) and r["top5_error"] is None  # 3 classes


@pytest.mark.parametrize("name", ["a", "b"])
def test_multiscale_single_scale_without_flip_is_the_fully_convolutional_net(tree, checkpoints, name):
    model = load_model(checkpoints[name], CPU)
    img = read_image(val_images(tree)[1][0])
    for scale in (224, 384):  # paper sizes: 32 and 55 pixels for a 32-pixel model
        side = round(scale * 32 / 224)
        resized = resize(img, side)
        expected = softmax_of(model, resized)  # global average pool + fc on the whole image
        got = multiscale_probs([model], img, scales=[scale], flip=False)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    flipped = (softmax_of(model, resized) + softmax_of(model, TV.hflip(resized))) / 2
    torch.testing.assert_close(multiscale_probs([model], img, scales=[384], flip=True), flipped, atol=1e-5, rtol=1e-4)


def test_fully_convolutional_score_map_is_fc_at_every_position(checkpoints):
    model = load_model(checkpoints["a"], CPU).model
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = model.forward_features(x)  # (2, 512, 2, 3)
        per_position = model.fc(feats.permute(0, 2, 3, 1))  # (2, 2, 3, K): the fc at each position
        torch.testing.assert_close(fully_convolutional_logits(model, x), per_position.mean((1, 2)))


def test_ensemble_averages_softmax(tree, checkpoints):
    a, b = load_model(checkpoints["a"], CPU), load_model(checkpoints["b"], CPU)
    views = ten_crop(read_image(val_images(tree)[2][0]), 32)[None]
    both = ensemble_probs([a, b], views)
    torch.testing.assert_close(both, (ensemble_probs([a], views) + ensemble_probs([b], views)) / 2)


def test_ensemble_of_one_model_is_that_model(checkpoints):
    one = evaluate_checkpoints([str(checkpoints["b"])], protocol="center", workers=0, device="cpu")
    twice = evaluate_checkpoints([str(checkpoints["b"])] * 2, protocol="center", workers=0, device="cpu")
    assert (one["top1_error"], one["top5_error"]) == (twice["top1_error"], twice["top5_error"])


@pytest.mark.parametrize("protocol", ["center", "10crop", "multiscale"])
def test_every_protocol_runs(checkpoints, protocol):
    scales = (224, 256)  # two of the paper's five: the full set is in the slow test below
    r = evaluate_checkpoints([str(checkpoints["a"])], protocol=protocol, workers=0, device="cpu", scales=scales)
    assert r["images"] == 6 and 0 <= r["top1_error"] <= 100 and r["top5_error"] is None


@pytest.mark.slow
def test_multiscale_with_the_papers_five_scales(checkpoints):
    r = evaluate_checkpoints([str(checkpoints["a"]), str(checkpoints["b"])], protocol="multiscale", workers=1)
    assert r["images"] == 6


@pytest.fixture
def corrupt_tree(tmp_path, make_tree):
    root = make_tree(tmp_path / "tree", per_class=1)
    bad = root / "val" / "bee" / "zz_broken.JPEG"
    bad.write_bytes(b"\x00not an image at all")
    return root, bad


def test_corrupt_validation_image_is_named(corrupt_tree, checkpoints):
    root, bad = corrupt_tree
    with pytest.raises(UserError, match="zz_broken.JPEG"):
        evaluate_checkpoints([str(checkpoints["a"])], protocol="center", data_dir=str(root), workers=0)


def test_skip_corrupt_counts_it(corrupt_tree, checkpoints):
    root, _ = corrupt_tree
    r = evaluate_checkpoints(
        [str(checkpoints["a"])], protocol="center", data_dir=str(root), workers=0, skip_corrupt=True
    )
    assert r["images"] == 3 and r["skipped"] == 1


def test_incompatible_ensemble_is_refused(tmp_path, tree, checkpoints):
    from resnetlab.evaluate.checkpoints import load_models

    other = tmp_path / "c.pt"
    ckpt = torch.load(checkpoints["a"], weights_only=True)
    ckpt["meta"] = {**ckpt["meta"], "classes": ["x", "y", "z"]}
    torch.save(ckpt, other)
    with pytest.raises(UserError, match="different classes"):
        load_models([str(checkpoints["a"]), str(other)], CPU)
    # The CIFAR and the ImageNet recipe: the first model would decide the views for both.
    ckpt = torch.load(checkpoints["a"], weights_only=True)
    ckpt["meta"] = {**ckpt["meta"], "recipe": "cifar"}
    torch.save(ckpt, other)
    with pytest.raises(UserError, match="were trained on different inputs .*cifar recipe.*cannot ensemble them"):
        load_models([str(checkpoints["a"]), str(other)], CPU)


def by_hand_softmax(logits: torch.Tensor) -> torch.Tensor:
    """exp(l - max) / sum, written out (not torch.softmax)."""
    e = (logits - logits.max(-1, keepdim=True).values).double().exp()
    return (e / e.sum(-1, keepdim=True)).float()


@torch.no_grad()
def test_ensemble_against_probabilities_averaged_by_hand(tree, checkpoints):
    # Table 5's ensemble: each member's logits on each view (views cut with torchvision, normalised with
    # the member's own mean), softmax by hand, averaged over the ten views and the two members.
    a, b = load_model(checkpoints["a"], CPU), load_model(checkpoints["b"], CPU)
    samples = val_images(tree)
    expected = []
    for path, _ in samples:
        img = read_image(path)
        five = TV.five_crop(resize(img, 37), 32)
        views = [*five, *(TV.hflip(c) for c in five)]
        members = []
        for m in (a, b):
            logits = m.model(torch.stack([normalise(v, m.meta) for v in views]))  # (10, K)
            members.append(by_hand_softmax(logits).mean(0))
        expected.append((members[0] + members[1]) / 2)
    expected = torch.stack(expected)  # (N, K)
    got = torch.cat([ensemble_probs([a, b], ten_crop(read_image(p), 32)[None]) for p, _ in samples])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # The error evaluate reports for the pair is the one of these averaged probabilities.
    labels = torch.tensor([y for _, y in samples])
    r = evaluate_checkpoints(
        [str(checkpoints["a"]), str(checkpoints["b"])], protocol="10crop", batch_size=4, workers=0, device="cpu"
    )
    assert r["top1_error"] == pytest.approx(100 * (expected.argmax(-1) != labels).float().mean().item())


@torch.no_grad()
def test_multiscale_default_is_the_papers_five_scales_without_flips(tree, checkpoints):
    # Sec. 3.4: scores averaged over the shorter sides {224, 256, 384, 480, 640}; no mirror images.
    model = load_model(checkpoints["a"], CPU)
    img = read_image(val_images(tree)[0][0])
    sides = [round(s * 32 / 224) for s in (224, 256, 384, 480, 640)]  # the paper's sides for a 32-px model
    expected = torch.stack([softmax_of(model, resize(img, side)) for side in sides]).mean(0)
    torch.testing.assert_close(multiscale_probs([model], img), expected, atol=1e-5, rtol=1e-4)
    with_flips = torch.stack(
        [(softmax_of(model, resize(img, s)) + softmax_of(model, TV.hflip(resize(img, s)))) / 2 for s in sides]
    ).mean(0)
    torch.testing.assert_close(multiscale_probs([model], img, flip=True), with_flips, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(with_flips, expected)  # the option does change something
