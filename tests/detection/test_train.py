import dataclasses
import json
import signal
import sys

import pytest
import torch

from resnetlab.detection.config import list_detection_presets, load_detection_config
from resnetlab.detection.train import load_detector, run_detection_training
from resnetlab.errors import UserError
from resnetlab.train.lifecycle import progress_bar
from resnetlab.train.lifecycle import run as lifecycle_run


def tiny_config(data_dir, **train):
    """The shapes preset, shrunk: 16 training images, 4 test images, a few iterations."""
    cfg = load_detection_config(
        "shapes-cifar-c4",
        [f"data.dir={data_dir}", "data.shapes_images=16", "train.device=cpu", "model.box_batch_size_per_image=16"],
    )
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=2, **train))


def test_presets_load_and_stay_out_of_classification_presets():
    from resnetlab.config import list_presets

    names = list_detection_presets()
    assert {"voc07-resnet101-c4", "voc07-vgg16", "voc12-resnet101-c4", "coco-resnet101-c4", "coco-vgg16"} <= set(names)
    for name in names:
        cfg = load_detection_config(name)
        assert cfg.model.name
    assert not set(names) & set(list_presets())
    with pytest.raises(UserError, match="valid keys"):
        load_detection_config("voc07-resnet101-c4", ["model.nope=1"])


def test_frozen_bn_without_pretrained_weights_is_refused(tmp_path):
    cfg = load_detection_config("voc07-resnet101-c4", [f"data.dir={tmp_path}"])
    with pytest.raises(UserError, match="model.pretrained"):
        run_detection_training(cfg, tmp_path / "run")


def test_without_pycocotools_the_run_is_refused_before_it_starts(tmp_path, monkeypatch, capsys):
    # pycocotools is the `detection` extra; it used to stop the run at its first evaluation
    from resnetlab.cli import main

    for name in ("pycocotools", "pycocotools.coco", "pycocotools.cocoeval"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` of it raises ImportError
    with pytest.raises(UserError, match=r"pycocotools .*pip install 'resnetlab\[detection\]'"):
        run_detection_training(tiny_config(tmp_path, max_iters=2), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written
    assert main(["detect", "evaluate", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'resnetlab[detection]'" in err[0]


def test_sigterm_then_resume_is_exact(tmp_path, monkeypatch):
    """6 iterations straight == SIGTERM after 3 (checkpoint, stop), then --resume to 6: identical weights."""
    full = tiny_config(tmp_path, max_iters=6, eval_every=100, checkpoint_every=100)
    run_detection_training(full, tmp_path / "a")

    def term_after_3(*args, **kwargs):  # SIGTERM arrives during iteration 3, deterministically
        bar = progress_bar(*args, **kwargs)
        update = bar.update

        def update_then_signal(n=1):
            update(n)
            if bar.n == 3:
                signal.raise_signal(signal.SIGTERM)

        bar.update = update_then_signal
        return bar

    monkeypatch.setattr(lifecycle_run, "progress_bar", term_after_3)  # the bar of `Run.steps`
    stopped = run_detection_training(full, tmp_path / "b")
    monkeypatch.undo()
    assert stopped["stopped"] == "SIGTERM" and stopped["iterations"] == 3 and stopped["exit_code"] == 143
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["iteration"] == 3
    assert not (tmp_path / "b" / "final.pt").exists()
    assert signal.getsignal(signal.SIGTERM) is not None
    summary = run_detection_training(full, tmp_path / "b", resume=True)
    a = torch.load(tmp_path / "a" / "final.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "final.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows_a = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert rows_a[-1]["iter"] == rows_b[-1]["iter"] == 6
    assert rows_a[-1]["voc07_map50"] == rows_b[-1]["voc07_map50"]
    assert {"lr", "train_loss", "voc07_map50", "coco_map", "coco_map50", "time"} <= rows_a[-1].keys()
    assert summary["iterations"] == 6
    assert (tmp_path / "a" / "config.yaml").is_file()
    model, ckpt = load_detector(tmp_path / "a" / "final.pt")
    assert ckpt["meta"]["classes"] == ["square", "circle", "triangle"]
    with pytest.raises(UserError, match="already holds a run"):
        run_detection_training(full, tmp_path / "a")
