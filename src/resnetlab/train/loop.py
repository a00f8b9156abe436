"""`run_training(cfg, out_dir)`: the paper's training loop, one plain function read top to bottom.

Iteration-based like the paper (sec. 4.2 counts iterations, not epochs): SGD with momentum, the lr
rules of `schedule.py`, an evaluation every `train.eval_every` iterations and at the end, a checkpoint
every `train.checkpoint_every` iterations and on SIGTERM/SIGINT. Resuming is exact: the data stream is
a function of the iteration, and everything else that changes (weights, optimizer, schedule, meters,
RNGs) is in the checkpoint. With `torchrun`, each process trains on its share of the global batch
under DistributedDataParallel; rank 0 alone evaluates and writes files.

The per-run steps are public because `train/batched.py` (K runs as one computation) calls them for
each of its runs instead of copying them: `Training` (what a run trains with and has measured, and its
checkpoint state), `LossWindow` (losses read off the device only when due), `set_lr`, `log_training`,
`evaluate_and_log`, `run_summary`, `eval_fields` (the test/train errors a run records at its end) and
`print_summary`. Only the step differs between the two loops.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnetlab.config import Config, model_options
from resnetlab.data.summary import summary_lines
from resnetlab.errors import UserError
from resnetlab.models import create_model
from resnetlab.train import finetune
from resnetlab.train.lifecycle import NonFiniteLoss, Run, open_run, seed_everything
from resnetlab.train.schedule import LRSchedule
from resnetlab.train.step import (
    compile_model,
    configure_device,
    evaluate_error,
    make_grad_scaler,
    make_sgd,
    make_train_step,
)
from resnetlab.utils import distributed as dist
from resnetlab.utils.meters import Average, Throughput
from resnetlab.utils.text import printable

NAMED_SKIPPED = 10  # unreadable files named per metrics.jsonl row (all are counted), as `evaluate --json`

__all__ = [
    "LossWindow",
    "NonFiniteLoss",
    "Training",
    "build_classifier",
    "build_data",
    "eval_fields",
    "evaluate_and_log",
    "log_training",
    "print_summary",
    "run_summary",
    "run_training",
    "set_lr",
]


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
    `quiet=True`: no progress bar (none is drawn off a terminal either); evaluation lines as always.
    Raises `UserError` for bad configs, a non-finite loss, or an `out_dir` holding another run.
    """
    with open_run(cfg, out_dir, resume=resume, quiet=quiet) as run:
        return _train(cfg, run)


def _train(cfg: Config, run: Run) -> dict[str, Any]:
    t, world = cfg.train, run.info.world_size
    if t.batch_size % world:
        raise UserError(f"train.batch_size {t.batch_size} is not divisible by the {world} processes")
    s = _build(cfg, run)  # data, model, optimizer, schedule, train step; the checkpoint's state loaded
    window, throughput = LossWindow(run.device, world), Throughput()
    batches = s.data.train.batches(run.start_iter)
    it = run.start_iter
    with run.steps():
        while it < t.max_iters:
            x, y = next(batches)
            lr = set_lr(s, it, run)
            loss, errors = s.step(x, y)
            window.add(loss, errors, y.numel())
            throughput.add(y.numel() * world)
            it += 1
            due = run.after_step(it)
            if due.log or due.eval or due.checkpoint:  # read the losses off the device only here
                first = it - window.count + 1
                losses, n_err, n_img = window.drain()
                run.check_finite(losses, first)
                for meter in (s.recent, s.since_eval):
                    meter.add(sum(losses), n_err, n_img, len(losses))
            if due.log:
                log_training(s, run, it, lr, throughput.rate())
            if due.eval:
                evaluate_and_log(s, run, it, lr)
                throughput.rate()  # leave evaluation out of images/s
            if due.checkpoint:
                run.save_checkpoint(s.state(run), it)
            if due.stop:
                break
    summary = run_summary(s, run, it)
    run.end(it, {**run.record(s.model, s.meta), **eval_fields(s.last_eval)})
    if run.is_main and not run.stopped:
        print_summary(summary, cfg)
    return summary


# ---- the steps of a run (shared with train/batched.py) -------------------------------------------


@dataclass
class Training:
    """What one classification run trains with, and what it has measured (all in its checkpoint)."""

    cfg: Config
    data: Any
    model: nn.Module  # the bare network (weights, evaluation); `step` runs its DDP / compiled wrapper
    meta: dict[str, Any]
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: Any
    step: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
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


def _build(cfg: Config, run: Run) -> Training:
    """Data, model, optimizer, schedule and train step of `cfg`, in `run.checkpoint`'s state if resumed."""
    t, info, device = cfg.train, run.info, run.device
    seed_everything(t.seed)
    # train.init_from: weights to start from and their normalisation; a resumed run has both in its checkpoint.
    source = finetune.read_source(cfg) if run.checkpoint is None else None
    stats = finetune.source_stats(source) if source else finetune.resumed_stats(cfg, run.checkpoint)
    data = build_data(cfg, device, rank=info.rank, world_size=info.world_size, stats=stats)
    model, meta = build_classifier(cfg, data)
    if info.is_main and getattr(data, "summary", None):  # what was found, which recipe runs (issue 21)
        print("\n".join(summary_lines(data.summary)))
        (run.out / "data.json").write_text(json.dumps(data.summary, indent=1) + "\n")
    report = _loader_line(cfg, data)
    report += finetune.init_model(model, source, classes=data.classes, cfg=cfg) if source else []
    report += finetune.freeze(model, t.freeze)  # not in the checkpoint: applied to resumed runs too
    if info.is_main and report:
        print("\n".join(report))
    configure_device(device, tf32=t.tf32)  # CUDA: cuDNN benchmark mode, TF32 as train.tf32 says
    model.to(device, memory_format=torch.channels_last if t.channels_last else torch.contiguous_format)
    o = cfg.optim
    optimizer = make_sgd(
        model, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, backbone_lr_mult=o.backbone_lr_mult
    )
    schedule = LRSchedule.from_config(o, batch_size=t.batch_size)
    s = Training(cfg, data, model, meta, optimizer, schedule, make_grad_scaler(t.precision, device))
    if run.checkpoint is not None:
        run.restore(model, optimizer, s.load_state_dict)  # then, and only then, the folder is prepared

    train_model = run.parallel(model)
    if t.compile:
        train_model = compile_model(train_model, t.compile_mode)
    train_model.train()
    s.step = make_train_step(
        train_model, optimizer, device=device, precision=t.precision, channels_last=t.channels_last, scaler=s.scaler
    )
    return s


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
    for group in s.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)  # fine-tuning: the backbone's may be smaller
    return lr


def log_training(s: Training, run: Run, it: int, lr: float, rate: float) -> None:
    """Training loss / error over the iterations since the last log: progress bar and TensorBoard."""
    # Sec. 4.2 warm-up: "until the training error is below 80%", over the recent iterations.
    s.schedule.observe_train_error(it, s.recent.error)
    run.bar.set_postfix(loss=f"{s.recent.loss:.3f}", err=f"{s.recent.error:.1f}%", lr=f"{lr:.3g}", img_s=f"{rate:.0f}")
    run.log(it, {"train/loss": s.recent.loss, "train/error": s.recent.error, "lr": lr, "images_per_s": rate})
    s.recent.reset()


def evaluate_and_log(s: Training, run: Run, it: int, lr: float) -> None:
    """The evaluated split's error: a metrics.jsonl row, TensorBoard, a line above the progress bar."""
    split = eval_split(s.cfg)
    test_error = _evaluate(s.model, s.data.test, run.device, s.cfg, run.info)
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
    if s.best is None or test_error < s.best["test_error"]:
        s.best = {"iter": it, "test_error": test_error}
    s.last_eval = row
    s.since_eval.reset()
    run.log(it, {f"{split}/error": test_error, "train/error_since_eval": row["train_error"]}, row)
    if run.is_main:
        run.bar.write(
            f"iter {it}: {split} error {test_error:.2f}%, train error {row['train_error']:.2f}%, "
            f"loss {row['train_loss']:.4f}, lr {lr:.3g}"
            + (f", {skipped} unreadable images skipped" if skipped else "")
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


def build_classifier(cfg: Config, data) -> tuple[nn.Module, dict[str, Any]]:
    """The model of `cfg.model` for `data`, and the checkpoint meta that rebuilds it."""
    options = model_options(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels)
    try:
        model = create_model(cfg.model.name, **options)
    except (ValueError, TypeError) as e:
        raise UserError(f"model: {e}") from None
    check_input_fits(cfg.model.name, options, data.image_size, cfg.data.name)
    return model, {**data.meta, "model": cfg.model.name, "model_options": options}


def check_input_fits(name: str, options: dict[str, Any], size: int, dataset: str) -> None:
    """A forward pass on the meta device (shapes only, no compute): a network that shrinks the image
    to nothing (VGG-16 on 28x28 Fashion-MNIST) is a one-line error before anything is written."""
    with torch.device("meta"):
        probe = create_model(name, **options).eval()
        try:
            probe(torch.zeros(2, options.get("in_channels", 3), size, size))
        except RuntimeError as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(
                f"model.name={name} cannot run on the {size}x{size} images of data.name={dataset} ({reason})"
            ) from None


class LossWindow:
    """Per-iteration losses and error counts of the iterations not yet read, kept on the device so the
    loop never waits for it; `drain` reads them (summed over processes) and checks the losses."""

    def __init__(self, device: torch.device, world_size: int) -> None:
        self.device, self.world_size = device, world_size
        self.losses: list[torch.Tensor] = []
        self.errors = torch.zeros((), dtype=torch.float64, device=device)
        self.images = 0

    @property
    def count(self) -> int:
        return len(self.losses)

    def add(self, loss: torch.Tensor, errors: torch.Tensor, images: int) -> None:
        self.losses.append(loss.float())
        self.errors += errors
        self.images += images

    def drain(self) -> tuple[list[float], int, int]:
        """(per-iteration mean losses, errors, images) over all processes since the last drain."""
        if not self.losses:
            return [], 0, 0
        packed = torch.cat([torch.stack(self.losses).double(), self.errors.view(1)])  # (iters + 1,)
        values = dist.all_reduce_sum(packed).tolist()
        result = ([v / self.world_size for v in values[:-1]], round(values[-1]), self.images * self.world_size)
        self.losses, self.images = [], 0
        self.errors.zero_()
        return result


def _evaluate(model: nn.Module, test, device: torch.device, cfg: Config, info: dist.DistInfo) -> float:
    """Error (%) of the whole evaluated split (test or val), computed on rank 0 and shared with the others."""
    error = None
    if info.is_main:
        wrong, images = evaluate_error(
            model, test.batches(), device=device, precision=cfg.train.precision, channels_last=cfg.train.channels_last
        )
        error = 100.0 * wrong / max(images, 1)
    return float(dist.broadcast_object(error))  # type: ignore[arg-type]


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
