"""`resnetlab.train.lifecycle` through `run_training` (in process, the tiny fake source, CPU)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from resnetlab.errors import UserError
from resnetlab.train import NonFiniteLoss, run_training
from resnetlab.train.lifecycle import RESUMABLE_KEYS, open_run

NOBODY = 65534


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


def test_a_read_only_folder_is_one_line_before_any_data(no_data, tiny_cfg):
    cfg = tiny_cfg()
    # Root writes anywhere: as root, this test drops the effective uid to nobody's for the run, so
    # the kernel checks the folder's mode as for any user. Folders outside pytest's (which only root
    # may enter), so that the read-only mode is the one thing in the way.
    base = Path(tempfile.mkdtemp())
    try:
        base.chmod(0o755)
        for name, mode in (("ro", 0o555), ("rw", 0o777)):
            (base / name).mkdir()
            (base / name).chmod(mode)  # not mkdir's mode: the umask would take bits off
        with unprivileged():
            with pytest.raises(UserError, match="cannot write there"):
                run_training(cfg, base / "ro" / "run")
            with pytest.raises(UserError, match="cannot write there"):
                run_training(cfg, base / "ro")  # the folder exists: its lock file cannot be made
            with pytest.raises(AssertionError, match="data was loaded"):  # the same user can write here
                run_training(cfg, base / "rw" / "run")
        assert os.listdir(base / "ro") == []
    finally:
        shutil.rmtree(base)


@contextlib.contextmanager
def unprivileged():
    """The block runs with nobody's effective uid when the tests run as root (the real uid stays
    root, which lets it come back); as another user, as that user."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


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
    # lr drops may move only where the iterations done keep their lr: none below 10 (lr 0.1 to 10).
    with pytest.raises(UserError, match=r"optim.milestones: \[32000, 48000\] there, \[5, 12\] now"):
        run_training(tiny_cfg("train.max_iters=15", "optim.milestones=[5,12]"), tmp_path, resume=True)
    later = tiny_cfg("train.max_iters=15", "optim.milestones=[12]")
    assert run_training(later, tmp_path, resume=True)["iterations"] == 15


def test_resume_of_a_finished_run_without_its_checkpoint_keeps_final_pt(tmp_path, fake_data, tiny_cfg):
    """checkpoint.pt removed from a finished run (to save space): --resume would take it for a run that
    never checkpointed, train again from 0 and delete final.pt. Refused; final.pt stays as it was."""
    cfg = tiny_cfg("train.max_iters=10", "train.checkpoint_every=5")
    run_training(cfg, tmp_path)
    (tmp_path / "checkpoint.pt").unlink()
    before = (tmp_path / "final.pt").read_bytes()
    with pytest.raises(UserError, match=r"holds a finished run \(final.pt\) and no checkpoint.pt to continue from"):
        run_training(cfg, tmp_path, resume=True)
    assert (tmp_path / "final.pt").read_bytes() == before


def test_rng_states_loaded_onto_another_device_are_set_back():
    """A checkpoint loaded with map_location=cuda holds its RNG states on the GPU, and the generators take
    CPU byte tensors only (TypeError before, so no CUDA run could resume). Stand-in for a GPU tensor:
    an object that only `.cpu()` turns into the saved tensor. The draws after setting the states back
    equal those after the states were taken."""
    import random

    import numpy as np

    from resnetlab.train.lifecycle.rng import rng_state, set_rng_state

    class OnDevice:
        def __init__(self, t):
            self.t = t

        def cpu(self):
            return self.t

    cpu = torch.device("cpu")
    state = rng_state(cpu)
    expected = (torch.rand(3), random.random(), np.random.rand())
    name, keys, *rest = state["numpy"]
    moved = {**state, "torch": OnDevice(state["torch"]), "numpy": (name, OnDevice(keys), *rest)}
    set_rng_state(moved, cpu)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(again[0], expected[0]) and again[1:] == expected[1:]


def test_log_every_may_change_on_resume_unless_a_warm_up_is_measured_over_it(tmp_path, fake_data, tiny_cfg):
    """ResNet-110's warm-up ends at the first log whose window's training error is below 80 %: another
    train.log_every would end it elsewhere, so with optim.warmup_lr it is refused on --resume (and
    `reproduce` does not reuse such a run); without a warm-up it only changes the logs."""
    plain = ("train.max_iters=10", "train.checkpoint_every=5")
    run_training(tiny_cfg(*plain), tmp_path / "a")
    run_training(
        tiny_cfg("train.max_iters=12", "train.checkpoint_every=5", "train.log_every=3"), tmp_path / "a", resume=True
    )
    warm = (*plain, "optim.warmup_lr=0.01")
    run_training(tiny_cfg(*warm), tmp_path / "b")
    with pytest.raises(UserError, match=r"train.log_every: 5 there, 3 now") as e:
        run_training(tiny_cfg(*warm, "train.log_every=3"), tmp_path / "b", resume=True)
    assert "train.log_every" not in str(e.value).split("may change")[0].split("on --resume only")[1]
    # The plateau schedule counts evaluations: train.eval_every shapes it the same way.
    plateau = (*plain, "optim.schedule=plateau", "train.eval_every=5")
    run_training(tiny_cfg(*plateau), tmp_path / "c")
    with pytest.raises(UserError, match=r"train.eval_every: 5 there, 2 now"):
        run_training(tiny_cfg(*plain, "optim.schedule=plateau", "train.eval_every=2"), tmp_path / "c", resume=True)


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


def test_a_failed_run_removes_the_folders_it_made_and_nothing_else(tmp_path, fake_data, tiny_cfg, monkeypatch):
    """A run that fails before saving anything leaves no folder behind (the run folder and the parents
    it made, written here by nobody else); a folder that existed stays, without our lock file; a run
    that saved a checkpoint or metrics keeps them for --resume."""
    monkeypatch.setenv("FAKE_NAN_AT", "1")  # fails at iteration 2, before any log, metrics or checkpoint
    cfg = tiny_cfg("train.max_iters=20", "train.eval_every=10", "train.checkpoint_every=10")
    (tmp_path / "kept").mkdir()
    with pytest.raises(NonFiniteLoss):
        run_training(cfg, tmp_path / "kept" / "new" / "deeper" / "run")
    assert os.listdir(tmp_path / "kept") == []
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "notes.txt").write_text("mine")
    with pytest.raises(NonFiniteLoss):
        run_training(cfg, tmp_path / "existing")
    assert sorted(os.listdir(tmp_path / "existing")) == ["notes.txt"]  # its config.yaml and the lock file went
    # A run started again in a folder of its own (--resume, never checkpointed): its config.yaml stays.
    from resnetlab.config import dump

    (tmp_path / "started").mkdir()
    dump(cfg, tmp_path / "started" / "config.yaml")
    with pytest.raises(NonFiniteLoss):
        run_training(cfg, tmp_path / "started", resume=True)
    assert os.listdir(tmp_path / "started") == ["config.yaml"]
    monkeypatch.setenv("FAKE_NAN_AT", "15")  # after the checkpoint and the row of iteration 10
    with pytest.raises(NonFiniteLoss):
        run_training(cfg, tmp_path / "saved" / "run")
    assert {"checkpoint.pt", "metrics.jsonl", "config.yaml"} <= set(os.listdir(tmp_path / "saved" / "run"))


def test_a_resume_removes_temp_files_of_killed_checkpoint_writes(tmp_path, fake_data, tiny_cfg):
    cfg = tiny_cfg("train.max_iters=10", "train.checkpoint_every=5")
    run_training(cfg, tmp_path)
    stale = [tmp_path / ".checkpoint.pt.k2j4x9.tmp", tmp_path / ".final.pt.a1b2c3.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    other = tmp_path / ".notes.tmp"  # not of our naming pattern: kept
    other.write_text("x")
    run_training(tiny_cfg("train.max_iters=15", "train.checkpoint_every=5"), tmp_path, resume=True)
    assert not any(p.exists() for p in stale) and other.exists()


def test_a_directory_where_a_run_file_belongs_is_one_line(tmp_path, no_data, tiny_cfg):
    (tmp_path / "metrics.jsonl").mkdir()
    with pytest.raises(UserError, match=r"metrics\.jsonl is not a file"):
        run_training(tiny_cfg(), tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]


def test_a_resume_reads_the_checkpoint_once(tmp_path, fake_data, tiny_cfg, monkeypatch):
    # Checked and restored from one read: a ResNet-152 checkpoint with its optimizer is ~0.5 GB.
    import torch

    cfg = tiny_cfg("train.max_iters=10", "train.checkpoint_every=5")
    run_training(cfg, tmp_path)
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    summary = run_training(tiny_cfg("train.max_iters=15", "train.checkpoint_every=5"), tmp_path, resume=True)
    assert summary["iterations"] == 15
    assert [Path(p).name for p in reads] == ["checkpoint.pt"]
