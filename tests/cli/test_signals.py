"""SIGTERM and SIGINT stop any command with one line (`terminated`, exit 143; `interrupted`, exit 130):
a real `resnetlab evaluate` process, signalled while it evaluates."""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from resnetlab.models import create_model
from resnetlab.utils.checkpoint import save_atomic


def _idx(path: Path, array: np.ndarray) -> None:
    magic = 2051 if array.ndim == 3 else 2049
    with open(path, "wb") as f:
        f.write(struct.pack(">" + "I" * (1 + array.ndim), magic, *array.shape) + array.tobytes())


@pytest.fixture(scope="module")
def slow_evaluation(tmp_path_factory) -> list[str]:
    """An `evaluate` of 20,000 Fashion-MNIST-shaped images: long enough to be signalled mid-way."""
    import torch

    w = tmp_path_factory.mktemp("signals")
    raw = w / "fm" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("t10k", 20_000)):
        _idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        _idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    meta = {"dataset": "fashion-mnist", "classes": [str(i) for i in range(10)], "in_channels": 1, "image_size": 28,
            "mean": torch.zeros(1, 28, 28), "std": None, "model": "cifar_resnet20",
            "model_options": {"num_classes": 10, "in_channels": 1}, "num_classes": 10}  # fmt: skip
    config = {"data": {"name": "fashion-mnist", "dir": str(w / "fm"), "download": False}, "train": {"batch_size": 8}}
    net = create_model("cifar_resnet20", num_classes=10, in_channels=1)
    save_atomic({"model": net.state_dict(), "config": config, "meta": meta}, w / "fm.pt")
    return ["evaluate", "--checkpoint", str(w / "fm.pt"), "--device", "cpu", "--workers", "0", "--batch-size", "50"]


def default_sigint() -> None:
    """`preexec_fn` of every command these tests signal: SIGINT as a terminal leaves it. Started with
    SIGINT ignored (`make test &`, nohup, a CI runner), Python installs no KeyboardInterrupt handler
    and the command would never see the test's SIGINT."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def evaluating(argv: list[str], *, lead: list[str] | None = None, **popen: bool) -> subprocess.Popen:
    """`python -m resnetlab ARGV` (or `python LEAD ARGV`) started and half a second into its evaluation."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, *(lead or ["-m", "resnetlab"]), *argv]
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(cmd, env=env, **pipes, preexec_fn=default_sigint, **popen)
    first = proc.stdout.readline()  # "data: ..." once the command runs (torch imported, handler set)
    assert first.startswith("data:"), (first, proc.communicate()[1])
    time.sleep(0.5)  # inside the evaluation (its loader workers running, where it has them)
    return proc


@pytest.mark.parametrize("sig, line, code", [(signal.SIGTERM, "terminated", 143), (signal.SIGINT, "interrupted", 130)])
def test_a_signal_during_evaluate_is_one_line(slow_evaluation, sig, line, code):
    proc = evaluating(slow_evaluation)
    assert proc.poll() is None, "the evaluation ended before the signal: make it longer"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert err.strip().splitlines() == [line], err[-3000:]


@pytest.fixture(scope="module")
def folder_evaluation(tmp_path_factory) -> list[str]:
    """An `evaluate` of a JPEG folder through DataLoader workers: 1,200 images, a few seconds."""
    import torch
    from PIL import Image

    w = tmp_path_factory.mktemp("workers")
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    for name in classes:
        (w / "val" / name).mkdir(parents=True)
        for i in range(400):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(w / "val" / name / f"{i}.JPEG")
    meta = {"dataset": "imagefolder", "classes": classes, "num_classes": 3, "in_channels": 3, "image_size": 32,
            "mean": torch.full((3, 32, 32), 0.5), "std": None, "model": "cifar_resnet20",
            "model_options": {"num_classes": 3}}  # fmt: skip
    net = create_model("cifar_resnet20", num_classes=3)
    save_atomic({"model": net.state_dict(), "config": {"data": {"dir": str(w)}}, "meta": meta}, w / "ck.pt")
    return ["evaluate", "--checkpoint", str(w / "ck.pt"), "--device", "cpu", "--workers", "2", "--batch-size", "4"]


def test_sigterm_to_the_whole_group_with_data_workers_is_one_line(folder_evaluation):
    # What a job scheduler's cancel, `timeout` or a terminal does: the signal reaches every process of
    # the group, the DataLoader workers too; the command must still say one line, not a worker's error.
    proc = evaluating(folder_evaluation, start_new_session=True)  # its own group, the workers in it
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines() == ["terminated"], err[-3000:]


# The command with an error planted in its DataLoader workers: reading any image file raises LookupError.
PLANTED = """
import sys
import resnetlab.data.images

def planted(*args, **kwargs):
    raise LookupError("planted in a worker")

resnetlab.data.images.read_bytes = planted
from resnetlab.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_an_unexpected_error_in_a_data_worker_ends_the_command_within_seconds(folder_evaluation):
    # A worker's error re-raised in the command is a reference cycle (torch's ExceptionWrapper): the
    # loader outlives it until exit, and multiprocessing's exit handler waited forever on workers that
    # ignore SIGTERM (the command printed its one line and never exited).
    proc = evaluating(folder_evaluation, lead=["-c", PLANTED], start_new_session=True)
    try:
        err = ""
        while not err.startswith("error:") and proc.poll() is None:
            err = proc.stderr.readline()
        said = time.monotonic()
        rest = proc.communicate(timeout=60)[1]
        assert time.monotonic() - said < 15
        assert proc.returncode == 1 and "error: LookupError: planted in a worker (unexpected" in err, err + rest
        assert rest == "", rest
        with pytest.raises(ProcessLookupError):  # no worker is left in its process group
            os.killpg(proc.pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), pytest.param(signal.SIGINT, 130, marks=pytest.mark.slow)])
def test_a_signal_to_the_whole_group_during_training_with_data_workers_checkpoints(tmp_path, sig, code):
    # The ImageNet recipe reads files through DataLoader workers; a scheduler's cancel (SIGTERM) or a
    # terminal's Ctrl-C (SIGINT) reaches them too. The run must still finish its step, checkpoint and
    # say one line; `--resume` continues it.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from test_imagenet import write_tree

    tree = write_tree(tmp_path / "tree")
    out = tmp_path / "run"
    argv = ["train", "--preset", "imagenet-resnet18", "--out", str(out), "--device", "cpu", "--set"]
    argv += ["data.name=imagefolder", f"data.dir={tree}", "data.crop=32", "data.scale_min=36", "data.scale_max=48"]
    argv += ["data.mean_samples=20", "data.workers=2", "train.batch_size=4", "train.eval_batch_size=6"]
    argv += ["train.max_iters=100000", "train.eval_every=2", "train.checkpoint_every=100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "resnetlab", *argv]
    pipes = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(cmd, env=env, **pipes, start_new_session=True, preexec_fn=default_sigint)
    deadline = time.time() + 120
    for line in proc.stdout:  # training has started: its workers are feeding it
        if line.startswith("iter 4:"):
            break
        assert time.time() < deadline, line
    os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    assert "Traceback" not in err and "Exception" not in err, err[-3000:]
    reached = torch_load_iteration(out / "checkpoint.pt")
    assert reached >= 4
    argv[argv.index("train.max_iters=100000")] = f"train.max_iters={reached + 2}"
    done = subprocess.run([*cmd[:3], *argv, "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch_load_iteration(out / "final.pt") == reached + 2


def torch_load_iteration(path: Path) -> int:
    import torch

    return int(torch.load(path, weights_only=True, map_location="cpu")["iteration"])
