"""data.loader=dali, run for real where NVIDIA DALI is installed (`pip install 'resnetlab[dali]'`), in
DALI's CPU-only mode here (the same pipeline decodes with nvjpeg on a GPU). Skipped without DALI: the
default install does not carry its 200 MB wheel; `test_dali_absent_is_one_line` covers that case."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from resnetlab.data.dali import DaliTrainSource, image_files
from resnetlab.data.imagenet import build_imagefolder
from resnetlab.data.images import TrainRecipe
from resnetlab.data.ondevice import Normalizer
from resnetlab.errors import UserError

from .test_imagenet import config, write_tree
from .test_jpeg_path import _coordinate_image, _geometry, _ks, odd  # noqa: F401, F811 (odd: a fixture)

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install 'resnetlab[dali]')")

CPU = torch.device("cpu")
RECIPE = TrainRecipe(batch_size=4, seed=0, crop=32, scale=(37, 42), lighting=0.0, workers=1, skip_corrupt=False)
# CPU: DALI's CPU-only mode (here); CUDA: "mixed" decoding (nvjpeg) and the GPU operators (the same pipeline)
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")],
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_dali_training_views_agree_in_distribution_with_torchvision(tmp_path, device):
    # The paper's recipe as DALI runs it (resize_shorter drawn in [256, 480], random 224 crop, coin-flip
    # mirror) against torchvision's transforms.v2, by the geometry each view encodes.
    device = torch.device(device)
    path = tmp_path / "coords.png"
    _coordinate_image(path)
    n = 300
    identity = Normalizer(torch.zeros(3, 1, 1), None, device)  # x / 255: the raw view, in [0, 1]
    recipe = TrainRecipe(batch_size=50, seed=0, crop=224, scale=(256, 480), lighting=0.0, workers=1, skip_corrupt=False)
    source = DaliTrainSource([(str(path), 0)] * n, recipe, normalizer=identity, device=device)
    stream = source.batches(0)
    views = torch.cat([next(stream)[0].cpu() for _ in range(n // 50)]) * 255
    assert views.shape == (n, 3, 224, 224)
    ours = [_geometry(v) for v in views]
    torch.manual_seed(0)
    ref_t = v2.Compose([v2.RandomShortestSize(list(range(256, 481))), v2.RandomCrop(224), v2.RandomHorizontalFlip()])
    with Image.open(path) as im:
        ref = [_geometry(TF.pil_to_tensor(ref_t(im.convert("RGB")))) for _ in range(n)]
    critical = 1.95 * np.sqrt(2 / n)  # KS at alpha = 0.001
    for k, name in enumerate(("scale", "left", "top", "flip")):
        assert _ks([o[k] for o in ours], [r[k] for r in ref]) < critical, name


@pytest.mark.parametrize("device", DEVICES)
def test_dali_source_from_the_config(tmp_path, device):
    root = write_tree(tmp_path / "tree", per_class=4, val_per_class=1)
    bundle = build_imagefolder(config(root, "data.loader=dali", "data.lighting=0.1"), torch.device(device))
    x, y = next(bundle.train.batches(0))
    assert x.device.type == y.device.type == device
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert y.dtype == torch.int64 and set(y.tolist()) <= {0, 1, 2}


def test_dali_leaves_out_files_that_are_not_images(tmp_path):
    # DALI's CPU decoder crashes the process on them (segfault, DALI 2.4): they must never reach it.
    root = write_tree(tmp_path / "tree", per_class=2, val_per_class=1)
    bad = next((root / "train").iterdir()) / "zz_text.JPEG"
    bad.write_text("not an image")
    with pytest.raises(UserError, match=f"cannot read image {bad}: .*data.skip_corrupt=true"):
        build_imagefolder(config(root, "data.loader=dali"), CPU)  # named by the mean's pass, or by DALI's check
    train = build_imagefolder(config(root, "data.loader=dali", "data.skip_corrupt=true"), CPU).train
    stream = train.batches(0)
    for _ in range(5):
        x, _ = next(stream)
    assert x.shape == (4, 3, 32, 32) and train.skipped == 1 and train.skipped_files == {str(bad)}


def test_dali_leaves_out_a_jpeg_cut_short(tmp_path, odd):  # noqa: F811
    # A truncated JPEG (no end-of-image marker) would stop DALI's pipeline without naming the file: it is
    # left out and counted like the DataLoader path's unreadable files, or refused in one line naming it.
    root = write_tree(tmp_path / "tree", per_class=2, val_per_class=1)
    cut = next((root / "train").iterdir()) / "zz_truncated.JPEG"
    shutil.copy(odd["truncated"], cut)
    kept, other = image_files([(str(p), 0) for p in sorted((root / "train").rglob("*.JPEG"))])
    assert other == [str(cut)] and len(kept) == 6
    with pytest.raises(UserError, match=f"cannot read image {cut}: .*JPEG cut short.*data.skip_corrupt=true"):
        DaliTrainSource([(str(cut), 0)] * 4, RECIPE, normalizer=Normalizer(torch.zeros(3, 1, 1), None, CPU), device=CPU)
    train = build_imagefolder(config(root, "data.loader=dali", "data.skip_corrupt=true"), CPU).train
    stream = train.batches(0)
    for _ in range(5):
        x, _ = next(stream)
    assert train.skipped == 1 and train.skipped_files == {str(cut)}


def test_dali_damaged_image_is_one_line(tmp_path):
    # A whole JPEG with a bogus Huffman table: DALI's decoder fails on it, neither naming nor skipping it.
    root = write_tree(tmp_path / "tree", per_class=2, val_per_class=1)
    good = next((root / "train").rglob("*.JPEG")).read_bytes()
    at = good.index(b"\xff\xc4")  # DHT, the Huffman table segment
    bad = good[: at + 5] + b"\xff" * 20 + good[at + 25 :]
    (next((root / "train").iterdir()) / "zz_bad_huffman.JPEG").write_bytes(bad)
    match = r"data.loader=dali stopped: .*data.loader=torch with data.skip_corrupt=true names and skips"
    with pytest.raises(UserError, match=match):  # DALI reads ahead: it may stop while the source is built
        stream = build_imagefolder(config(root, "data.loader=dali", "data.skip_corrupt=true"), CPU).train.batches(0)
        for _ in range(10):
            next(stream)


def test_bench_train_from_files_through_dali(tmp_path, capsys):
    # `bench train --data imagefolder --decode dali` times DALI's input alone under its own name
    # (it looked for the nvjpeg path's figure and stopped with a KeyError)
    import json

    from resnetlab.cli import main

    root = write_tree(tmp_path / "tree", per_class=4, val_per_class=1)
    args = ["bench", "train", "--model", "resnet18", "--batch-size", "4", "--device", "cpu", "--iters", "1"]
    args += ["--warmup", "1", "--data", "imagefolder", "--data-dir", str(root), "--workers", "1", "--decode", "dali"]
    assert main([*args, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ours"]["images_per_s"] > 0 and res["input_alone"]["images_per_s"] > 0


def test_dali_fewer_images_than_a_batch_is_one_line(tmp_path):
    # the reader wraps around endlessly: a batch larger than the split would repeat images in it
    root = write_tree(tmp_path / "tree", per_class=1, val_per_class=1)
    with pytest.raises(UserError, match=r"data.loader=dali: 3 training images, fewer than one batch \(8\)"):
        build_imagefolder(config(root, "data.loader=dali", "train.batch_size=8"), CPU)
