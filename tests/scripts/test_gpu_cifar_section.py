"""scripts/gpu_cifar_section.sh --dry-run: the CIFAR section's GPU windows on the CPU with tiny sizes. The
first window is cut by the grid's budget; what it sent back is packed, carried to a fresh machine (another
grid folder) and the second window resumes it to the table and figures."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resnetlab.config import DataConfig

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_cifar_section.sh"
sys.path.insert(0, str(ROOT / "scripts"))
import carry_data  # noqa: E402

# The ImageFolder -> CIFAR recipe path (data.recipe, issue 21) trains on the tiny JPEG folder; a checkout
# without it trains on Fashion-MNIST in its real format (the JPEG folder is still packed and unpacked).
FOLDER_RECIPE = "recipe" in {f.name for f in dataclasses.fields(DataConfig)}
DATASET = [] if FOLDER_RECIPE else ["--dataset", "fashion-mnist"]
NETS = ["plain20", "plain32", "plain44", "plain56", "resnet110", "resnet20", "resnet32", "resnet44", "resnet56"]


def run(*args: str | Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON_BIN": sys.executable}
    cmd = ["bash", str(SCRIPT), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


# The default run's variant: four of the nine nets (the degradation grid: plain/ResNet-20/56), paired by
# --batch-runs 2, the precision given (no bf16 check); the full one (nine nets, the check) is marked slow.
# 12 iterations, not 4: four nets must still outlast window 1's one-second budget (about 3x here).
FAST = ["--dry-grid", "degradation", "--batch-runs", "2", "--precision", "fp32", "--dry-iters", "12"]
FAST_NETS = ["plain20", "plain56", "resnet20", "resnet56"]


def test_dry_run_in_two_windows(tmp_path):
    two_windows(tmp_path, FAST, FAST_NETS, check=False, iters=12)


@pytest.mark.slow  # 25 s on an idle machine, 73-130 s on the shared one: the nine nets and the bf16 check
def test_dry_run_in_two_windows_all_nine_nets_and_the_bf16_check(tmp_path):
    two_windows(tmp_path, [], NETS, check=True, iters=4)


def two_windows(tmp_path: Path, extra: list[str], nets: list[str], *, check: bool, iters: int) -> None:
    """Window 1 is cut by the grid's budget; what it sent back is packed and carried to a fresh grid
    folder, where window 2 restores it and finishes the table and figures."""
    out1, out2 = tmp_path / "w1", tmp_path / "w2"
    proc = run("--dry-run", "--out", out1, "--grid-dir", tmp_path / "grid1", "--grid-budget-s", "1", *DATASET, *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = json.loads((out1 / "results.json").read_text())["steps"]
    assert [(n, st["status"]) for n, st in steps.items()] == [
        ("unpack", "ok"),
        ("restore", "skipped"),
        ("bf16-check", "ok" if check else "skipped"),
        ("grid", "partial"),  # the budget stopped it: exit 124, runs checkpointed
    ]
    assert steps["grid"]["exit"] == 124
    precision = steps["bf16-check"]["precision"]
    assert steps["grid"]["precision"] == precision in ("bf16", "fp32")
    if check:
        assert set(steps["bf16-check"]["nets"]) == {"resnet20", "plain20"}
    first = steps["grid"]["runs"]
    assert 1 <= len(first) and sum(r["finished"] for r in first.values()) < len(nets)  # not started: no folder
    back = out1 / "runs"
    for name in first:  # what comes back: small files and one checkpoint, never both
        pts = sorted(p.name for p in (back / "grid" / f"{name}-seed0").glob("*.pt"))
        assert (
            pts in (["final.pt"], ["checkpoint.pt"], []) and (back / "grid" / f"{name}-seed0" / "config.yaml").is_file()
        )
    assert not list((back / "bf16-check").rglob("*.pt"))
    assert (back / "bf16-check.json").is_file() == check
    size = sum(f.stat().st_size for f in out1.rglob("*") if f.is_file())
    assert size < 64 * 2**20

    # The next window, on a fresh machine: the runs come back in as a carried pack.
    carry_data.pack(back, "cifar-runs", 10 * 2**20, carry=tmp_path / "w2-dry" / "carry")
    proc = run("--dry-run", "--out", out2, "--grid-dir", tmp_path / "grid2", *DATASET, *extra)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = json.loads((out2 / "results.json").read_text())["steps"]
    assert {n: st["status"] for n, st in steps.items()} == {
        "unpack": "ok",
        "restore": "ok",
        "bf16-check": "skipped",  # decided in the first window and kept, or given by --precision
        "grid": "ok",
    }
    assert sorted(steps["restore"]["restored"]) == sorted(
        [f"grid/{n}-seed0" for n in first]
        + [p.relative_to(back).parent.as_posix() for p in (back / "bf16-check").rglob("config.yaml")]
    )
    assert steps["bf16-check"]["precision"] == steps["grid"]["precision"] == precision
    runs = steps["grid"]["runs"]
    assert sorted(runs) == nets and all(r["finished"] and r["iterations"] == iters for r in runs.values())
    log = (out2 / "grid.log").read_text()
    for name, r in first.items():  # finished in the first window: not trained again
        assert (f"[skip]   {name}-seed0" in log) == r["finished"]
    if "--batch-runs" in extra:  # the pairs that window 1 stopped resume as pairs
        assert "(batched)" in log and "trained one by one" not in log
    for name in ("table.md", "table.csv", "curves.png", "responses.png"):
        assert (out2 / "runs" / "grid" / name).is_file(), name
    table = (out2 / "runs" / "grid" / "table.md").read_text()
    assert "| ResNet-56 |" in table and "| plain-56 |" in table and "6.97" in table  # the paper's ResNet-56
    if check:
        assert "| ResNet-110 |" in table and "6.43" in table  # the paper's ResNet-110
    summary = (out2 / "summary.md").read_text()
    assert "dry run" in summary and f"| {nets[-1]} | True | {iters} | " in summary


def test_without_cuda_the_real_run_refuses_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        return
    proc = run("--out", tmp_path / "x")
    assert proc.returncode == 2 and "no CUDA device" in proc.stdout and "Traceback" not in proc.stderr
