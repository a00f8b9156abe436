"""`resnetlab.train.lifecycle` through `run_training` (in process, the tiny fake source, CPU)."""

from __future__ import annotations

import json
import os

import pytest

from resnetlab.errors import UserError
from resnetlab.train import NonFiniteLoss, run_training
from resnetlab.train.lifecycle import RESUMABLE_KEYS, open_run


@pytest.fixture
def no_data(monkeypatch):
    """Fails the test if the loop gets as far as loading data."""
    import resnetlab.train.loop as loop

    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded before the folder was checked")

    monkeypatch.setattr(loop, "build_data", refuse)


def test_unwritable_out_is_one_line_before_any_data(tmp_path, no_data, tiny_cfg):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(UserError, match="a file is in the way"):
        run_training(tiny_cfg(), tmp_path / "file")
    with pytest.raises(UserError, match="a file is in the way"):
        run_training(tiny_cfg(), tmp_path / "file" / "run")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(UserError, match="cannot write there"):
            run_training(tiny_cfg(), ro / "run")


def test_a_locked_folder_is_refused_naming_the_holder(tmp_path, no_data, tiny_cfg):
    cfg = tiny_cfg()
    with open_run(cfg, tmp_path, resume=False):  # this process holds the lock
        with pytest.raises(UserError, match=f"in use by pid {os.getpid()} on "):
            run_training(cfg, tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_resume_refusals(tmp_path, fake_data, tiny_cfg):
    run_training(tiny_cfg("train.max_iters=10", "train.checkpoint_every=5"), tmp_path)
    # Every changed key in one line, with the list of keys that may change.
    with pytest.raises(UserError) as e:
        run_training(tiny_cfg("train.max_iters=10", "optim.lr=0.2", "train.seed=3"), tmp_path, resume=True)
    message = str(e.value)
    assert "\n" not in message
    assert "optim.lr: 0.1 there, 0.2 now" in message and "train.seed: 0 there, 3 now" in message
    assert "train.max_iters" in message  # among the keys that may change
    # A max_iters below the reached iteration would rewrite a finished run as a shorter one.
    with pytest.raises(UserError, match="reached iteration 10; train.max_iters=5 is below it"):
        run_training(tiny_cfg("train.max_iters=5", "train.checkpoint_every=5"), tmp_path, resume=True)
    assert (tmp_path / "final.pt").exists()


def test_resumable_keys_change_nothing_an_iteration_computes():
    assert {"train.max_iters", "train.eval_every", "data.workers", "train.device"} <= RESUMABLE_KEYS
    assert not {"optim.lr", "train.seed", "train.batch_size", "model.name", "data.name"} & RESUMABLE_KEYS


def test_a_run_that_died_before_its_first_checkpoint_runs_again(tmp_path, fake_data, tiny_cfg, monkeypatch):
    cfg = tiny_cfg("train.max_iters=20", "train.eval_every=5", "train.checkpoint_every=10")
    monkeypatch.setenv("FAKE_NAN_AT", "7")
    with pytest.raises(NonFiniteLoss, match="iteration 8.*no checkpoint was written yet"):
        run_training(cfg, tmp_path)
    assert [json.loads(x)["iter"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [5]
    monkeypatch.delenv("FAKE_NAN_AT")
    summary = run_training(cfg, tmp_path)  # the same call, no --resume needed
    assert summary["iterations"] == 20
    assert [json.loads(x)["iter"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [5, 10, 15, 20]
