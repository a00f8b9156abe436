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
def fake(fake_data, one_thread):
    """Every run here reads fake data on one intra-op thread."""


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


def test_branch_from_a_kept_checkpoint_takes_that_runs_config(tmp_path, capsys):
    """--branch-from without --preset starts from the config stored in the checkpoint (ResNet-8 on fake
    data here, not the default preset's ResNet-20); --set changes the schedule after it."""
    keep = ("train.max_iters=10", "train.eval_every=5", "train.keep_checkpoints=[5]", "optim.milestones=[8]")
    assert train(tmp_path / "a", settings=keep) == 0
    argv = ["train", "--out", str(tmp_path / "b"), "--branch-from", str(tmp_path / "a" / "checkpoint-5.pt")]
    assert main([*argv, "--set", "train.max_iters=8", "optim.milestones=[6]"]) == 0
    assert f"starts from {tmp_path / 'a' / 'checkpoint-5.pt'} (iteration 5)" in capsys.readouterr().out
    stored = (tmp_path / "b" / "config.yaml").read_text()
    assert "depth: 8" in stored and "max_iters: 8" in stored and "- 6" in stored
    other = ["train", "--out", str(tmp_path / "c"), "--branch-from", argv[-1], "--set", "optim.milestones=[4]"]
    assert main(other) == 2  # a UserError
    one_line_error(capsys, "--branch-from", "optim.milestones: [8] there, [4] now")
    assert not (tmp_path / "c").exists()
    assert main(["train", "--out", str(tmp_path / "d"), "--branch-from", str(tmp_path / "nope.pt")]) == 2
    one_line_error(capsys, "--branch-from: checkpoint", "nope.pt does not exist")
    with pytest.raises(SystemExit):  # a new run from another's checkpoint, or this folder's own: not both
        main([*argv, "--resume"])
    assert "not allowed with argument" in capsys.readouterr().err


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


# ---- fine-tuning from torchvision weights, in real processes (issue 22) --------------------------


def resnetlab(*args: str, cores: set[int] | None = None) -> subprocess.CompletedProcess:
    """`python -m resnetlab ARGS` in its own process, stdout and stderr captured (not a terminal), on
    `cores` only when given (as `taskset` would)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # PYTHONPATH, when set, carries this checkout
    pin = (lambda: os.sched_setaffinity(0, cores)) if cores else None
    cmd = [sys.executable, "-m", "resnetlab", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, preexec_fn=pin)


def torchvision_resnet18_pth(path: Path, in_channels: int = 3) -> Path:
    """torchvision.models.resnet18(weights=None)'s state dict in a .pth, as users save or download them."""
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    if in_channels != 3:
        tv.conv1 = torch.nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    torch.save(tv.state_dict(), path)
    return path


def image_tree(root: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from test_imagenet import write_tree

    return write_tree(root)


TINY_IMAGES = ("data.crop=32", "data.scale_min=36", "data.scale_max=48", "data.mean_samples=20")
ONE_ITER = ("train.batch_size=4", "train.eval_batch_size=6", "train.max_iters=1", "train.eval_every=1")


def test_torchvision_resnet18_weights_onto_the_imagenet_resnet18_preset(tmp_path):
    """The paper's stride_in_1x1=true stays in the preset: basic blocks have no 1x1 conv, so torchvision's
    v1.5 weights fit. Its option A shortcut is another network: one line that says so. On one core the
    preset's data.workers (null) starts one loader worker, says so, and the DataLoader has nothing to warn."""
    pth, tree = torchvision_resnet18_pth(tmp_path / "r18.pth"), image_tree(tmp_path / "tree")
    argv = ["train", "--preset", "imagenet-resnet18", "--init-from", str(pth), "--device", "cpu", "--set"]
    argv += ["data.name=imagefolder", f"data.dir={tree}", *TINY_IMAGES, *ONE_ITER]
    refused = resnetlab(*argv[:3], "--out", str(tmp_path / "a"), *argv[3:])
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        "error: train.init_from weights have model.shortcut='B', the config 'A': --set model.shortcut=B"
    ]
    one_core = {min(os.sched_getaffinity(0))}
    run = resnetlab(*argv[:3], "--out", str(tmp_path / "run"), *argv[3:], "model.shortcut=B", cores=one_core)
    assert run.returncode == 0, run.stderr
    assert "head replaced: fc 1000 -> 3 classes" in run.stdout
    assert "data.workers: 1 loader processes (one per core this process may use, at most 8)" in run.stdout
    assert "Warning" not in run.stderr, run.stderr
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    assert final["config"]["model"]["stride_in_1x1"] is True and final["iteration"] == 1


def test_weights_of_another_depth_suggest_the_model_name(tmp_path):
    pth, tree = torchvision_resnet18_pth(tmp_path / "r18.pth"), image_tree(tmp_path / "tree")
    argv = ["train", "--preset", "finetune-imagefolder", "--out", str(tmp_path / "run"), "--init-from", str(pth)]
    proc = resnetlab(*argv, "--device", "cpu", "--set", f"data.dir={tree}", *TINY_IMAGES, *ONE_ITER)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: train.init_from: ") and line.endswith("did you mean model.name=resnet18?")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def write_mnist_like(root: Path, n_train: int = 24, n_test: int = 8) -> Path:
    """root/MNIST/raw: idx files of random 28x28 grey digits, so that no download is needed."""
    import struct

    g = torch.Generator().manual_seed(0)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, shape in (("images-idx3", (n, 28, 28)), ("labels-idx1", (n,))):
            data = torch.randint(0, 256 if kind.startswith("images") else 10, shape, generator=g, dtype=torch.uint8)
            header = struct.pack(">BBBB", 0, 0, 8, len(shape)) + struct.pack(f">{len(shape)}i", *shape)
            (raw / f"{prefix}-{kind}-ubyte").write_bytes(header + data.numpy().tobytes())
    return root


def test_rgb_weights_on_grey_images_through_the_cli(tmp_path):
    """RGB torchvision weights, 1-channel MNIST-format images (the real reader, no download): refused in one
    line naming train.init_channels by default; with adapt, the run trains and keeps conv1 as the sum of the
    source's RGB filters (the stem frozen, so conv1 stays as initialised)."""
    pth, data = torchvision_resnet18_pth(tmp_path / "r18.pth"), write_mnist_like(tmp_path / "data")
    argv = ["train", "--preset", "cifar10-resnet20", "--init-from", str(pth), "--device", "cpu", "--set"]
    argv += ["data.name=mnist", f"data.dir={data}", "data.download=false", "model.name=resnet18"]
    argv += ["model.shortcut=B", "train.freeze=[stem]", *ONE_ITER]
    refused = resnetlab(*argv[:3], "--out", str(tmp_path / "a"), *argv[3:])
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: ") and "--set train.init_channels=adapt" in line
    run = resnetlab(*argv[:3], "--out", str(tmp_path / "run"), *argv[3:], "train.init_channels=adapt")
    assert run.returncode == 0, run.stderr
    assert "conv1 adapted" in run.stdout
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    source = torch.load(pth, weights_only=True)["conv1.weight"]
    torch.testing.assert_close(final["model"]["conv1.weight"], source[:, 0:1] + source[:, 1:2] + source[:, 2:3])
    assert final["meta"]["in_channels"] == 1 and final["meta"]["mean"].shape[0] == 1


def test_grey_weights_on_rgb_images_through_the_cli(tmp_path):
    """Grey weights (a 1-channel network of ours) on a folder of RGB images under the CIFAR recipe:
    refused in one line naming train.init_channels, as docs/finetune.md says (the images were decoded
    as grey to fit the weights, silently); with adapt, conv1's filter is spread over R, G, B / 3."""
    from PIL import Image

    from resnetlab.models import create_model
    from resnetlab.utils.checkpoint import save_atomic

    rng = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in "ab":
            (tmp_path / "rgb" / split / c).mkdir(parents=True)
            for i in range(3):
                pixels = torch.randint(0, 256, (32, 32, 3), generator=rng, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / "rgb" / split / c / f"{i}.png")
    net = create_model("cifar_resnet20", num_classes=10, in_channels=1)
    meta = {"dataset": "fashion-mnist", "classes": [str(i) for i in range(10)], "num_classes": 10, "in_channels": 1,
            "image_size": 28, "mean": torch.full((1, 28, 28), 0.3), "std": None, "model": "cifar_resnet20",
            "model_options": {"num_classes": 10, "in_channels": 1}}  # fmt: skip
    save_atomic({"model": net.state_dict(), "config": {}, "meta": meta}, tmp_path / "grey.pt")
    argv = ["train", "--preset", "cifar10-resnet20", "--device", "cpu", "--set", "data.name=imagefolder"]
    argv += [f"data.dir={tmp_path / 'rgb'}", "data.workers=0", f"train.init_from={tmp_path / 'grey.pt'}"]
    argv += ["train.freeze=[stem]", *ONE_ITER]
    refused = resnetlab(*argv, "--out", str(tmp_path / "a"))
    assert refused.returncode == 2 and not (tmp_path / "a").exists(), refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "trained on 1-channel images, the data has 3" in line and "train.init_channels=adapt" in line
    run = resnetlab(*argv, "train.init_channels=adapt", "--out", str(tmp_path / "run"))
    assert run.returncode == 0, run.stderr
    assert "conv1 adapted" in run.stdout
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    torch.testing.assert_close(final["model"]["conv1.weight"], net.conv1.weight.detach().repeat(1, 3, 1, 1) / 3)
    assert final["meta"]["in_channels"] == 3 and final["meta"]["mean"].shape[0] == 3


# ---- the progress bar: a terminal only, never with --quiet --------------------------------------------


def fake_train_cmd(out: Path, *extra: str) -> list[str]:
    """The real CLI in its own process, with the fake source (train_fake_data.py run as a script)."""
    script = TRAIN_TESTS / "train_fake_data.py"
    argv = ["train", "--preset", "cifar10-resnet20", "--out", str(out), "--device", "cpu", *extra, "--set"]
    return [sys.executable, str(script), *argv, *train_fake_data.TINY, "train.max_iters=10", "train.eval_every=10"]


def on_a_terminal(cmd: list[str]) -> tuple[int, str]:
    """Run `cmd` with stdout and stderr on a pseudo-terminal; (exit code, everything it wrote)."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 x 100, not 0 x 0
    proc = subprocess.Popen(cmd, stdout=follower, stderr=follower, env={**os.environ, "OMP_NUM_THREADS": "1"})
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return proc.wait(timeout=300), b"".join(chunks).decode(errors="replace")


BAR = "10/10 ["  # tqdm's "n/total [elapsed<remaining" of the finished bar


def test_progress_bar_on_a_terminal_only_and_never_with_quiet(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logged = subprocess.run(fake_train_cmd(tmp_path / "log"), capture_output=True, text=True, env=env, timeout=300)
    assert logged.returncode == 0, logged.stderr
    assert BAR not in logged.stderr and "\r" not in logged.stderr + logged.stdout  # a log file gets no bar
    assert "iter 10: test error" in logged.stdout  # the evaluation lines are still there
    log_lines = [line.split(":")[0] for line in logged.stdout.splitlines() if line.endswith(" s/it")]
    assert log_lines == ["iter 5", "iter 10"], logged.stdout  # train.log_every=5: a log file shows progress
    code, shown = on_a_terminal(fake_train_cmd(tmp_path / "tty"))
    assert code == 0 and BAR in shown and "iter 10: test error" in shown and " s/it" not in shown
    code, quiet = on_a_terminal(fake_train_cmd(tmp_path / "quiet", "--quiet"))
    assert code == 0 and BAR not in quiet and "iter 10: test error" in quiet and "iter 5: loss" in quiet
