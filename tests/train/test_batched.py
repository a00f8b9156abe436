"""`train_batched`: K runs as one computation equal the same K runs trained one by one.

The reference is `run_training` (and `make_train_step`) on each config alone: ordinary layers, one
network at a time. The batched runs differ only in the order of summation inside grouped convolutions.
In float64 that leaves weights, BN statistics and momentum buffers equal to 1e-9 relative; in fp32 the
same difference grows like that of any two fp32 runs (at lr 0.1, a few per cent within 6 steps: see
benchmarks/batched_drift.py), too loose a bound to catch a bug, so the runs are compared in float64.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import torch

from resnetlab.errors import UserError
from resnetlab.models import create_model
from resnetlab.models.stacked import stack_models
from resnetlab.train import make_sgd, make_train_step, run_training
from resnetlab.train.batched import train_batched
from resnetlab.train.step import compile_model
from resnetlab.utils import checkpoint

# Three runs that share one computation: two seeds of a ResNet-8 (one warming up at lr 0.01, which
# ends on its own training error) and a plain-8 with another weight decay.
PER_RUN = (
    ["train.seed=0"],
    ["train.seed=1", "optim.warmup_lr=0.01", "optim.warmup_until_error=70"],
    ["model.name=cifar_plain", "train.seed=0", "optim.weight_decay=5e-4"],
)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: dict, b: dict, tol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    for key in b:
        if b[key].is_floating_point():
            assert rel(a[key], b[key]) < tol, key
        else:
            assert torch.equal(a[key], b[key]), key  # num_batches_tracked


EXACT = 1e-9  # float64: what summation order leaves after 20 steps is ~1e-14; a bug is far above


@pytest.fixture
def float64():
    """Models and data made in float64 while the test runs (the loop keeps the weights' dtype)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.fixture
def cfgs(tiny_cfg):
    def make(*common: str):
        return [tiny_cfg(*common, *extra) for extra in PER_RUN]

    return make


def test_batched_runs_equal_separate_runs(tmp_path, fake_data, cfgs, float64):
    runs = cfgs("train.max_iters=6", "train.eval_every=1", "train.log_every=2", "train.checkpoint_every=3")
    batched = [tmp_path / f"batched{k}" for k in range(3)]
    summaries = train_batched(runs, batched)
    for k, cfg in enumerate(runs):
        alone = tmp_path / f"alone{k}"
        run_training(cfg, alone)
        ours, theirs = checkpoint.load(batched[k] / "final.pt"), checkpoint.load(alone / "final.pt")
        assert ours["model"]["conv1.weight"].dtype == torch.float64
        assert_same_weights(ours["model"], theirs["model"], tol=EXACT)  # BN running statistics included
        assert ours["config"] == theirs["config"] and ours["meta"].keys() == theirs["meta"].keys()
        # Optimizer state (momentum buffers) and the schedule's state, from the last checkpoint.
        ck_ours, ck_theirs = checkpoint.load(batched[k] / "checkpoint.pt"), checkpoint.load(alone / "checkpoint.pt")
        state_ours, state_theirs = ck_ours["optimizer"]["state"], ck_theirs["optimizer"]["state"]
        assert state_ours.keys() == state_theirs.keys()
        for i in state_theirs:
            assert rel(state_ours[i]["momentum_buffer"], state_theirs[i]["momentum_buffer"]) < EXACT
        assert ck_ours["schedule"] == ck_theirs["schedule"]
        # The loss, lr and test error of every iteration.
        rows_ours, rows_theirs = metrics(batched[k]), metrics(alone)
        assert [r["iter"] for r in rows_ours] == [r["iter"] for r in rows_theirs] == [1, 2, 3, 4, 5, 6]
        for a, b in zip(rows_ours, rows_theirs):
            assert a["lr"] == b["lr"] and abs(a["test_error"] - b["test_error"]) <= 100 / 64  # one image at most
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert summaries[k]["iterations"] == 6 and summaries[k]["out_dir"] == str(batched[k])
    # The runs really differ (seed, residual/plain), so comparing them to their own twins can fail.
    finals = [checkpoint.load(b / "final.pt")["model"] for b in batched]
    assert rel(finals[0]["conv1.weight"], finals[1]["conv1.weight"]) > 0.5
    assert rel(finals[0]["layer2.0.conv1.weight"], finals[2]["layer2.0.conv1.weight"]) > 1e-3
    # The warm-up is run 1's alone: lr 0.01 at first there, 0.1 in the others.
    assert metrics(batched[1])[0]["lr"] == pytest.approx(0.01) and metrics(batched[0])[0]["lr"] == pytest.approx(0.1)


def test_batched_runs_equal_separate_runs_in_float64_at_the_papers_settings(tmp_path, fake_data, tiny_cfg, float64):
    """Sec. 4.2's lr 0.1, momentum 0.9, weight decay 1e-4, 20 steps: two seeds of a ResNet-8 and a plain-8.
    Weights, BN running statistics and SGD momentum buffers of each batched run equal its run alone."""
    per_run = (["train.seed=0"], ["train.seed=1"], ["train.seed=2", "model.name=cifar_plain"])
    runs = [tiny_cfg("train.max_iters=20", "train.eval_every=20", *extra) for extra in per_run]
    assert {(c.optim.lr, c.optim.momentum, c.optim.weight_decay) for c in runs} == {(0.1, 0.9, 1e-4)}
    batched = [tmp_path / f"batched{k}" for k in range(3)]
    train_batched(runs, batched)
    for k, cfg in enumerate(runs):
        run_training(cfg, tmp_path / f"alone{k}")
        ours, theirs = (checkpoint.load(d / "checkpoint.pt") for d in (batched[k], tmp_path / f"alone{k}"))
        assert ours["iteration"] == theirs["iteration"] == 20
        bn_stats = [key for key in theirs["model"] if key.endswith(("running_mean", "running_var"))]
        assert bn_stats and all(theirs["model"][key].dtype == torch.float64 for key in bn_stats)
        assert_same_weights(ours["model"], theirs["model"], tol=EXACT)
        momentum = [(ours["optimizer"]["state"][i], s) for i, s in theirs["optimizer"]["state"].items()]
        assert len(momentum) == len(list(ours["optimizer"]["state"])) > 0
        for a, b in momentum:
            assert rel(a["momentum_buffer"], b["momentum_buffer"]) < EXACT


def test_final_weights_are_an_ordinary_checkpoint(tmp_path, fake_data, cfgs):
    runs = cfgs("train.max_iters=2", "train.eval_every=2")
    train_batched(runs, [tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    run_training(runs[2], tmp_path / "alone")
    final = checkpoint.load(tmp_path / "c" / "final.pt")
    model = create_model(final["meta"]["model"], **final["meta"]["model_options"])
    model.load_state_dict(final["model"], strict=True)
    assert final["meta"]["model"] == "cifar_plain"
    # The file holds this run's weights only (a view would drag the other runs' into it).
    size, alone = (tmp_path / "c" / "final.pt").stat().st_size, (tmp_path / "alone" / "final.pt").stat().st_size
    assert abs(size - alone) < 0.05 * alone


def test_resume_is_exact_and_a_batched_checkpoint_resumes_alone(tmp_path, fake_data, cfgs):
    common = ("train.eval_every=2", "train.checkpoint_every=2")
    straight = [tmp_path / f"straight{k}" for k in range(3)]
    train_batched(cfgs("train.max_iters=6", *common), straight)
    parts = [tmp_path / f"parts{k}" for k in range(3)]
    train_batched(cfgs("train.max_iters=4", *common), parts)
    train_batched(cfgs("train.max_iters=6", *common), parts, resume=True)
    for a, b in zip(straight, parts):
        x, y = checkpoint.load(a / "final.pt")["model"], checkpoint.load(b / "final.pt")["model"]
        assert all(torch.equal(x[key], y[key]) for key in x)
        assert [r["test_error"] for r in metrics(a)] == [r["test_error"] for r in metrics(b)]

    # One run of a batched folder continued alone by the ordinary loop.
    alone = tmp_path / "alone"
    train_batched(cfgs("train.max_iters=4", *common), [alone, tmp_path / "other1", tmp_path / "other2"])
    run_training(cfgs("train.max_iters=6", *common)[0], alone, resume=True)
    assert_same_weights(
        checkpoint.load(alone / "final.pt")["model"], checkpoint.load(straight[0] / "final.pt")["model"]
    )


def test_a_signal_stops_every_run_and_resume_finishes_them(tmp_path, fake_data, cfgs, monkeypatch):
    hold = tmp_path / "go"
    monkeypatch.setenv("FAKE_HOLD_AT", "3")  # every run's source waits at iteration 3 until `hold` exists
    monkeypatch.setenv("FAKE_HOLD_FILE", str(hold))

    def interrupt() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        hold.touch()

    common = ("train.max_iters=6", "train.eval_every=2", "train.checkpoint_every=6")
    outs = [tmp_path / f"run{k}" for k in range(3)]
    timer = threading.Timer(0.5, interrupt)
    timer.start()
    try:
        summaries = train_batched(cfgs(*common), outs)
    finally:
        timer.cancel()
    assert [s["interrupted"] for s in summaries] == ["SIGTERM"] * 3
    assert all(s["exit_code"] == 143 for s in summaries)
    iterations = {checkpoint.load(out / "checkpoint.pt")["iteration"] for out in outs}
    assert len(iterations) == 1 and iterations.pop() < 6  # all stopped at the same step, none finished
    assert not any((out / "final.pt").exists() for out in outs)

    monkeypatch.delenv("FAKE_HOLD_AT")
    train_batched(cfgs(*common), outs, resume=True)
    straight = [tmp_path / f"straight{k}" for k in range(3)]
    train_batched(cfgs(*common), straight)
    for a, b in zip(outs, straight):
        x, y = checkpoint.load(a / "final.pt")["model"], checkpoint.load(b / "final.pt")["model"]
        assert all(torch.equal(x[key], y[key]) for key in x)


def test_a_second_ctrl_c_stops_batched_runs_at_once(tmp_path, fake_data, cfgs, monkeypatch):
    """Each of the K runs sets a SIGINT handler over the previous run's; the second Ctrl-C must not meet
    the next run's flag (K + 1 Ctrl-Cs) but Python's KeyboardInterrupt, also in the last evaluation."""
    from resnetlab.train import loop

    evaluate, pressed = loop.evaluate_and_log, []

    def interrupted_twice(*args, **kwargs):  # the first run's last evaluation: Ctrl-C, Ctrl-C
        while len(pressed) < 2:
            pressed.append(os.kill(os.getpid(), signal.SIGINT))
            time.sleep(0.05)  # the handler runs before the next signal
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate_and_log", interrupted_twice)
    outs, before = [tmp_path / f"run{k}" for k in range(3)], signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train_batched(cfgs("train.max_iters=2", "train.eval_every=2"), outs)
    assert not any((out / "final.pt").exists() for out in outs)
    assert signal.getsignal(signal.SIGINT) is before  # every run's handler is gone again


@pytest.mark.parametrize(
    ("second", "match"),
    [
        (["train.batch_size=8"], "share train.batch_size"),
        (["data.pad=2"], "share data.pad"),
        (["model.depth=14"], "cannot be trained batched"),
        (["model.name=vgg16", "model.depth=null"], "cannot be trained batched"),
        (["model.name=cifar_resnet", "model.shortcut=B"], "cannot be trained batched"),
    ],
)
def test_runs_that_cannot_share_a_computation_are_refused_before_any_folder(
    tmp_path, fake_data, tiny_cfg, second, match
):
    outs = [tmp_path / "a", tmp_path / "b"]
    with pytest.raises(UserError, match=match):
        train_batched([tiny_cfg(), tiny_cfg(*second)], outs)
    assert not any(out.exists() for out in outs)


def test_other_refusals(tmp_path, fake_data, tiny_cfg):
    with pytest.raises(UserError, match="both write to"):
        train_batched([tiny_cfg(), tiny_cfg("train.seed=1")], [tmp_path / "a", tmp_path / "a"])
    with pytest.raises(UserError, match="train from scratch"):
        train_batched([tiny_cfg("train.freeze=[stem]")], [tmp_path / "b"])
    # Checkpoints at different iterations cannot continue as one computation.
    train_batched([tiny_cfg("train.max_iters=2")], [tmp_path / "c"])
    train_batched([tiny_cfg("train.max_iters=4")], [tmp_path / "d"])
    with pytest.raises(UserError, match="resume them one by one"):
        train_batched([tiny_cfg("train.max_iters=6")] * 2, [tmp_path / "c", tmp_path / "d"], resume=True)


def test_batched_step_equals_make_train_step_with_a_different_lr_per_run():
    """The step alone, against `make_train_step` on each network, with each run's own lr and momentum."""
    torch.manual_seed(0)
    models = [create_model("cifar_resnet", depth=8), create_model("cifar_plain", depth=8)]
    refs = [create_model("cifar_resnet", depth=8), create_model("cifar_plain", depth=8)]
    for ref, model in zip(refs, models):
        ref.load_state_dict(model.state_dict())
    cpu = torch.device("cpu")
    wide = stack_models(models)
    opts = [make_sgd(m, lr=lr, momentum=0.9, weight_decay=1e-4) for m, lr in zip(models, (0.1, 0.02))]
    step = make_train_step(wide, opts, device=cpu, channels_last=False)
    ref_steps = [
        make_train_step(r, make_sgd(r, lr=lr, momentum=0.9, weight_decay=1e-4), device=cpu, channels_last=False)
        for r, lr in zip(refs, (0.1, 0.02))
    ]
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        xs = [torch.randn(8, 3, 16, 16, generator=g) for _ in models]
        ys = [torch.randint(0, 10, (8,), generator=g) for _ in models]
        losses, errors = step(xs, ys)
        for k, ref_step in enumerate(ref_steps):
            loss, wrong = ref_step(xs[k], ys[k])
            assert float(losses[k]) == pytest.approx(float(loss), rel=1e-5) and int(errors[k]) == int(wrong)
    for model, ref in zip(models, refs):
        assert_same_weights(model.state_dict(), ref.state_dict())


@pytest.mark.slow  # torch.compile on the CPU: about 2 minutes of compilation on the shared machine
def test_compiled_batched_step_equals_eager():
    """The compiled wide network writes its BN statistics back into the storage the runs' views share."""
    torch.manual_seed(0)
    models = [create_model("cifar_resnet", depth=8), create_model("cifar_plain", depth=8)]
    twins = [create_model("cifar_resnet", depth=8), create_model("cifar_plain", depth=8)]
    for twin, model in zip(twins, models):
        twin.load_state_dict(model.state_dict())
    cpu = torch.device("cpu")
    steps = []
    for nets, compiled in ((models, True), (twins, False)):
        wide = stack_models(nets, memory_format=torch.channels_last)
        opts = [make_sgd(m, lr=0.1, momentum=0.9, weight_decay=1e-4) for m in nets]
        steps.append(make_train_step(compile_model(wide) if compiled else wide, opts, device=cpu))
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        xs = [torch.randn(8, 3, 16, 16, generator=g) for _ in models]
        ys = [torch.randint(0, 10, (8,), generator=g) for _ in models]
        (a, _), (b, _) = steps[0](xs, ys), steps[1](xs, ys)
        assert rel(a, b) < 1e-5
    for model, twin in zip(models, twins):
        assert_same_weights(model.state_dict(), twin.state_dict())  # BN running statistics included


# ---- CUDA (skipped without a GPU; `pytest -m cuda` on one) -------------------------------------------


@pytest.fixture
def exact_fp32():
    """fp32 means fp32: no TF32 in convolutions or matrix products while the test runs."""
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batched_step_equals_separate_steps(exact_fp32, channels_last):
    device = torch.device("cuda")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    names = ["cifar_resnet20", "cifar_plain20", "cifar_resnet20"]
    models = [create_model(n).to(device, memory_format=fmt) for n in names]
    refs = [create_model(n).to(device, memory_format=fmt) for n in names]
    for ref, model in zip(refs, models):
        ref.load_state_dict(model.state_dict())
    wide = stack_models(models, memory_format=fmt)
    opts = [make_sgd(m, lr=0.1, momentum=0.9, weight_decay=1e-4) for m in models]
    step = make_train_step(wide, opts, device=device, channels_last=channels_last)
    ref_steps = [
        make_train_step(
            r, make_sgd(r, lr=0.1, momentum=0.9, weight_decay=1e-4), device=device, channels_last=channels_last
        )
        for r in refs
    ]
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        xs = [torch.randn(32, 3, 32, 32, generator=g).to(device) for _ in models]
        ys = [torch.randint(0, 10, (32,), generator=g).to(device) for _ in models]
        losses, _ = step(xs, ys)
        for k, ref_step in enumerate(ref_steps):
            loss, _ = ref_step(xs[k], ys[k])
            assert float(losses[k]) == pytest.approx(float(loss), rel=1e-4)
    for model, ref in zip(models, refs):
        assert_same_weights(model.state_dict(), ref.state_dict(), tol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batched_runs_compiled_bf16_write_their_folders(tmp_path, fake_data, cfgs):
    """The fast path end to end: bf16, channels_last, torch.compile with CUDA graphs."""
    runs = cfgs(
        "train.device=cuda",
        "train.max_iters=30",
        "train.eval_every=15",
        "train.precision=bf16",
        "train.compile=true",
        "train.compile_mode=reduce-overhead",
    )
    outs = [tmp_path / f"run{k}" for k in range(3)]
    summaries = train_batched(runs, outs)
    for out, summary in zip(outs, summaries):
        rows = metrics(out)
        assert [r["iter"] for r in rows] == [15, 30]
        assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
        assert rows[-1]["train_loss"] < rows[0]["train_loss"] * 1.2
        final = checkpoint.load(out / "final.pt")
        model = create_model(final["meta"]["model"], **final["meta"]["model_options"])
        model.load_state_dict(final["model"], strict=True)
        assert summary["iterations"] == 30


def test_batched_uses_only_public_parts_of_the_loop():
    """The two loops share the run's steps through loop.py's public names (`__all__`), not its privates."""
    import ast
    import inspect

    from resnetlab.train import batched, loop

    tree = ast.parse(inspect.getsource(batched))
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "loop"}
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert used and used <= set(loop.__all__), used - set(loop.__all__)
    assert not [name for name in imported if name.startswith("_")]



def test_a_signal_during_the_last_step_lets_the_run_finish(tmp_path, fake_data, cfgs, monkeypatch):
    """The last step's checkpoint and evaluation are done by then: the run writes final.pt and exits 0,
    rather than a checkpoint that a resume would only turn into final.pt."""
    from resnetlab.train import loop

    set_lr = loop.set_lr

    sent: list[int] = []

    def signal_in_the_last_step(s, it, run):  # `it` steps done: the last one is starting
        if it == 3 and not sent:  # one signal (K runs set the lr K times a step)
            sent.append(it)
            os.kill(os.getpid(), signal.SIGTERM)
        return set_lr(s, it, run)

    monkeypatch.setattr(loop, "set_lr", signal_in_the_last_step)
    for k, out_dirs in ((1, [tmp_path / "alone"]), (2, [tmp_path / "b0", tmp_path / "b1"])):
        sent.clear()
        cfg_list = cfgs("train.max_iters=4", "train.eval_every=2")[:k]
        summaries = [run_training(cfg_list[0], out_dirs[0])] if k == 1 else train_batched(cfg_list, out_dirs)
        assert [s["exit_code"] for s in summaries] == [0] * k
        assert all(checkpoint.load(out / "final.pt")["iteration"] == 4 for out in out_dirs)
