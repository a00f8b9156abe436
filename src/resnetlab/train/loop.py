"""`run_training(cfg, out_dir)`: the paper's training loop, one plain function read top to bottom.

Iteration-based like the paper (sec. 4.2 counts iterations, not epochs): SGD with momentum, the lr
rules of `schedule.py`, an evaluation every `train.eval_every` iterations and at the end, a checkpoint
every `train.checkpoint_every` iterations and on SIGTERM/SIGINT. Resuming is exact: the data stream is
a function of the iteration, and everything else that changes (weights, optimizer, schedule, meters,
RNGs) is in the checkpoint. With `torchrun`, each process trains on its share of the global batch
under DistributedDataParallel; rank 0 alone evaluates and writes files.

The same loop trains K runs that share a shape as one computation (`train_runs`; the door with its
checks is `batched.train_batched`): each run has its own folder, data, model, optimizer, schedule
and meters, the K networks are stacked into one (`models.stacked`) and one step trains them all.
K = 1 is the ordinary run: one network, no stacking.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.config import Config, model_options
from resnetlab.data.summary import summary_lines
from resnetlab.errors import UserError, one_line
from resnetlab.models import create_model
from resnetlab.models.stacked import stack_models
from resnetlab.train import finetune
from resnetlab.train.lifecycle import Due, NonFiniteLoss, Run, open_run, seed_everything
from resnetlab.train.schedule import LRSchedule
from resnetlab.train.step import (
    TrainStep,
    compile_model,
    configure_device,
    evaluate_error,
    make_grad_scaler,
    make_sgd,
    make_train_step,
    set_group_lrs,
)
from resnetlab.utils import distributed as dist
from resnetlab.utils.meters import Average, LossWindow, Throughput
from resnetlab.utils.text import printable

NAMED_SKIPPED = 10  # unreadable files named per metrics.jsonl row (all are counted), as `evaluate --json`

__all__ = ["NonFiniteLoss", "build_data", "run_training", "train_runs"]


def build_data(cfg: Config, device: torch.device, *, rank: int, world_size: int, stats=None):
    """`resnetlab.data.build_data` (imported here so tests can substitute a small source)."""
    from resnetlab.data import build_data as build

    return build(cfg, device, rank=rank, world_size=world_size, stats=stats)


def run_training(cfg: Config, out_dir: str | Path, *, resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data` with the recipe in `cfg.optim` / `cfg.train`; write the run into
    `out_dir` (its life: `resnetlab.train.lifecycle`). Returns a summary: iterations, test_error,
    best_test_error, train_error, train_loss, time (s), interrupted (signal name or None), exit_code,
    out_dir.

    `resume=True` continues from `out_dir/checkpoint.pt` (or starts if the run never checkpointed).
    A new run that starts from another run's checkpoint: `lifecycle.start_branch`, then `resume=True`.
    `quiet=True`: no progress bar (none is drawn off a terminal either); a log line every
    `train.log_every` iterations instead, and the evaluation lines as always.
    Raises `UserError` for bad configs, a non-finite loss, or an `out_dir` holding another run.
    """
    return train_runs([cfg], [out_dir], resume=resume, quiet=quiet)[0]


def train_runs(
    cfgs: Sequence[Config], out_dirs: Sequence[str | Path], *, resume: bool = False, quiet: bool = False
) -> list[dict[str, Any]]:
    """`run_training`'s loop over K runs at once (K = 1: `run_training`), run k written into `out_dirs[k]`;
    their summaries. K > 1: call `batched.train_batched`, which checks first that the runs can share it."""
    with contextlib.ExitStack() as stack:
        runs = [stack.enter_context(open_run(c, o, resume=resume, quiet=quiet)) for c, o in zip(cfgs, out_dirs)]
        return _train(list(cfgs), runs)


def _train(cfgs: list[Config], runs: list[Run]) -> list[dict[str, Any]]:
    t, world, k = cfgs[0].train, runs[0].info.world_size, len(runs)
    if t.batch_size % world:
        raise UserError(f"train.batch_size {t.batch_size} is not divisible by the {world} processes")
    if k > 1 and runs[0].info.enabled:
        raise UserError("batched runs train in one process: start them without torchrun")
    if len({run.start_iter for run in runs}) > 1:
        at = ", ".join(f"{run.out} at {run.start_iter}" for run in runs)
        raise UserError(f"batched runs resume together, but their checkpoints differ ({at}); resume them one by one")
    states, step = _build(cfgs, runs)  # data, models, optimizers, schedules, the step; checkpoints loaded
    windows = [LossWindow(run.device, world) for run in runs]
    throughput = Throughput()
    streams = [s.data.train.batches(run.start_iter) for s, run in zip(states, runs)]
    it = runs[0].start_iter
    with contextlib.ExitStack() as bars:
        for run in runs:
            bars.enter_context(run.steps(desc=run.out.name if k > 1 else None))
            if k > 1:
                run.bar = _Labelled(run.bar, run.out.name)
        while it < t.max_iters:
            batches = [next(stream) for stream in streams]
            lrs = [set_lr(s, it, run) for s, run in zip(states, runs)]
            losses, errors = step([x for x, _ in batches], [y for _, y in batches])  # (K,) each
            for window, loss, wrong, (_, y) in zip(windows, losses, errors, batches):
                window.add(loss, wrong, y.numel())
            throughput.add(sum(y.numel() for _, y in batches) * world)
            it += 1
            due = _after_step(runs, it)
            if due.log or due.eval or due.checkpoint:  # read the losses off the device only here
                for s, run, window in zip(states, runs, windows):
                    first = it - window.count + 1
                    values, wrong, images = window.drain()
                    _check_finite(run, values, first, named=k > 1)
                    for meter in (s.recent, s.since_eval):
                        meter.add(sum(values), wrong, images, len(values))
            if due.log:
                rate = throughput.rate() / k  # each run's own images/s, as a run alone reports it
                for s, run, lr in zip(states, runs, lrs):
                    log_training(s, run, it, lr, rate)
            if due.eval:
                for s, run, lr in zip(states, runs, lrs):
                    evaluate_and_log(s, run, it, lr)
                throughput.rate()  # leave evaluation out of images/s
            if due.checkpoint:
                for s, run in zip(states, runs):
                    run.save_checkpoint(s.state(run), it)
            if due.stop:
                break
    summaries = [run_summary(s, run, it) for s, run in zip(states, runs)]
    for s, run in zip(states, runs):
        run.end(it, {**run.record(s.model, s.meta), **eval_fields(s.last_eval)})
    for summary, cfg, run in zip(summaries, cfgs, runs):
        if run.is_main and not run.stopped:
            print_summary(summary, cfg)
    return summaries


def _after_step(runs: list[Run], it: int) -> Due:
    """`Run.after_step` of every run: the cadence is shared (train.* agree); a signal is seen by one
    run's handler, and every run stops with it."""
    dues = [run.after_step(it) for run in runs]
    stopped = next((run.stopped for run in runs if run.stopped), None)
    for run in runs:
        run.stopped = stopped
    return dataclasses.replace(dues[0], checkpoint=dues[0].checkpoint or stopped is not None, stop=stopped is not None)


def _check_finite(run: Run, values: list[float], first: int, *, named: bool) -> None:
    """`Run.check_finite`; with K runs the message names the run (all stop with it)."""
    try:
        run.check_finite(values, first)
    except NonFiniteLoss as e:
        if not named:
            raise
        raise NonFiniteLoss(f"{run.out}: {e}; the other batched runs stopped with it, their checkpoints kept") from None


# ---- the steps of a run ----------------------------------------------------------------------------


@dataclass
class Training:
    """What one classification run trains with, and what it has measured (all in its checkpoint)."""

    cfg: Config
    data: Any
    model: nn.Module  # the bare network (weights, evaluation); the step runs its DDP / compiled / stacked form
    meta: dict[str, Any]
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: Any
    recent: Average = field(default_factory=Average)  # training stats since the last log
    since_eval: Average = field(default_factory=Average)  # ... since the last evaluation
    last_eval: dict[str, Any] | None = None
    best: dict[str, Any] | None = None
    named_skipped: set[str] = field(default_factory=set)  # unreadable files already named (not checkpointed)

    def state(self, run: Run) -> dict[str, Any]:
        return run.state(
            self.model,
            self.meta,
            self.optimizer,
            schedule=self.schedule.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            meters={"recent": self.recent.state_dict(), "since_eval": self.since_eval.state_dict()},
            data=self.data.train.state_dict() if hasattr(self.data.train, "state_dict") else None,
            last_eval=self.last_eval,
            best=self.best,
        )

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """The loop's own entries of a checkpoint (`Run.restore` loads weights, optimizer, RNGs)."""
        self.schedule.load_state_dict(ckpt["schedule"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.recent.load_state_dict(ckpt["meters"]["recent"])
        self.since_eval.load_state_dict(ckpt["meters"]["since_eval"])
        if ckpt.get("data") and hasattr(self.data.train, "load_state_dict"):
            self.data.train.load_state_dict(ckpt["data"])
        self.last_eval, self.best = ckpt["last_eval"], ckpt["best"]


def _build(cfgs: list[Config], runs: list[Run]) -> tuple[list[Training], TrainStep]:
    """Each run's data, model, optimizer and schedule (in its checkpoint's state if resumed), and the
    train step over them: one network, or K stacked into one (`models.stacked`) that the step runs."""
    t, device = cfgs[0].train, runs[0].device
    configure_device(device, tf32=t.tf32)  # CUDA: cuDNN benchmark mode, TF32 as train.tf32 says
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    parts = []
    for cfg, run in zip(cfgs, runs):
        seed_everything(cfg.train.seed)  # per run: the seed, its data, then its model's initial weights
        data, model, meta = _build_model(cfg, run)
        parts.append((data, model.to(device, memory_format=memory_format), meta))
    train_model = parts[0][1]
    if len(runs) > 1:  # before the optimizers: theirs are the models' views of the shared weights
        try:
            train_model = stack_models([model for _, model, _ in parts], memory_format=memory_format)
        except ValueError as e:
            names = ", ".join(cfg.model.name for cfg in cfgs)
            raise UserError(f"these runs cannot be trained batched ({names}): {one_line(e)}") from None
    states = []
    for cfg, run, (data, model, meta) in zip(cfgs, runs, parts):
        o = cfg.optim
        optimizer = make_sgd(
            model, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, backbone_lr_mult=o.backbone_lr_mult
        )
        schedule = LRSchedule.from_config(o, batch_size=t.batch_size)
        s = Training(cfg, data, model, meta, optimizer, schedule, make_grad_scaler(t.precision, device))
        if run.checkpoint is not None:  # copies into the views, i.e. into the wide network, when stacked
            run.restore(model, optimizer, s.load_state_dict)  # then, and only then, the folder is prepared
        states.append(s)
    train_model = runs[0].parallel(train_model)  # DistributedDataParallel under torchrun (one run only)
    if t.compile:
        train_model = compile_model(train_model, t.compile_mode)
    train_model.train()
    optimizers, scalers = [s.optimizer for s in states], [s.scaler for s in states]
    kw = {"device": device, "precision": t.precision, "channels_last": t.channels_last}
    return states, make_train_step(train_model, optimizers, scaler=scalers, **kw)


def _build_model(cfg: Config, run: Run) -> tuple[Any, nn.Module, dict[str, Any]]:
    """The run's data and its network, fine-tuning's weights and frozen layers applied; what was found
    printed (and written as data.json)."""
    # train.init_from: weights to start from and their normalisation; a resumed run has both in its checkpoint.
    source = finetune.read_source(cfg) if run.checkpoint is None else None
    stats = finetune.source_stats(source) if source else finetune.resumed_stats(cfg, run.checkpoint)
    info = run.info
    data = build_data(cfg, run.device, rank=info.rank, world_size=info.world_size, stats=stats)
    model, meta = build_classifier(cfg, data, world_size=info.world_size)
    if info.is_main and getattr(data, "summary", None):  # what was found, which recipe runs
        print("\n".join(summary_lines(data.summary)))
        (run.out / "data.json").write_text(json.dumps(data.summary, indent=1) + "\n")
    report = _loader_line(cfg, data) + _late_milestones(cfg)
    report += finetune.init_model(model, source, classes=data.classes, cfg=cfg) if source else []
    report += finetune.freeze(model, cfg.train.freeze)  # not in the checkpoint: applied to resumed runs too
    if info.is_main and report:
        print("\n".join(report))
    return data, model, meta


def _late_milestones(cfg: Config) -> list[str]:
    """A warning when lr drops of optim.milestones come at or after train.max_iters: a run shortened
    with --set train.max_iters=N that kept the paper's 32k / 48k would train at lr 0.1 to its end."""
    o, total = cfg.optim, cfg.train.max_iters
    late = [m for m in o.milestones if m >= total] if o.schedule == "multistep" else []
    if not late:
        return []
    shape = f"[{total // 2},{total * 3 // 4}]"
    return [
        f"warning: optim.milestones {', '.join(map(str, late))} at or past train.max_iters={total}: "
        f"{'that lr drop never happens' if len(late) == 1 else 'those lr drops never happen'}; "
        f"the paper's shape (1/2 and 3/4 of the run) is --set 'optim.milestones={shape}'"
    ]


def _loader_line(cfg: Config, data) -> list[str]:
    """The DataLoader processes of a source that has them (ImageFolder / ImageNet), `data.workers` resolved."""
    workers = getattr(data.train, "workers", None)
    if workers is None:
        return []
    how = "one per core this process may use, at most 8" if cfg.data.workers is None else "as set"
    return [f"data.workers: {workers} loader processes ({how})"]


def set_lr(s: Training, it: int, run: Run) -> float:
    """The schedule's lr for iteration `it` into every parameter group; returns it."""
    warning = s.schedule.end_warmup_if_due(it)  # the warm-up never outlives the first milestone
    if warning and run.is_main:
        run.bar.write(warning)
    lr = s.schedule.lr(it)
    set_group_lrs(s.optimizer, lr, momentum_form=s.cfg.optim.momentum_form)
    return lr


def log_training(s: Training, run: Run, it: int, lr: float, rate: float) -> None:
    """Training loss / error over the iterations since the last log: progress bar (or, where none is
    drawn, a line: a log file still shows the run moving) and TensorBoard. The extra log at the last
    iteration, off the `train.log_every` cadence, neither feeds the warm-up nor restarts the window: a
    run resumed with a larger train.max_iters then trains as one that never stopped."""
    on_cadence = it % s.cfg.train.log_every == 0
    if on_cadence:  # sec. 4.2 warm-up: "until the training error is below 80%", over the recent iterations
        s.schedule.observe_train_error(it, s.recent.error)
    run.bar.set_postfix(loss=f"{s.recent.loss:.3f}", err=f"{s.recent.error:.1f}%", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
    if run.is_main and run.bar.disable:
        seconds = s.cfg.train.batch_size / max(rate, 1e-9)  # rate: this run's images/s since the last log
        run.bar.write(
            f"iter {it}: loss {s.recent.loss:.4f}, train error {s.recent.error:.2f}%, lr {lr:.3g}, {seconds:.3f} s/it"
        )
    run.log(it, {"train/loss": s.recent.loss, "train/error": s.recent.error, "lr": lr, "images_per_s": rate})
    if on_cadence:
        s.recent.reset()


def evaluate_and_log(s: Training, run: Run, it: int, lr: float) -> None:
    """The evaluated split's error: a metrics.jsonl row, TensorBoard, a line above the progress bar.
    The evaluation at the last iteration, off the `train.eval_every` cadence, does not count for the
    plateau rule nor restart the window of the training error (see `log_training`)."""
    split = eval_split(s.cfg)
    unreadable_before = getattr(s.data.test, "skipped", 0)
    test_error = _evaluate(s.model, s.data.test, run.device, s.cfg, run.info)
    eval_skipped = getattr(s.data.test, "skipped", 0) - unreadable_before  # data.skip_corrupt, this evaluation
    on_cadence = it % s.cfg.train.eval_every == 0
    if on_cadence:
        s.schedule.observe_test_error(test_error)
    row = {
        "iter": it,
        "lr": lr,
        "train_loss": s.since_eval.loss,
        "train_error": s.since_eval.error,
        "test_error": test_error,  # the key for any split; `eval_split` names it
        "eval_split": split,
        "time": run.elapsed(),
    }
    # ImageFolder with data.skip_corrupt: how many unreadable images were skipped so far, and the files
    # first seen since the last evaluation (the first NAMED_SKIPPED in metrics.jsonl, 3 in the line).
    skipped = getattr(s.data.train, "skipped", 0)
    new_files = sorted(set(getattr(s.data.train, "skipped_files", ())) - s.named_skipped)
    s.named_skipped.update(new_files)
    if skipped:
        row["skipped_images"] = skipped
    if new_files:
        row["skipped_files_new"] = len(new_files)
        row["skipped_files"] = new_files[:NAMED_SKIPPED]
    if eval_skipped:
        row["eval_skipped_images"] = eval_skipped
    if s.best is None or test_error < s.best["test_error"]:
        s.best = {"iter": it, "test_error": test_error}
    s.last_eval = row
    if on_cadence:
        s.since_eval.reset()
    run.log(it, {f"{split}/error": test_error, "train/error_since_eval": row["train_error"]}, row)
    if run.is_main:
        run.bar.write(
            f"iter {it}: {split} error {test_error:.2f}%, train error {row['train_error']:.2f}%, "
            f"loss {row['train_loss']:.4f}, lr {lr:.3g}"
            + (f", {skipped} unreadable images skipped" if skipped else "")
            + (f", {eval_skipped} unreadable {split} images left out of its error" if eval_skipped else "")
            + (f" (first seen: {_some(new_files)})" if new_files else "")
        )


def _some(paths: list[str], shown: int = 3) -> str:
    """The first `shown` of `paths`, escaped for the terminal (a file name may hold a terminal escape)."""
    names = ", ".join(printable(p) for p in paths[:shown])
    return names + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def run_summary(s: Training, run: Run, it: int) -> dict[str, Any]:
    """What `run_training` returns for a run that stopped at iteration `it` (see its docstring)."""
    last, best = s.last_eval or {}, s.best or {}
    return {
        "iterations": it,
        "test_error": last.get("test_error"),
        "best_test_error": best.get("test_error"),
        "best_iter": best.get("iter"),
        "train_error": last.get("train_error"),
        "train_loss": last.get("train_loss"),
        "time": run.elapsed(),
        "interrupted": run.stopped,
        "exit_code": run.exit_code,
        "out_dir": str(run.out),
        "eval_split": eval_split(s.cfg),
    }


# ---- helpers -------------------------------------------------------------------------------------


def build_classifier(cfg: Config, data, world_size: int = 1) -> tuple[nn.Module, dict[str, Any]]:
    """The model of `cfg.model` for `data`, and the checkpoint meta that rebuilds it (checked to run
    on `data`'s images in batches of train.batch_size over `world_size` processes)."""
    options = model_options(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels)
    try:
        model = create_model(cfg.model.name, **options)
    except (ValueError, TypeError) as e:
        raise UserError(f"model: {one_line(e)}") from None
    batch = cfg.train.batch_size // world_size
    check_input_fits(cfg.model.name, options, data.image_size, cfg.data.name, batch=batch)
    return model, {**data.meta, "model": cfg.model.name, "model_options": options}


def check_input_fits(name: str, options: dict[str, Any], size: int, dataset: str, batch: int = 2) -> None:
    """Forward passes on the meta device (shapes only, no compute): a network that shrinks the image
    to nothing (VGG-16 on 28x28 Fashion-MNIST) is a one-line error before anything is written, and so
    is a batch of one image per process where a feature map is 1x1 (BatchNorm in training mode needs
    two values per channel). `batch`: the images of one process's training step."""
    channels = options.get("in_channels", 3)
    with torch.device("meta"):
        probe = create_model(name, **options).eval()
        try:
            probe(torch.zeros(2, channels, size, size))
        except RuntimeError as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(
                f"model.name={name} cannot run on the {size}x{size} images of data.name={dataset} ({reason})"
            ) from None
        try:
            probe.train()(torch.zeros(batch, channels, size, size))
        except ValueError:  # "Expected more than 1 value per channel when training"
            raise UserError(
                f"train.batch_size gives {batch} image per process, and model.name={name} makes a 1x1 "
                f"feature map of {size}x{size} images: BatchNorm needs 2 values per channel in training; "
                "use a larger batch"
            ) from None


def _evaluate(model: nn.Module, test, device: torch.device, cfg: Config, info: dist.DistInfo) -> float:
    """Error (%) of the whole evaluated split (test or val), computed on rank 0 and shared with the others."""
    error = None
    if info.is_main:
        wrong, images = evaluate_error(
            model, test.batches(), device=device, precision=cfg.train.precision, channels_last=cfg.train.channels_last
        )
        error = 100.0 * wrong / images if images else None
    error = dist.broadcast_object(error)
    if error is None:  # every image unreadable and skipped: an error of 0 % would steer the schedule
        skipped = getattr(test, "skipped", 0)
        raise UserError(
            f"no readable image in the evaluated split ({eval_split(cfg)}): {skipped} were unreadable and "
            "skipped (data.skip_corrupt)"
        )
    return float(error)


def eval_split(cfg: Config) -> str:
    """The evaluated split's name: "val" for held-out `data.val_split` training images, an ImageFolder's
    `data.eval_split` folder (val/ by default, where the paper reports ImageNet's), else "test"."""
    if cfg.data.val_split:
        return "val"
    return cfg.data.eval_split if cfg.data.name in ("imagenet", "imagefolder") else "test"


def eval_fields(last_eval: dict[str, Any] | None) -> dict[str, Any]:
    """The last evaluation's errors and split, for the run's record (`Run.end`)."""
    if not last_eval:
        return {}
    return {k: last_eval[k] for k in ("test_error", "train_error", "eval_split") if k in last_eval}


def print_summary(summary: dict[str, Any], cfg: Config) -> None:
    """The lines a finished run prints: time and images/s, the errors, where its files are."""
    minutes, seconds = divmod(summary["time"], 60)
    images = summary["iterations"] * cfg.train.batch_size
    lines = [
        f"done: {cfg.model.name} on {cfg.data.name}, {summary['iterations']} iterations in "
        f"{int(minutes)}m{seconds:04.1f}s ({images / max(summary['time'], 1e-9):.0f} images/s incl. evaluation)",
    ]
    if summary["test_error"] is not None:
        lines.append(
            f"{summary['eval_split']} error {summary['test_error']:.2f}% (best {summary['best_test_error']:.2f}% "
            f"at iteration {summary['best_iter']}), training error {summary['train_error']:.2f}%"
        )
    lines.append(f"run: {summary['out_dir']} (final.pt, metrics.jsonl, tb/)")
    print("\n".join(lines))


class _Labelled:
    """A run's progress bar whose `write` lines name the run (K runs write to one terminal)."""

    def __init__(self, bar: Any, label: str) -> None:
        self._bar, self._label = bar, label

    def write(self, line: str) -> None:
        self._bar.write(f"{self._label}: {line}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)
