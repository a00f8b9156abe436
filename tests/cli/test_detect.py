"""`resnetlab detect train|evaluate|predict` end to end on the generated shapes set (a few iterations)."""

import json

import pytest
import torch
from PIL import Image

from resnetlab.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machine: see tests/detection/conftest.py
    root = tmp_path_factory.mktemp("detect")
    args = ["detect", "train", "--preset", "shapes-cifar-c4", "--out", str(root / "run"), "--device", "cpu", "--set"]
    args += [f"data.dir={root / 'data'}", "data.shapes_images=8", "train.max_iters=2", "train.batch_size=2"]
    args += ["model.box_batch_size_per_image=8"]
    assert main(args) == 0
    torch.set_num_threads(threads)
    return root


def test_train_writes_a_run(run):
    out = run / "run"
    assert {"config.yaml", "metrics.jsonl", "checkpoint.pt", "final.pt"} <= {p.name for p in out.iterdir()}
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["iter"] == 2 and "voc07_map50" in row


def test_evaluate_json(run, capsys):
    capsys.readouterr()
    assert main(["detect", "evaluate", "--checkpoint", str(run / "run" / "final.pt"), "--device", "cpu", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["test"] == "shapes-test" and metrics["images"] == 2
    assert 0 <= metrics["voc07_map50"] <= 100 and 0 <= metrics["coco_map"] <= 100
    assert set(metrics["ap50_per_class"]) <= {"square", "circle", "triangle"}


def test_predict_draws_on_the_image(run, capsys):
    image = run / "data" / "shapes-64-8" / "test" / "test_00000.jpg"
    out = run / "pred.png"
    argv = ["detect", "predict", str(image), "--checkpoint", str(run / "run" / "final.pt"), "--out", str(out)]
    assert main(argv + ["--threshold", "0.0", "--device", "cpu"]) == 0
    drawn = Image.open(out)
    assert drawn.format == "PNG" and drawn.size == (64, 64)
    assert "detections ->" in capsys.readouterr().out


def test_errors_are_one_line(run, tmp_path, capsys):
    assert main(["detect", "evaluate", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert capsys.readouterr().err.startswith("error: checkpoint")
    assert main(["detect", "train", "--preset", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "presets: " in capsys.readouterr().err
    assert main(["detect", "train", "--preset", "shapes-cifar-c4", "--out", str(run / "run")]) == 2
    assert "already holds a run" in capsys.readouterr().err


@pytest.mark.parametrize("terminal, flags", [(False, []), (True, ["--quiet"])])
def test_evaluate_draws_no_bar_in_a_log_or_with_quiet(run, capsys, monkeypatch, terminal, flags):
    # the bar was raw tqdm: drawn into a redirected stderr, and with --quiet (detect train's evaluations)
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    capsys.readouterr()
    argv = ["detect", "evaluate", "--checkpoint", str(run / "run" / "final.pt"), "--device", "cpu", *flags]
    assert main(argv) == 0
    assert capsys.readouterr().err == ""


def test_evaluate_draws_its_bar_on_a_terminal(run, capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    capsys.readouterr()
    assert main(["detect", "evaluate", "--checkpoint", str(run / "run" / "final.pt"), "--device", "cpu"]) == 0
    assert "detect" in capsys.readouterr().err
