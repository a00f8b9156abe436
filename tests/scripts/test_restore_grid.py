"""scripts/restore_grid.py: published runs (records + fp16 weights) put back into a reproduce folder
count as finished there, so reproduce trains only the others and reports the whole grid."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnetlab.analysis.report import report
from resnetlab.config import load_config
from resnetlab.evaluate.export import export_checkpoint
from resnetlab.runner.plan import plan
from resnetlab.runner.pool import run_jobs
from resnetlab.utils import checkpoint

ROOT = Path(__file__).resolve().parents[2]
RECORD = ("config.yaml", "metrics.jsonl")  # what a run trained in-process writes of the record


def tiny(kind, depth):
    """A ResNet-8 on the fake source for every network (`fake_data`)."""
    from train_fake_data import TINY

    return load_config("cifar10-resnet20", [*TINY, "train.device=cpu"])


def grid(out: Path):
    return plan("table6", out=out, schedule_name="short", iters=4, config_fn=tiny, nets=["resnet20", "resnet32"])


def _restore(published: Path, runs: Path, *extra: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(ROOT / "scripts" / "restore_grid.py"), str(published), str(runs), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.fixture
def published(tmp_path, fake_data, one_thread) -> tuple[Path, Path]:
    """A trained two-run grid (`grid`) and a folder as publish_grid.py writes it: resnet20-seed0 with
    its record and fp16 weights, resnet32-seed0 with its record only."""
    runs, dest = tmp_path / "grid", tmp_path / "published"
    run_jobs(grid(runs), log=lambda _: None)
    for run in ("resnet20-seed0", "resnet32-seed0"):
        (dest / "runs" / run).mkdir(parents=True)
        for name in RECORD:
            shutil.copy2(runs / run / name, dest / "runs" / run / name)
    export_checkpoint(runs / "resnet20-seed0" / "final.pt", "weights-fp16", dest / "resnet20-seed0.pt")
    return runs, dest


def test_a_restored_run_is_finished_for_reproduce_and_reports_as_the_original(published, tmp_path):
    runs, dest = published
    again = tmp_path / "again"
    (dest / "commands.txt").write_text("resnetlab reproduce A\nresnetlab reproduce B\n")
    again.mkdir()
    (again / "commands.txt").write_text("resnetlab reproduce B\nresnetlab reproduce C\n")  # started here
    r = _restore(dest, again)
    assert r.returncode == 0, r.stderr
    assert "resnet32-seed0: record without weights" in r.stdout and "restored 1 of 1 runs" in r.stdout
    assert sorted(p.name for p in again.iterdir()) == ["commands.txt", "resnet20-seed0"]  # nothing half-written
    # the published history first, then this folder's own commands, none twice
    assert (again / "commands.txt").read_text().splitlines() == [f"resnetlab reproduce {c}" for c in "ABC"]
    for name in RECORD:
        assert (again / "resnet20-seed0" / name).read_bytes() == (runs / "resnet20-seed0" / name).read_bytes()
    # The final.pt holds the network rounded to fp16: the original's tensors through half() and back.
    original = checkpoint.load(runs / "resnet20-seed0" / "final.pt")["model"]
    restored = checkpoint.load(again / "resnet20-seed0" / "final.pt")["model"]
    for key, t in original.items():
        want = t.half().float() if t.is_floating_point() else t
        assert torch.equal(restored[key].to(want.dtype), want), key

    jobs = grid(again)
    assert [j.state() for j in jobs] == ["done", "new"]
    run_jobs(jobs[:1], train_fn=lambda *a, **k: pytest.fail("a restored run trained again"), log=lambda _: None)
    (tmp_path / "from-original").mkdir()
    report(grid(runs)[:1], tmp_path / "from-original", dataset="fake", device="cpu", responses=False, log=str)
    report(jobs, again, dataset="fake", device="cpu", responses=False, log=str)
    assert (again / "table.csv").read_text() == (tmp_path / "from-original" / "table.csv").read_text()


def test_a_run_folder_that_exists_is_left_as_it_is(published, tmp_path):
    _, dest = published
    again = tmp_path / "again"
    (again / "resnet20-seed0").mkdir(parents=True)
    (again / "resnet20-seed0" / "checkpoint.pt").write_bytes(b"training here")
    r = _restore(dest, again)
    assert r.returncode == 0 and "resnet20-seed0: " in r.stdout and "exists, left as it is" in r.stdout
    assert [p.name for p in (again / "resnet20-seed0").iterdir()] == ["checkpoint.pt"]
    assert "restored 0 of 1 runs" in r.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--only", "resnet32-seed0"], "--only resnet32-seed0: resnet32-seed0 has a record but no weights"),
        (["--only", "resnet99-seed0"], "--only resnet99-seed0: resnet99-seed0 is not a published run"),
    ],
)
def test_only_names_a_run_it_cannot_restore_in_one_line(published, tmp_path, args, message):
    _, dest = published
    r = _restore(dest, tmp_path / "again", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "again").exists()


def test_a_folder_publish_grid_did_not_write_is_refused(tmp_path):
    r = _restore(tmp_path, tmp_path / "again")
    assert r.returncode == 2 and "holds no runs/ folder" in r.stderr and not (tmp_path / "again").exists()
