"""`resnetlab train`: exit codes and one-line errors (no traceback) for the ways a run can go wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnetlab.cli import main

TRAIN_TESTS = Path(__file__).resolve().parents[1] / "train"
sys.path.insert(0, str(TRAIN_TESTS))
import train_fake_data  # noqa: E402


@pytest.fixture(autouse=True)
def fake(monkeypatch):
    import resnetlab.train.loop as loop

    monkeypatch.setattr(loop, "build_data", train_fake_data.build_fake_data)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(out, *args: str, settings=("train.max_iters=10", "train.eval_every=5", "train.checkpoint_every=5")):
    argv = ["train", "--preset", "cifar10-resnet20", "--out", str(out), "--device", "cpu", *args]
    return main([*argv, "--set", *train_fake_data.TINY, *settings])


def one_line_error(capsys, *fragments: str) -> None:
    """The message is the last line of stderr (a progress bar may precede it), and there is no traceback."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and lines[-1].startswith("error: "), err
    assert sum(line.startswith("error") for line in lines) == 1
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def test_train_then_resume_from_the_runs_own_config(tmp_path, capsys):
    assert train(tmp_path) == 0
    assert "done:" in capsys.readouterr().out
    # --resume without --preset reads DIR/config.yaml; a longer max_iters continues the run.
    assert main(["train", "--out", str(tmp_path), "--resume", "--set", "train.max_iters=15"]) == 0
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3  # iters 5, 10, 15


@pytest.mark.parametrize(
    "setting, fragments",
    [
        ("train.max_iters=abc", ("train.max_iters", "integer")),
        ("train.nope=1", ("unknown config key train.nope", "valid keys")),
        ("optim.gamma=2", ("optim.gamma",)),
        ("train.precision=fp8", ("train.precision",)),
    ],
)
def test_bad_config_value(tmp_path, capsys, setting, fragments):
    assert train(tmp_path, settings=(setting,)) == 2
    one_line_error(capsys, *fragments)


def test_unknown_preset_and_missing_preset(tmp_path, capsys):
    assert main(["train", "--preset", "cifar10-resnet21", "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "no preset", "cifar10-resnet20")
    assert main(["train", "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "--preset")


def test_out_dir_holding_another_run(tmp_path, capsys):
    assert train(tmp_path) == 0
    capsys.readouterr()
    assert train(tmp_path) == 2
    one_line_error(capsys, "already holds a run", "--resume")
    assert train(tmp_path, "--resume", settings=("optim.lr=0.3",)) == 2
    one_line_error(capsys, "different run", "optim.lr")


@pytest.mark.parametrize("content", [b"PK\x03\x04 truncated", b"not a checkpoint at all"])
def test_truncated_or_foreign_checkpoint_on_resume(tmp_path, capsys, content):
    assert train(tmp_path) == 0
    (tmp_path / "checkpoint.pt").write_bytes(content)
    capsys.readouterr()
    assert train(tmp_path, "--resume") == 2
    one_line_error(capsys, "checkpoint.pt")


def test_non_finite_loss_names_the_iteration(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_NAN_AT", "7")
    assert train(tmp_path) == 2
    one_line_error(capsys, "iteration 8", "last good checkpoint")
    assert not (tmp_path / "final.pt").exists()


def test_no_traceback_from_the_real_command(tmp_path):
    """The installed entry point (real data module, separate process): one line, exit 2."""
    cmd = [sys.executable, "-m", "resnetlab", "train", "--preset", "cifar10-resnet20", "--out", str(tmp_path)]
    proc = subprocess.run(
        [*cmd, "--set", "optim.warmup_lr=-0.01"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: optim.warmup_lr: must be > 0 (or null), got -0.01"


def test_the_ctrl_c_hint_is_a_command_that_continues_the_run(tmp_path):
    """SIGINT prints `Continue: <command>`; that command, pasted as is (a folder with a space in its
    name), finishes the run."""
    import shlex
    import signal
    import time

    out = tmp_path / "my run"
    script = [sys.executable, str(TRAIN_TESTS / "train_fake_data.py")]
    argv = [
        "train",
        "--preset",
        "cifar10-resnet20",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--set",
        *train_fake_data.TINY,
    ]
    argv += ["train.max_iters=20", "train.eval_every=20", "train.checkpoint_every=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAKE_SLEEP": "0.05"}
    proc = subprocess.Popen([*script, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    hint = [line for line in stdout.splitlines() if "Continue: " in line]
    assert len(hint) == 1, stdout
    command = shlex.split(hint[0].split("Continue: ", 1)[1])
    assert command == ["resnetlab", "train", "--out", str(out), "--resume"]
    done = subprocess.run([*script, *command[1:]], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and (out / "final.pt").exists(), done.stderr[-3000:]


def test_the_detection_hint_names_the_runs_config(tmp_path):
    """`detect train` has no run-config fallback: its hint passes the run's config.yaml as the preset."""
    import shlex

    from resnetlab.cli import build_parser
    from resnetlab.detection.config import DetectionConfig
    from resnetlab.train.lifecycle import resume_command

    command = shlex.split(resume_command(DetectionConfig(), tmp_path / "det run"))
    args = build_parser().parse_args(command[1:])
    assert command[:3] == ["resnetlab", "detect", "train"] and args.resume
    assert (args.preset, args.out) == (str(tmp_path / "det run" / "config.yaml"), str(tmp_path / "det run"))
