"""`reproduce --branch-from GRID`: an 8-iteration grid started from a 16-iteration grid's kept
checkpoints ends as the 8-iteration grid trained from 0, bit for bit."""

from __future__ import annotations

import torch

from resnetlab.cli import main
from resnetlab.config import load_config
from resnetlab.runner.branch import branch_new_jobs, kept_checkpoints
from resnetlab.runner.plan import plan
from resnetlab.runner.pool import run_jobs
from resnetlab.runner.status import status_lines
from resnetlab.utils import checkpoint


def tiny(kind, depth):
    """A ResNet-8 on the fake source for every network of the grid (`fake_data`)."""
    from train_fake_data import TINY

    return load_config("cifar10-resnet20", [*TINY, "train.device=cpu"])


def grid(out, iters, *overrides):
    return plan(
        "table6",
        out=out,
        schedule_name="short",
        iters=iters,
        config_fn=tiny,
        nets=["resnet20"],
        overrides=list(overrides),
    )


def test_a_grid_branched_from_a_longer_one_ends_as_trained_from_zero(tmp_path, fake_data):
    # 16 iterations, lr / 10 at 8 and 12, kept at 4 and 8; the 8-iteration grid drops at 4 and 6, so
    # iteration 8 does not fit it (its drop at 4 would have come before) and 4 does: the latest that fits.
    long = grid(tmp_path / "long", 16, "train.keep_checkpoints=[4,8]")
    run_jobs(long, log=lambda _: None)
    assert [it for it, _ in kept_checkpoints(long[0].out_dir)] == [8, 4]

    lines = []
    short = grid(tmp_path / "short", 8)
    # --status says where each new run would start, and times the rest with the other grid's speed.
    without, ahead = status_lines(short), status_lines(short, branch_from=tmp_path / "long")
    assert without[1].split()[1:3] == ["new", "0/8"] and without[-1].startswith("time left: not known")
    assert ahead[1].split()[1:3] == ["branch", "4/8"] and ahead[-1].startswith("time left: about ")
    assert branch_new_jobs(short, tmp_path / "long", log=lines.append) == ["resnet20-seed0"] and lines == []
    assert short[0].state() == "resume" and short[0].start_iteration() == 4
    assert branch_new_jobs(short, tmp_path / "long") == []  # no longer new: nothing done twice
    run_jobs(short, log=lambda _: None)

    direct = grid(tmp_path / "direct", 8)
    run_jobs(direct, log=lambda _: None)
    a = checkpoint.load(short[0].out_dir / "final.pt")["model"]
    b = checkpoint.load(direct[0].out_dir / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)

    # A grid none of whose kept checkpoints fits says so and trains from 0.
    other = grid(tmp_path / "other", 8, "optim.lr=0.05")
    assert branch_new_jobs(other, tmp_path / "long", log=lines.append) == []
    assert len(lines) == 1 and lines[0].startswith("[branch] resnet20-seed0 trains from iteration 0: ")
    assert "optim.lr: 0.1 there, 0.05 now" in lines[0] and other[0].state() == "new"


def test_branch_from_a_folder_that_is_not_there_is_one_line(tmp_path, capsys):
    argv = ["reproduce", "table6", "--out", str(tmp_path / "g"), "--schedule", "short", "--iters", "8"]
    assert main([*argv, "--device", "cpu", "--nets", "resnet20", "--branch-from", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "--branch-from" in err and "no such grid folder" in err and "Traceback" not in err
    assert not (tmp_path / "g").exists()
    assert main([*argv, "--device", "cpu", "--branch-from", str(tmp_path / "nope"), "--status"]) == 2
    assert "no such grid folder" in capsys.readouterr().err
