"""A run kept at iteration N (`train.keep_checkpoints`) and another schedule started from it
(`--branch-from`): the same run as one trained on that schedule from the start, bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from resnetlab.errors import UserError
from resnetlab.train import run_training
from resnetlab.train.lifecycle import start_branch
from resnetlab.utils import checkpoint

# 16 iterations with lr / 10 at 8 and 12, kept at 4; 8 iterations with lr / 10 at 4 and 6: the lr of
# iterations 0-3 is the same in both, so the 8-iteration run may start from the 16-iteration run's 4.
LONG = ("train.max_iters=16", "optim.milestones=[8,12]", "train.keep_checkpoints=[4]", "train.eval_every=4")
SHORT = ("train.max_iters=8", "optim.milestones=[4,6]", "train.eval_every=2")


def rows(folder) -> list[dict]:
    out = []
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        row.pop("time")
        out.append(row)
    return out


def test_a_branch_at_an_lr_drop_is_the_direct_run_bit_for_bit(tmp_path, fake_data, tiny_cfg, capsys):
    run_training(tiny_cfg(*LONG), tmp_path / "long")
    kept = tmp_path / "long" / "checkpoint-4.pt"
    assert checkpoint.load(kept)["iteration"] == 4  # still iteration 4 after checkpoint.pt moved on to 16
    assert checkpoint.load(tmp_path / "long" / "checkpoint.pt")["iteration"] == 16

    run_training(tiny_cfg(*SHORT), tmp_path / "direct")
    capsys.readouterr()
    assert start_branch(tiny_cfg(*SHORT), tmp_path / "branch", kept) == 4
    run_training(tiny_cfg(*SHORT), tmp_path / "branch", resume=True)
    out = capsys.readouterr().out
    assert f"branch: {tmp_path / 'branch'} starts from {kept} (iteration 4)" in out
    assert f"resumed at iteration 4 from {tmp_path / 'branch' / 'checkpoint.pt'}" in out

    direct = checkpoint.load(tmp_path / "direct" / "final.pt")["model"]
    branch = checkpoint.load(tmp_path / "branch" / "final.pt")["model"]
    assert direct.keys() == branch.keys()
    assert all(torch.equal(direct[k], branch[k]) for k in direct)
    # Its record: the long run's rows up to 4 (evaluated every 4), then its own (every 2), as the direct run's.
    long_rows, direct_rows, branch_rows = rows(tmp_path / "long"), rows(tmp_path / "direct"), rows(tmp_path / "branch")
    assert branch_rows == [r for r in long_rows if r["iter"] <= 4] + [r for r in direct_rows if r["iter"] > 4]
    assert [r["iter"] for r in branch_rows] == [4, 6, 8]
    assert rows(tmp_path / "long")[0]["test_error"] == direct_rows[1]["test_error"]  # iteration 4 in both


def test_a_branch_is_refused_where_the_runs_part_before_its_checkpoint(tmp_path, fake_data, tiny_cfg):
    run_training(tiny_cfg(*LONG), tmp_path / "long")
    kept = tmp_path / "long" / "checkpoint-4.pt"
    refusals = {
        # lr / 10 at 3 here: iteration 3 had lr 0.1 in the kept run
        ("train.max_iters=8", "optim.milestones=[3,6]"): r"optim.milestones: \[8, 12\] there, \[3, 6\] now",
        ("train.max_iters=8", "optim.milestones=[4,6]", "optim.lr=0.2"): r"optim.lr: 0.1 there, 0.2 now",
        ("train.max_iters=3",): r"is at iteration 4; train.max_iters=3 is below it",
    }
    for overrides, message in refusals.items():
        with pytest.raises(UserError, match=message) as e:
            start_branch(tiny_cfg(*overrides), tmp_path / "new", kept)
        assert "\n" not in str(e.value)
        assert not (tmp_path / "new").exists()  # nothing made
    with pytest.raises(UserError, match="a weights file, not a training checkpoint"):
        start_branch(tiny_cfg(*SHORT), tmp_path / "new", tmp_path / "long" / "final.pt")
    with pytest.raises(UserError, match="already holds a run"):  # a branch is a new run
        start_branch(tiny_cfg(*SHORT), tmp_path / "long", kept)
    assert checkpoint.load(tmp_path / "long" / "checkpoint.pt")["iteration"] == 16


def test_a_branch_that_died_before_its_own_checkpoint_resumes_from_the_kept_one(
    tmp_path, fake_data, tiny_cfg, monkeypatch
):
    """The branch's folder holds the kept checkpoint (a hard link) from the start: a branch that dies
    before writing one of its own is continued by `--resume` with its config, from the kept iteration."""
    import resnetlab.train.loop as loop

    run_training(tiny_cfg(*LONG), tmp_path / "long")
    kept = tmp_path / "long" / "checkpoint-4.pt"
    run_training(tiny_cfg(*SHORT), tmp_path / "direct")

    def crash(*args, **kwargs):
        raise RuntimeError("the machine went away")

    start_branch(tiny_cfg(*SHORT), tmp_path / "branch", kept)
    with monkeypatch.context() as m:
        m.setattr(loop, "evaluate_and_log", crash)  # at iteration 6, the branch's first evaluation
        with pytest.raises(RuntimeError, match="went away"):
            run_training(tiny_cfg(*SHORT), tmp_path / "branch", resume=True)
    assert checkpoint.load(tmp_path / "branch" / "checkpoint.pt")["iteration"] == 4
    assert (tmp_path / "branch" / "checkpoint.pt").stat().st_ino == kept.stat().st_ino
    run_training(tiny_cfg(*SHORT), tmp_path / "branch", resume=True)
    direct = checkpoint.load(tmp_path / "direct" / "final.pt")["model"]
    branch = checkpoint.load(tmp_path / "branch" / "final.pt")["model"]
    assert all(torch.equal(direct[k], branch[k]) for k in direct)
    assert checkpoint.load(kept)["iteration"] == 4  # the kept file untouched by the branch's own checkpoints
