"""scripts/gpu_acceptance.sh --dry-run: every step of the GPU acceptance run, on the CPU with tiny sizes,
so the script cannot rot while no GPU is lent (the real run: `bash scripts/gpu_acceptance.sh` on a GPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_acceptance.sh"


def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON_BIN": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "acc"
    proc = run("--dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    steps = results["steps"]
    assert list(steps) == ["tests", "bench", "cifar", "loop", "grid", "analyze", "profile"]
    assert all(st["status"] == "ok" for st in steps.values()), {n: st["status"] for n, st in steps.items()}
    assert results["dry_run"] and results["gpu"] == "cpu" and results["torch"] == torch.__version__
    assert steps["tests"]["counts"].get("skipped", 0) >= 1  # collected, skipped without CUDA
    assert steps["bench"]["images_per_s"] > 0 and steps["cifar"]["projected_64k_s"] > 0
    assert steps["loop"]["seconds_per_1000_iters"] > 0
    runs = steps["grid"]["runs"]
    assert sorted(runs) == ["plain20", "plain56", "resnet20", "resnet56"]
    assert all(r["finished"] and r["iterations"] == 4 for r in runs.values())
    assert set(steps["analyze"]["responses"]) == {"plain-20", "plain-56", "ResNet-20", "ResNet-56"}
    assert steps["analyze"]["responses"]["ResNet-56"]["layers"] == 54  # two per basic block, 27 blocks
    for name in ("summary.md", "curves.png", "responses.png", "responses.json"):
        assert (out / name).is_file(), name
    summary = (out / "summary.md").read_text()
    assert "dry run" in summary and "| resnet56 | True | 4 |" in summary


def test_without_cuda_the_real_run_refuses_in_one_line(tmp_path):
    if torch.cuda.is_available():
        return
    proc = run("--out", str(tmp_path / "x"))
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stdout and "Traceback" not in proc.stderr


def test_unknown_step_is_named(tmp_path):
    proc = run("--dry-run", "--steps", "tests,nope", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "nope" in proc.stderr and "Traceback" not in proc.stderr
