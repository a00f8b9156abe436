"""A run folder is never lost to a failure: a `--resume` whose checkpoint does not restore, a second
start racing for a new --out, a disk that fills up during a checkpoint. Real processes through the
CLI (the tiny fake source of train_fake_data.py, CPU); each failure is one stderr line, exit 2."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resnetlab.utils import checkpoint

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_fake_data import TINY  # noqa: E402

SETTINGS = [*TINY, "train.max_iters=10", "train.eval_every=5", "train.checkpoint_every=5"]


def start(out: Path, *extra: str, env: dict | None = None, preset: bool = True) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [sys.executable, str(HERE / "train_fake_data.py"), "train", "--out", str(out), "--device", "cpu"]
    cmd += ["--preset", "cifar10-resnet20", "--set", *SETTINGS] if preset else []
    return subprocess.Popen([*cmd, *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def one_error_line(err: str) -> str:
    """The one `error: ` line, the last on stderr (a training run's progress bar goes there before it)."""
    lines = err.strip().splitlines()
    errors = [x for x in lines if x.startswith("error")]
    assert errors == lines[-1:] and "Traceback" not in err, err[-3000:]
    return errors[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (hidden ones too) with its content's hash; the lock's names its holder."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
        if p.name != ".lock"
    }


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run of SETTINGS: final.pt, checkpoint.pt at iteration 10."""
    out = tmp_path_factory.mktemp("finished") / "run"
    code, _, err = finish(start(out))
    assert code == 0, err
    return out


def _without_schedule(ckpt: dict) -> dict:
    return {k: v for k, v in ckpt.items() if k != "schedule"}


def _other_network(ckpt: dict) -> dict:
    from resnetlab.models import create_model

    other = create_model("cifar_resnet", depth=14, num_classes=4, in_channels=1)  # one more block per stage
    return {**ckpt, "model": other.state_dict()}


def _other_optimizer(ckpt: dict) -> dict:
    other = torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=0.1, momentum=0.9)
    return {**ckpt, "optimizer": other.state_dict()}


def test_a_resume_that_cannot_restore_its_checkpoint_changes_nothing(tmp_path, finished):
    """The checkpoint is read, checked and restored before the folder is touched: extending a finished
    run from a checkpoint that does not restore keeps its final.pt, config.yaml and metrics as they were."""
    cases = {"no schedule": _without_schedule, "another network": _other_network, "another optimizer": _other_optimizer}
    procs, before = {}, {}
    for name, tamper in cases.items():
        run = tmp_path / name.replace(" ", "-")
        shutil.copytree(finished, run)
        ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
        checkpoint.save_atomic(tamper(ckpt), run / "checkpoint.pt")
        before[name] = snapshot(run)
        # --resume with a longer run: before the fix the folder lost final.pt first, then failed
        procs[name] = start(run, "--resume", "--set", "train.max_iters=20", preset=False)
    for name, proc in procs.items():
        run = tmp_path / name.replace(" ", "-")
        code, _, err = finish(proc)
        assert code == 2, (name, err[-3000:])
        line = one_error_line(err)
        assert f"{run / 'checkpoint.pt'} cannot be restored" in line and "nothing in" in line, line
        assert name != "no schedule" or "no 'schedule' entry" in line, line
        assert snapshot(run) == before[name], name


def test_two_starts_racing_for_a_new_out(tmp_path):
    """Two processes start at once on one new --out (two folder levels new): one trains, the other
    says one line (the folder is in use) and exit 2, having touched nothing; the winner's folder is
    whole and resumable without --preset (its config.yaml was not removed under it)."""
    out, go = tmp_path / "new" / "deeper" / "run", tmp_path / "go"
    (tmp_path / "barrier").mkdir()
    hold = {"FAKE_HOLD_AT": "7", "FAKE_HOLD_FILE": str(go)}  # the winner waits at iteration 7 until told
    hold["FAKE_START_TOGETHER"] = f"{tmp_path / 'barrier'}:2"  # both enter run_training at one moment
    procs = [start(out, env=hold) for _ in range(2)]
    deadline = time.time() + 300
    while sum(p.poll() is not None for p in procs) < 1:
        assert time.time() < deadline and all(p.poll() in (None, 2) for p in procs), [finish(p) for p in procs]
        time.sleep(0.05)
    (winner,) = [p for p in procs if p.poll() is None]
    for loser in (p for p in procs if p is not winner):
        code, _, err = finish(loser)
        # the winner writes its pid just after taking the lock: a loser that looks in between reads none
        line = one_error_line(err)
        named = f"is in use by pid {winner.pid} " in line or "is in use by another process;" in line
        assert code == 2 and named, err
    assert {".lock", "config.yaml"} <= set(os.listdir(out)), os.listdir(out)
    go.touch()
    code, _, err = finish(winner)
    assert code == 0, err
    assert (out / "final.pt").exists() and (out / "config.yaml").exists() and (out / ".lock").exists()
    code, _, err = finish(start(out, "--resume", "--set", "train.max_iters=15", preset=False))
    assert code == 0, err
    assert checkpoint.load(out / "final.pt")["iteration"] == 15


@pytest.fixture
def small_disk(tmpfs):
    """A 1 MiB tmpfs: one ResNet-8 training checkpoint (~0.7 MB) fits, a second beside it during the
    atomic write does not."""
    return tmpfs("1m")


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_last(small_disk):
    run = small_disk / "run"
    code, _, err = finish(start(run))
    assert code == 2, err[-3000:]
    line = one_error_line(err)
    assert f"cannot write {run / 'checkpoint.pt'}: No space left on device" in line, line
    assert "the checkpoint of iteration 5 is kept" in line and "--resume" in line, line
    assert checkpoint.load(run / "checkpoint.pt")["iteration"] == 5  # whole, not half a file
    assert not list(run.glob(".*.tmp"))
    # Space freed (the tmpfs grown): the same run continues from iteration 5 and finishes.
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    code, _, err = finish(start(run, "--resume"))
    assert code == 0, err
    assert checkpoint.load(run / "final.pt")["iteration"] == 10
