"""`resnetlab bench data` and `bench train --data imagefolder` on a tiny tree (figures are not checked:
speed is measured by benchmarks/, never by tests)."""

from __future__ import annotations

import json

import torch

from resnetlab.bench.data import Lighting
from resnetlab.cli import main
from resnetlab.data.images import lighting_shift

from ..data.test_imagenet import write_tree


def test_bench_data_all_views(tmp_path, capsys):
    root = write_tree(tmp_path / "tree", per_class=4, val_per_class=2)
    args = ["bench", "data", "--data-dir", str(root), "--workers", "0", "--batch-size", "4", "--iters", "1"]
    assert main([*args, "--rounds", "2", "--views", "train", "center", "10crop", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["views"]) == {"train", "center", "10crop"} and len(res["load_average_per_round"]) == 2
    for view in res["views"].values():
        assert view["ours"]["images_per_s"] > 0 and view["reference"]["images_per_s"] > 0
        assert len(view["ours/reference"]["per_round"]) == 2


def test_bench_data_device_decode_without_cuda_is_skipped(tmp_path, capsys):
    if torch.cuda.is_available():
        return
    root = write_tree(tmp_path / "tree", per_class=2, val_per_class=1)
    assert main(["bench", "data", "--data-dir", str(root), "--device", "cpu", "--decode", "device"]) == 0
    assert "needs a CUDA device" in capsys.readouterr().err


def test_bench_data_needs_a_tree(tmp_path, capsys):
    assert main(["bench", "data", "--data-dir", str(tmp_path / "none")]) != 0
    assert "does not exist" in capsys.readouterr().err


def test_bench_train_from_files_vs_synthetic(tmp_path, capsys):
    root = write_tree(tmp_path / "tree", per_class=4, val_per_class=1)
    args = ["bench", "train", "--model", "resnet18", "--batch-size", "4", "--device", "cpu", "--iters", "1"]
    args += ["--warmup", "1", "--data", "imagefolder", "--data-dir", str(root), "--workers", "0", "--json"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ours"]["images_per_s"] > 0 and res["synthetic"]["images_per_s"] > 0
    assert res["files_vs_synthetic"]["images_per_s_ratio"] > 0 and res["input_alone"]["images_per_s"] > 0


def test_reference_lighting_is_ours():
    torch.manual_seed(0)
    alpha = torch.randn(3) * 0.1
    torch.manual_seed(0)
    shifted = Lighting(0.1)(torch.zeros(3, 2, 2))
    torch.testing.assert_close(shifted[:, 0, 0], lighting_shift(alpha[None])[0])
