"""scripts/publish_grid.py: a reproduce folder copied into docs/results with fp16 weights per finished
run, each evaluated and held against the error its run ended with (the script in its own process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchvision.transforms import functional as TV

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["a", "b", "c"]


def _evaluate(ck: Path, data: Path) -> float:
    argv = ["evaluate", "--checkpoint", str(ck), "--data-dir", str(data), "--split", "test", "--workers", "0"]
    r = subprocess.run(
        [sys.executable, "-m", "resnetlab", *argv, "--device", "cpu", "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["top1_error"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_checkpoint) -> tuple[Path, Path, float]:
    """A reproduce folder: run `net-seed0` finished (final.pt, its record), `net-seed1` not; its
    metrics end with the test error that evaluate gives for the fp32 final.pt."""
    base = tmp_path_factory.mktemp("publish")
    data, runs = base / "data", base / "runs"
    g = torch.Generator().manual_seed(0)
    for name in CLASSES:
        (data / "test" / name).mkdir(parents=True)
        for i in range(4):
            TV.to_pil_image(torch.rand(3, 32, 32, generator=g)).save(data / "test" / name / f"{i}.png")
    for run in ("net-seed0", "net-seed1"):
        (runs / run).mkdir(parents=True)
        (runs / run / "config.yaml").write_text("model: {name: cifar_resnet20}\n")
        (runs / run / "train.log").write_text("done\n")
    tiny_checkpoint(runs / "net-seed0" / "final.pt", CLASSES, {})
    error = _evaluate(runs / "net-seed0" / "final.pt", data)
    rows = [{"iter": 2, "test_error": 99.0, "time": 30.0}, {"iter": 4, "test_error": error, "time": 90.0}]
    (runs / "net-seed0" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (runs / "table.csv").write_text("model,mean\nnet,1\n")
    return runs, data, error


def _publish(runs: Path, dest: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(ROOT / "scripts" / "publish_grid.py"), str(runs), str(dest), "--data-dir", str(data)]
    return subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=300)


def test_a_finished_run_is_published_with_fp16_weights_that_give_its_error(grid, tmp_path):
    runs, data, error = grid
    dest = tmp_path / "dest"
    r = _publish(runs, dest, data)
    assert r.returncode == 0, r.stderr
    assert (dest / "table.csv").read_text() == (runs / "table.csv").read_text()
    assert sorted(p.name for p in (dest / "runs" / "net-seed0").iterdir()) == [
        "config.yaml",
        "metrics.jsonl",
        "train.log",
    ]
    assert not (dest / "net-seed1.pt").exists() and not (dest / "runs" / "net-seed1").exists()
    weights = torch.load(dest / "net-seed0.pt", weights_only=True)
    assert {t.dtype for t in weights["model"].values() if t.is_floating_point()} == {torch.float16}
    fp16_error = _evaluate(dest / "net-seed0.pt", data)
    row = next(line for line in (dest / "weights.md").read_text().splitlines() if line.startswith("| net-seed0"))
    assert f"| {error:.2f} (test) | {fp16_error:.2f} (" in row and "| 1.5 min |" in row
    assert "Started, not finished (no final.pt): net-seed1." in (dest / "weights.md").read_text()


def test_an_earlier_runs_row_stays_while_its_weights_do_until_the_run_is_published_again(grid, tmp_path):
    """A run published from a grid folder that is gone (another machine) keeps its row; a row whose
    weights file is gone is dropped; a run finished again replaces its row."""
    runs, data, _ = grid
    dest = tmp_path / "dest"
    dest.mkdir()
    row = "| old-seed0 | `old-seed0.pt` | 0.59 MB | 119.6 min | 15.73 | 15.75 (+0.02) | `resnetlab evaluate ...` |"
    gone = "| gone-seed0 | `gone-seed0.pt` | 0.59 MB | 1.0 min | 15.00 | 15.00 (+0.00) | `resnetlab evaluate ...` |"
    again = "| net-seed0 | `net-seed0.pt` | 0.59 MB | 9.9 min | 11.11 | 11.11 (+0.00) | `resnetlab evaluate ...` |"
    header = (
        "| run | weights | size | wall time | test error (%) | fp16 (%) | command |\n|---|---|---|---|---|---|---|\n"
    )
    (dest / "weights.md").write_text(header + "\n".join([row, gone, again]) + "\n\nNot finished: x.\n")
    (dest / "old-seed0.pt").write_bytes(b"kept")
    (dest / "net-seed0.pt").write_bytes(b"replaced")
    r = _publish(runs, dest, data)
    assert r.returncode == 0, r.stderr
    text = (dest / "weights.md").read_text()
    assert row in text.splitlines() and "Kept from an earlier publication: old-seed0." in text
    assert "gone-seed0" not in text and "11.11" not in text and "Not finished: x." not in text
    assert [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| ") and "`" in line] == [
        "| net-seed0",
        "| old-seed0",
    ]
    assert (dest / "old-seed0.pt").read_bytes() == b"kept"


def test_weights_that_do_not_give_the_runs_error_exit_1(grid, tmp_path):
    runs, data, _ = grid
    r = _publish(runs, tmp_path / "dest", data, "--tolerance", "-1")  # any difference, 0 included, is too large
    assert r.returncode == 1 and "a difference over -1.0 points" in r.stderr


@pytest.mark.parametrize(
    "dataset, data, row, expected",
    [
        ("fashion-mnist", {"name": "fashion-mnist"}, {"eval_split": "test"}, (None, True)),  # no --split: refused
        ("imagefolder", {"name": "imagefolder", "eval_split": "val"}, {"eval_split": "val"}, ("val", True)),
        ("imagefolder", {"name": "imagefolder", "eval_split": "test"}, {}, ("test", True)),
        ("cifar10", {"name": "cifar10", "val_split": 5000}, {"eval_split": "val"}, (None, False)),  # 45k/5k
        ("imagefolder", {"name": "imagefolder", "val_split": 30}, {"eval_split": "val"}, ("test", False)),
    ],
)
def test_the_split_evaluated_is_the_runs_own(tmp_path, tiny_checkpoint, dataset, data, row, expected):
    """A built-in data set's checkpoint is refused `--split`; a run that evaluated held-out training
    images is not held against the test split's error (it failed on ordinary val/test noise)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("publish_grid", ROOT / "scripts" / "publish_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tiny_checkpoint(tmp_path / "final.pt", CLASSES, {"data": data})
    if dataset != "imagefolder":  # the meta says which data set the run read
        ck = torch.load(tmp_path / "final.pt", weights_only=True)
        ck["meta"]["dataset"] = dataset
        torch.save(ck, tmp_path / "final.pt")
    assert module.evaluated_split(tmp_path / "final.pt", row) == expected


def test_only_publishes_the_runs_named_and_keeps_the_others_rows_unevaluated(grid, tmp_path):
    """`--only RUN`: the runs finished since the last publication, without evaluating the published
    ones again (their rows and weights stay as they were); a run that is not a finished one of RUNS
    is one line naming it and the finished runs, exit 2, nothing written."""
    import shutil

    runs0, data, error = grid
    runs = tmp_path / "runs"
    shutil.copytree(runs0, runs)
    shutil.copytree(runs / "net-seed0", runs / "net-seed2")
    dest = tmp_path / "dest"
    dest.mkdir()
    header = (
        "| run | weights | size | wall time | test error (%) | fp16 (%) | command |\n|---|---|---|---|---|---|---|\n"
    )
    old = "| net-seed0 | `net-seed0.pt` | 0.59 MB | 9.9 min | 11.11 | 11.11 (+0.00) | `resnetlab evaluate ...` |"
    (dest / "weights.md").write_text(header + old + "\n")
    (dest / "net-seed0.pt").write_bytes(b"published before")

    for name, why in [("net-seed1", "has no final.pt (not finished)"), ("nope", "is not a run there")]:
        r = _publish(runs, tmp_path / "other", data, "--only", name)
        assert (
            r.returncode == 2 and f"--only {name}: {runs / name} {why}; finished runs: net-seed0, net-seed2" in r.stderr
        )
        assert "Traceback" not in r.stderr and not (tmp_path / "other").exists()

    r = _publish(runs, dest, data, "--only", "net-seed2")
    assert r.returncode == 0, r.stderr
    assert "net-seed2: final" in r.stdout and "net-seed0" not in r.stdout  # evaluated net-seed2 alone
    text = (dest / "weights.md").read_text()
    assert old in text.splitlines() and (dest / "net-seed0.pt").read_bytes() == b"published before"
    assert "| net-seed2 | `net-seed2.pt` |" in text and f"| {error:.2f} (test) |" in text
    assert (dest / "runs" / "net-seed2" / "config.yaml").is_file() and not (dest / "runs" / "net-seed0").exists()
    assert "Started, not finished (no final.pt): net-seed1." in text  # named with --only too
