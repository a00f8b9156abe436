"""`run_training` end to end on the tiny fake source (in process, CPU, seconds)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from resnetlab.config import from_dict, to_dict
from resnetlab.errors import UserError
from resnetlab.models import create_model
from resnetlab.train import NonFiniteLoss, run_training
from resnetlab.utils import checkpoint


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_config_metrics_tensorboard_checkpoints(tmp_path, fake_data, tiny_cfg):
    cfg = tiny_cfg("train.max_iters=25", "train.eval_every=10", "train.checkpoint_every=10")
    summary = run_training(cfg, tmp_path / "run")
    run = tmp_path / "run"

    assert from_dict(yaml.safe_load((run / "config.yaml").read_text())) == cfg
    metrics = read_metrics(run)
    assert [m["iter"] for m in metrics] == [10, 20, 25]  # every eval_every and at the end
    for m in metrics:
        assert set(m) == {"iter", "lr", "train_loss", "train_error", "test_error", "eval_split", "time"}
        assert m["eval_split"] == ("val" if cfg.data.val_split else "test")
        assert 0 <= m["train_error"] <= 100 and 0 <= m["test_error"] <= 100
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert summary["iterations"] == 25 and summary["test_error"] == metrics[-1]["test_error"]
    assert summary["interrupted"] is None

    ckpt = checkpoint.load(run / "checkpoint.pt")
    assert ckpt["iteration"] == 25  # the end state, so a longer run can resume from it
    final = checkpoint.load(run / "final.pt")
    assert final["config"] == to_dict(cfg)
    meta = final["meta"]
    assert meta["dataset"] == "fake" and meta["model"] == "cifar_resnet"
    assert meta["model_options"] == {"num_classes": 4, "in_channels": 1, "depth": 8}
    # Evaluation rebuilds the model from the meta alone.
    model = create_model(meta["model"], **meta["model_options"])
    model.load_state_dict(final["model"])
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in final["model"])


def test_it_learns(tmp_path, fake_data, tiny_cfg):
    cfg = tiny_cfg("train.max_iters=60", "train.eval_every=20", "optim.milestones=[40]")
    run_training(cfg, tmp_path)
    metrics = read_metrics(tmp_path)
    assert metrics[-1]["train_loss"] < 0.6 * metrics[0]["train_loss"]
    assert metrics[-1]["test_error"] < 30  # 4 classes: chance is 75%
    assert metrics[-1]["lr"] == pytest.approx(0.01)  # divided by 10 at the milestone


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(
                    not torch.cuda.is_available(), reason="needs a CUDA GPU (run `pytest -m cuda` on one)"
                ),
            ],
        ),
    ],
)
def test_resume_continues_exactly(tmp_path, fake_data, tiny_cfg, device):
    """Bit-identical on the CPU. On CUDA the checkpoint is loaded onto the GPU, RNG states included
    (which the generators refused: no CUDA run could resume); cuDNN may sum in another order, so the
    weights are compared to 1e-4 there."""
    overrides = ("train.eval_every=10", "train.checkpoint_every=10", "optim.warmup_lr=0.01", "optim.milestones=[25]")
    overrides += (f"train.device={device}",)
    run_training(tiny_cfg("train.max_iters=30", *overrides), tmp_path / "a")
    run_training(tiny_cfg("train.max_iters=20", *overrides), tmp_path / "b")
    assert (tmp_path / "b" / "final.pt").exists()
    run_training(tiny_cfg("train.max_iters=30", *overrides), tmp_path / "b", resume=True)
    a = checkpoint.load(tmp_path / "a" / "final.pt")["model"]
    b = checkpoint.load(tmp_path / "b" / "final.pt")["model"]
    if device == "cpu":
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert [m["test_error"] for m in read_metrics(tmp_path / "a")] == [
            m["test_error"] for m in read_metrics(tmp_path / "b")
        ]
    else:
        assert all(torch.allclose(a[k].float(), b[k].float(), rtol=1e-4, atol=1e-5) for k in a)



@pytest.mark.parametrize(
    "cut, schedule",
    [
        # warm-up ending at the first log whatever the error: the old end's extra log (iteration 3) ended it there
        (3, ("optim.warmup_lr=0.01", "optim.warmup_until_error=100", "optim.milestones=[25]")),
        # every evaluation after the first a plateau: the old end's extra evaluation (15) divided the lr
        (15, ("optim.schedule=plateau", "optim.plateau_patience=1", "optim.plateau_threshold=100")),
    ],
    ids=["warm-up", "plateau"],
)
def test_a_run_lengthened_on_resume_trains_as_one_that_never_stopped(tmp_path, fake_data, tiny_cfg, cut, schedule):
    """A run that ended off the log / eval cadence and is resumed with a larger train.max_iters: its
    last log and evaluation are recorded but steer nothing, as docs/train.md says of train.max_iters."""
    common = ("train.eval_every=10", "train.checkpoint_every=10", *schedule)
    run_training(tiny_cfg("train.max_iters=30", *common), tmp_path / "a")
    run_training(tiny_cfg(f"train.max_iters={cut}", *common), tmp_path / "b")
    run_training(tiny_cfg("train.max_iters=30", *common), tmp_path / "b", resume=True)
    a = checkpoint.load(tmp_path / "a" / "final.pt")["model"]
    b = checkpoint.load(tmp_path / "b" / "final.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_a = [(m["iter"], m["lr"], m["test_error"]) for m in read_metrics(tmp_path / "a")]
    rows_b = [(m["iter"], m["lr"], m["test_error"]) for m in read_metrics(tmp_path / "b") if m["iter"] % 10 == 0]
    assert rows_a == rows_b


def test_an_evaluated_split_of_only_unreadable_images_is_one_line_not_0_percent(tmp_path, fake_data, tiny_cfg):
    """data.skip_corrupt leaves unreadable images out of the error; when none is left, the error of
    nothing is not a perfect score for the plateau rule and "best" to act on."""
    from resnetlab.train import loop

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "evaluate_error", lambda model, batches, **kw: (0, 0))  # every test batch skipped
        with pytest.raises(UserError, match=r"^no readable image in the evaluated split \(test\)"):
            run_training(tiny_cfg("train.max_iters=2", "train.eval_every=2"), tmp_path / "r")


def test_one_image_per_step_with_a_1x1_feature_map_is_one_line(tmp_path, fake_data, tiny_cfg):
    """BatchNorm in training needs two values per channel: the shape check ran on two images in
    eval mode and passed, and the first step failed as an unexpected ValueError."""
    cfg = tiny_cfg("model.name=resnet18", "model.depth=null", "train.batch_size=1", "train.max_iters=2")
    with pytest.raises(UserError, match=r"^train.batch_size gives 1 image per process, and model.name=resnet18 makes"):
        run_training(cfg, tmp_path / "r")  # the 8x8 fake images are 1x1 from layer2 on

def test_milestones_past_the_end_of_a_shortened_run_are_warned_about(tmp_path, fake_data, tiny_cfg, capsys):
    """--set train.max_iters=10 on the CIFAR preset keeps its milestones at 32k and 48k: the lr never
    drops. Said at the start, with the paper's shape for this length; milestones inside it: no word."""
    run_training(tiny_cfg("train.max_iters=10"), tmp_path / "a")
    out = capsys.readouterr().out
    assert (
        "warning: optim.milestones 32000, 48000 at or past train.max_iters=10: those lr drops never happen; "
        "the paper's shape (1/2 and 3/4 of the run) is --set 'optim.milestones=[5,7]'"
    ) in out.splitlines()
    run_training(tiny_cfg("train.max_iters=10", "optim.milestones=[5,7]"), tmp_path / "b")
    assert "optim.milestones" not in capsys.readouterr().out


def test_warmup_ends_when_training_error_drops(tmp_path, fake_data, tiny_cfg):
    cfg = tiny_cfg("train.max_iters=40", "train.eval_every=10", "optim.warmup_lr=0.01", "optim.warmup_until_error=50")
    run_training(cfg, tmp_path)
    state = checkpoint.load(tmp_path / "checkpoint.pt")["schedule"]
    assert state["warming_up"] is False and state["warmup_ended_at"] % 5 == 0  # decided at a log point
    lrs = [m["lr"] for m in read_metrics(tmp_path)]
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.1)


def test_warmup_that_never_ends_by_error_ends_at_the_first_milestone(tmp_path, fake_data, tiny_cfg, capsys):
    # warmup_until_error=0: the training error can never get below it.
    cfg = tiny_cfg(
        "train.max_iters=30",
        "train.eval_every=10",
        "optim.warmup_lr=0.02",
        "optim.warmup_until_error=0",
        "optim.milestones=[10,20]",
    )
    run_training(cfg, tmp_path)
    lrs = [m["lr"] for m in read_metrics(tmp_path)]  # the lr of the last update before each evaluation
    assert lrs == pytest.approx([0.02, 0.01, 0.001])  # 0.1/10 after 10, 0.1/100 after 20 (not 0.02 to the end)
    state = checkpoint.load(tmp_path / "checkpoint.pt")["schedule"]
    assert state["warmup_ended_at"] == 10 and state["warmup_capped"] is True
    assert "warm-up ended at iteration 10" in capsys.readouterr().out


def test_an_existing_run_is_not_overwritten(tmp_path, fake_data, tiny_cfg):
    run_training(tiny_cfg("train.max_iters=5"), tmp_path)
    with pytest.raises(UserError, match="already holds a run.*--resume"):
        run_training(tiny_cfg("train.max_iters=5"), tmp_path)
    with pytest.raises(UserError, match="different run: optim.lr"):
        run_training(tiny_cfg("train.max_iters=5", "optim.lr=0.2"), tmp_path, resume=True)
    with pytest.raises(UserError, match="no run to resume"):
        run_training(tiny_cfg("train.max_iters=5"), tmp_path / "empty", resume=True)


@pytest.mark.parametrize("damage", ["truncated", "foreign", "weights-only"])
def test_resume_refuses_a_bad_checkpoint(tmp_path, fake_data, tiny_cfg, damage):
    cfg = tiny_cfg("train.max_iters=5")
    run_training(cfg, tmp_path)
    path = tmp_path / "checkpoint.pt"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "foreign":
        torch.save({"state_dict": {}}, path)
    else:
        path.write_bytes((tmp_path / "final.pt").read_bytes())
    with pytest.raises(UserError, match="checkpoint"):
        run_training(tiny_cfg("train.max_iters=10"), tmp_path, resume=True)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, fake_data, tiny_cfg, monkeypatch):
    monkeypatch.setenv("FAKE_NAN_AT", "12")  # the batch of (0-based) iteration 12 is NaN
    cfg = tiny_cfg("train.max_iters=30", "train.checkpoint_every=10", "train.eval_every=10")
    with pytest.raises(NonFiniteLoss, match="at iteration 13"):
        run_training(cfg, tmp_path)
    ckpt = checkpoint.load(tmp_path / "checkpoint.pt")
    assert ckpt["iteration"] == 10
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not (tmp_path / "final.pt").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.warmup_lr=-1", "optim.warmup_lr"),
        ("optim.gamma=2", "optim.gamma"),
        ("model.name=resnet9000", "unknown model"),
        ("train.device=tpu", "device"),
    ],
)
def test_bad_config_values_are_user_errors(tmp_path, fake_data, tiny_cfg, override, message):
    with pytest.raises(UserError, match=message):
        run_training(tiny_cfg("train.max_iters=5", override), tmp_path)


@pytest.mark.parametrize("tf32", [False, True])
def test_train_tf32_is_recorded_and_applied_where_the_device_is_set_up(
    tmp_path, fake_data, tiny_cfg, monkeypatch, tf32
):
    """One run and K runs hand train.tf32 to `configure_device` (which sets it on CUDA, not on the CPU),
    and the run's config.yaml records it."""
    import resnetlab.train.batched as batched
    import resnetlab.train.loop as loop

    calls = []
    monkeypatch.setattr(loop, "configure_device", lambda device, *, tf32: calls.append((device.type, tf32)))
    cfg = tiny_cfg("train.max_iters=1", f"train.tf32={str(tf32).lower()}")
    run_training(cfg, tmp_path / "run")
    batched.train_batched([cfg, tiny_cfg("train.max_iters=1", "train.seed=1", f"train.tf32={tf32}")],
                          [tmp_path / "a", tmp_path / "b"])  # fmt: skip
    assert calls == [("cpu", tf32), ("cpu", tf32)]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["tf32"] is tf32
    assert from_dict({}).train.tf32 is False  # the default: the paper's fp32


def test_skipped_files_are_named_the_first_time_they_appear(tmp_path, fake_data, tiny_cfg, monkeypatch, capsys):
    """A source that skips unreadable files (ImageFolder with data.skip_corrupt) names them: the files
    first seen since the last evaluation go into that row of metrics.jsonl (10 at most) and its log line
    (3, then "and N more"); the count of skipped images stays."""
    import resnetlab.train.loop as loop

    bad = [f"/data/train/cat/bad{i}.jpg" for i in range(12)]

    class Skipping(fake_data.FakeTrain):
        skipped, skipped_files = 0, set()

        def batches(self, start_iter):
            for it, batch in enumerate(super().batches(start_iter), start_iter):
                if it == 1:  # twelve files fail in iteration 2, one more (and one again) in iteration 6
                    self.skipped, self.skipped_files = 12, set(bad)
                if it == 5:
                    self.skipped, self.skipped_files = 14, {*bad, "/data/train/dog/\x1b[2Jbroken.jpg"}
                yield batch

    def build(cfg, device, **kw):
        bundle = fake_data.build_fake_data(cfg, device, **kw)
        bundle.train = Skipping(cfg.train.batch_size, cfg.train.seed, 0, 1, device)
        return bundle

    monkeypatch.setattr(loop, "build_data", build)
    run_training(tiny_cfg("train.max_iters=12", "train.eval_every=4"), tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    assert [r.get("skipped_images") for r in rows] == [12, 14, 14]
    assert rows[0]["skipped_files_new"] == 12 and rows[0]["skipped_files"] == sorted(bad)[:10]
    assert rows[1]["skipped_files_new"] == 1 and rows[1]["skipped_files"] == ["/data/train/dog/\x1b[2Jbroken.jpg"]
    assert "skipped_files" not in rows[2]  # nothing new: not named again
    out = capsys.readouterr().out
    first = next(line for line in out.splitlines() if line.startswith("iter 4: test error"))
    assert first.endswith(f"12 unreadable images skipped (first seen: {', '.join(sorted(bad)[:3])} and 9 more)")
    second = next(line for line in out.splitlines() if line.startswith("iter 8: test error"))
    assert "(first seen: /data/train/dog/" in second and "\x1b" not in second  # escaped for the terminal
    third = next(line for line in out.splitlines() if line.startswith("iter 12: test error"))
    assert third.endswith("14 unreadable images skipped")
