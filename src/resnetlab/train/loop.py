"""`run_training(cfg, out_dir)`: the paper's training loop, one plain function read top to bottom.

Iteration-based like the paper (sec. 4.2 counts iterations, not epochs): SGD with momentum, the lr
rules of `schedule.py`, an evaluation every `train.eval_every` iterations and at the end, a checkpoint
every `train.checkpoint_every` iterations and on SIGTERM/SIGINT. Resuming is exact: the data stream is
a function of the iteration, and everything else that changes (weights, optimizer, schedule, meters,
RNGs) is in the checkpoint. With `torchrun`, each process trains on its share of the global batch
under DistributedDataParallel; rank 0 alone evaluates and writes files.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from resnetlab.config import Config, dump, model_options, to_dict
from resnetlab.errors import UserError
from resnetlab.models import create_model
from resnetlab.train import finetune
from resnetlab.train.rundir import open_run, rng_state, seed_everything, set_rng_state, truncate_metrics
from resnetlab.train.schedule import LRSchedule
from resnetlab.train.step import autocast_dtype, evaluate_error, make_grad_scaler, make_sgd, make_train_step
from resnetlab.utils import checkpoint
from resnetlab.utils import distributed as dist
from resnetlab.utils.meters import Average, Throughput


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite: training stops, the last good checkpoint stays."""


def build_data(cfg: Config, device: torch.device, *, rank: int, world_size: int, stats=None):
    """`resnetlab.data.build_data` (imported here so tests can substitute a small source)."""
    from resnetlab.data import build_data as build

    return build(cfg, device, rank=rank, world_size=world_size, stats=stats)


def run_training(cfg: Config, out_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data` with the recipe in `cfg.optim` / `cfg.train`; write the run into
    `out_dir`. Returns a summary: iterations, test_error, best_test_error, train_error, train_loss,
    time (s), interrupted (signal name or None), out_dir.

    `resume=True` continues from `out_dir/checkpoint.pt` (or starts if the run never checkpointed).
    Raises `UserError` for bad configs, a non-finite loss, or an `out_dir` holding another run.
    """
    was_initialized = torch.distributed.is_available() and torch.distributed.is_initialized()
    info, device = dist.init_distributed(cfg.train.device)
    try:
        return _run(cfg, Path(out_dir), resume, info, device)
    finally:
        if not was_initialized:
            dist.cleanup()


def _run(cfg: Config, out: Path, resume: bool, info: dist.DistInfo, device: torch.device) -> dict[str, Any]:
    t = cfg.train
    _check_config(cfg, info.world_size)
    ckpt = open_run(cfg, out, resume)

    # ---- data, model, optimizer, schedule ------------------------------------------------------
    seed_everything(t.seed)
    source = finetune.read_source(cfg)  # train.init_from: weights to start from, and their normalisation
    data = build_data(cfg, device, rank=info.rank, world_size=info.world_size, stats=finetune.source_stats(source))
    options = model_options(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels)
    try:
        model = create_model(cfg.model.name, **options)
    except (ValueError, TypeError) as e:
        raise UserError(f"model: {e}") from None
    report = finetune.init_model(model, source, classes=data.classes) if source and ckpt is None else []
    report += finetune.freeze(model, t.freeze)  # not in the checkpoint: applied to resumed runs too
    if info.is_main and report:
        print("\n".join(report))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    meta = {**data.meta, "model": cfg.model.name, "model_options": options}

    o = cfg.optim
    optimizer = make_sgd(
        model, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, backbone_lr_mult=o.backbone_lr_mult
    )
    schedule = LRSchedule(
        lr=o.lr,
        schedule=o.schedule,
        milestones=o.milestones,
        gamma=o.gamma,
        patience=o.plateau_patience,
        warmup_lr=o.warmup_lr,
        warmup_until_error=o.warmup_until_error,
        scale=t.batch_size / o.base_batch_size if o.base_batch_size else 1.0,
    )
    scaler = make_grad_scaler(t.precision, device)
    recent, since_eval = Average(), Average()  # training stats since the last log / evaluation
    start_iter, elapsed_before, last_eval, best = 0, 0.0, None, None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        recent.load_state_dict(ckpt["meters"]["recent"])
        since_eval.load_state_dict(ckpt["meters"]["since_eval"])
        if ckpt.get("data") and hasattr(data.train, "load_state_dict"):
            data.train.load_state_dict(ckpt["data"])
        set_rng_state(ckpt["rng"], device)
        start_iter, elapsed_before = ckpt["iteration"], ckpt["elapsed"]
        last_eval, best = ckpt["last_eval"], ckpt["best"]

    train_model: nn.Module = model
    if info.enabled:  # gradients averaged over processes; BN statistics stay per process, as in the paper
        train_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if t.compile:
        train_model = torch.compile(train_model)
    train_model.train()
    step = make_train_step(
        train_model, optimizer, device=device, precision=t.precision, channels_last=t.channels_last, scaler=scaler
    )

    # ---- run folder (rank 0 only writes) -------------------------------------------------------
    writer = None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        dump(cfg, out / "config.yaml")
        truncate_metrics(out / "metrics.jsonl", start_iter)
        if start_iter < t.max_iters:
            (out / "final.pt").unlink(missing_ok=True)  # its presence means "finished"
        from torch.utils.tensorboard import SummaryWriter  # slow import, only where it is used

        writer = SummaryWriter(str(out / "tb"), purge_step=start_iter if start_iter else None)

    def save_checkpoint(iteration: int, elapsed: float) -> None:
        if not info.is_main:
            return
        state = {
            "model": model.state_dict(),
            "config": to_dict(cfg),
            "meta": meta,
            "optimizer": optimizer.state_dict(),
            "iteration": iteration,
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "meters": {"recent": recent.state_dict(), "since_eval": since_eval.state_dict()},
            "data": data.train.state_dict() if hasattr(data.train, "state_dict") else None,
            "rng": rng_state(device),
            "elapsed": elapsed,
            "last_eval": last_eval,
            "best": best,
        }
        checkpoint.save_atomic(state, out / "checkpoint.pt")

    # ---- the loop ------------------------------------------------------------------------------
    stop = _StopSignal()
    window = _Window(device, info.world_size)
    throughput = Throughput()
    bar = tqdm(
        total=t.max_iters,
        initial=start_iter,
        disable=not info.is_main,
        unit="it",
        dynamic_ncols=True,
        mininterval=0.1 if sys.stderr.isatty() else 30.0,  # a log file gets a line every 30 s, not 10 a second
    )
    t0 = time.perf_counter()
    it = start_iter
    lr = schedule.lr(it)
    try:
        batches = data.train.batches(start_iter)
        while it < t.max_iters:
            x, y = next(batches)
            lr = schedule.lr(it)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)  # fine-tuning: the backbone's may be smaller
            loss, errors = step(x, y)
            window.add(loss, errors, y.numel())
            throughput.add(y.numel() * info.world_size)
            it += 1
            bar.update(1)

            log_now = it % t.log_every == 0 or it == t.max_iters
            eval_now = it % t.eval_every == 0 or it == t.max_iters
            # In many processes the stop flag is agreed on at log points, so all stop at one iteration.
            stop_now = stop.agreed(info, device) if (log_now or not info.enabled) else False
            checkpoint_now = it % t.checkpoint_every == 0 or stop_now
            if log_now or eval_now or checkpoint_now:
                loss_sum, n_err, n_img, n_it = window.drain(first_iter=it - window.count)  # raises on NaN
                recent.add(loss_sum, n_err, n_img, n_it)
                since_eval.add(loss_sum, n_err, n_img, n_it)
            if log_now:
                # Sec. 4.2 warm-up: "until the training error is below 80%", over the recent iterations.
                schedule.observe_train_error(it, recent.error)
                rate = throughput.rate()
                bar.set_postfix(
                    loss=f"{recent.loss:.3f}", err=f"{recent.error:.1f}%", lr=f"{lr:.3g}", img_s=f"{rate:.0f}"
                )
                if writer:
                    writer.add_scalar("train/loss", recent.loss, it)
                    writer.add_scalar("train/error", recent.error, it)
                    writer.add_scalar("lr", lr, it)
                    writer.add_scalar("images_per_s", rate, it)
                recent.reset()
            if eval_now:
                test_error = _evaluate(model, data.test, device, cfg, info)
                schedule.observe_test_error(test_error)
                last_eval = {
                    "iter": it,
                    "lr": lr,
                    "train_loss": since_eval.loss,
                    "train_error": since_eval.error,
                    "test_error": test_error,
                    "time": elapsed_before + time.perf_counter() - t0,
                }
                # ImageFolder with data.skip_corrupt: how many unreadable images were skipped so far.
                skipped = getattr(data.train, "skipped", 0)
                if skipped:
                    last_eval["skipped_images"] = skipped
                if best is None or test_error < best["test_error"]:
                    best = {"iter": it, "test_error": test_error}
                since_eval.reset()
                if info.is_main:
                    with open(out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(last_eval) + "\n")
                    writer.add_scalar("test/error", test_error, it)
                    writer.add_scalar("train/error_since_eval", last_eval["train_error"], it)
                    bar.write(
                        f"iter {it}: test error {test_error:.2f}%, train error {last_eval['train_error']:.2f}%, "
                        f"loss {last_eval['train_loss']:.4f}, lr {lr:.3g}"
                        + (f", {skipped} unreadable images skipped" if skipped else "")
                    )
                throughput.rate()  # leave evaluation out of images/s
            if checkpoint_now:
                save_checkpoint(it, elapsed_before + time.perf_counter() - t0)
                dist.barrier()
            if stop_now:
                break
    finally:
        bar.close()
        stop.restore()
        if writer:
            writer.close()

    elapsed = elapsed_before + time.perf_counter() - t0
    summary = {
        "iterations": it,
        "test_error": last_eval["test_error"] if last_eval else None,
        "best_test_error": best["test_error"] if best else None,
        "best_iter": best["iter"] if best else None,
        "train_error": last_eval["train_error"] if last_eval else None,
        "train_loss": last_eval["train_loss"] if last_eval else None,
        "time": elapsed,
        "interrupted": stop.name,
        "out_dir": str(out),
    }
    if stop.name:
        if info.is_main:
            print(f"{stop.name}: stopped at iteration {it}; checkpoint saved. Continue with --resume --out {out}")
        return summary
    if info.is_main:
        if not (out / "checkpoint.pt").is_file() or it % t.checkpoint_every:
            save_checkpoint(it, elapsed)  # the end state, so a longer max_iters can --resume from it
        # Written last: its presence means the run finished.
        checkpoint.save_atomic(
            {
                "model": model.state_dict(),
                "config": to_dict(cfg),
                "meta": meta,
                "iteration": it,
                **_eval_fields(last_eval),
            },
            out / "final.pt",
        )
        _print_summary(summary, cfg)
    dist.barrier()
    return summary


# ---- helpers -------------------------------------------------------------------------------------


class _Window:
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

    def drain(self, first_iter: int) -> tuple[float, int, int, int]:
        """(sum of per-iteration mean losses, errors, images, iterations) over all processes."""
        if not self.losses:
            return 0.0, 0, 0, 0
        packed = torch.cat([torch.stack(self.losses).double(), self.errors.view(1)])  # (iters + 1,)
        values = dist.all_reduce_sum(packed).tolist()
        losses = [v / self.world_size for v in values[:-1]]
        for i, value in enumerate(losses):
            if not math.isfinite(value):
                raise NonFiniteLoss(
                    f"loss is {value} at iteration {first_iter + i + 1}; training stopped, the last good "
                    "checkpoint was kept (lower optim.lr or set optim.warmup_lr)"
                )
        result = (sum(losses), round(values[-1]), self.images * self.world_size, len(losses))
        self.losses, self.images = [], 0
        self.errors.zero_()
        return result


class _StopSignal:
    """SIGTERM / SIGINT set a flag; the loop checkpoints and returns at the next safe point.
    A second Ctrl-C falls through to Python's default (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum: int, frame: Any) -> None:
        self.name = signal.Signals(signum).name
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def agreed(self, info: dist.DistInfo, device: torch.device) -> bool:
        if not info.enabled:
            return self.name is not None
        flag = dist.all_reduce_max(torch.tensor([1.0 if self.name else 0.0], device=device))  # NCCL: on the GPU
        if flag.item() and self.name is None:
            self.name = "SIGTERM"  # another process got the signal
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _evaluate(model: nn.Module, test, device: torch.device, cfg: Config, info: dist.DistInfo) -> float:
    """Test error (%) of the whole test split, computed on rank 0 and shared with the others."""
    error = None
    if info.is_main:
        wrong, images = evaluate_error(
            model, test.batches(), device=device, precision=cfg.train.precision, channels_last=cfg.train.channels_last
        )
        error = 100.0 * wrong / max(images, 1)
    return float(dist.broadcast_object(error))  # type: ignore[arg-type]


def _check_config(cfg: Config, world_size: int) -> None:
    """Cross-field checks the training loop needs beyond `resnetlab.config`'s own."""
    o, t = cfg.optim, cfg.train
    if o.warmup_lr is not None and o.warmup_lr <= 0:
        raise UserError(f"optim.warmup_lr: must be > 0 (or null), got {o.warmup_lr}")
    if not 0 < o.gamma <= 1:
        raise UserError(f"optim.gamma: must be in (0, 1], got {o.gamma}")
    if o.momentum < 0 or o.weight_decay < 0:
        raise UserError("optim.momentum and optim.weight_decay must be >= 0")
    if o.plateau_patience < 1:
        raise UserError(f"optim.plateau_patience: must be >= 1, got {o.plateau_patience}")
    if o.base_batch_size is not None and o.base_batch_size < 1:
        raise UserError(f"optim.base_batch_size: must be >= 1, got {o.base_batch_size}")
    if t.batch_size % world_size:
        raise UserError(f"train.batch_size {t.batch_size} is not divisible by the {world_size} processes")
    autocast_dtype(t.precision, torch.device("cpu"))  # validates the name


def _eval_fields(last_eval: dict[str, Any] | None) -> dict[str, Any]:
    return {"test_error": last_eval["test_error"], "train_error": last_eval["train_error"]} if last_eval else {}


def _print_summary(summary: dict[str, Any], cfg: Config) -> None:
    minutes, seconds = divmod(summary["time"], 60)
    images = summary["iterations"] * cfg.train.batch_size
    lines = [
        f"done: {cfg.model.name} on {cfg.data.name}, {summary['iterations']} iterations in "
        f"{int(minutes)}m{seconds:04.1f}s ({images / max(summary['time'], 1e-9):.0f} images/s incl. evaluation)",
    ]
    if summary["test_error"] is not None:
        lines.append(
            f"test error {summary['test_error']:.2f}% (best {summary['best_test_error']:.2f}% at iteration "
            f"{summary['best_iter']}), training error {summary['train_error']:.2f}%"
        )
    lines.append(f"run: {summary['out_dir']} (final.pt, metrics.jsonl, tb/)")
    print("\n".join(lines))
