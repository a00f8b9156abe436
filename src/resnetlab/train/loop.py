"""`run_training(cfg, out_dir)`: the paper's training loop, one plain function read top to bottom.

Iteration-based like the paper (sec. 4.2 counts iterations, not epochs): SGD with momentum, the lr
rules of `schedule.py`, an evaluation every `train.eval_every` iterations and at the end, a checkpoint
every `train.checkpoint_every` iterations and on SIGTERM/SIGINT. Resuming is exact: the data stream is
a function of the iteration, and everything else that changes (weights, optimizer, schedule, meters,
RNGs) is in the checkpoint. With `torchrun`, each process trains on its share of the global batch
under DistributedDataParallel; rank 0 alone evaluates and writes files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from resnetlab.config import Config, model_options, to_dict
from resnetlab.errors import UserError
from resnetlab.models import create_model
from resnetlab.train import finetune
from resnetlab.train.lifecycle import (
    NonFiniteLoss,
    Run,
    gather_rng_states,
    open_run,
    progress_bar,
    restore_rng_states,
    seed_everything,
)
from resnetlab.train.schedule import LRSchedule
from resnetlab.train.step import compile_model, evaluate_error, make_grad_scaler, make_sgd, make_train_step
from resnetlab.utils import distributed as dist
from resnetlab.utils.meters import Average, Throughput

__all__ = ["NonFiniteLoss", "run_training"]


def build_data(cfg: Config, device: torch.device, *, rank: int, world_size: int, stats=None):
    """`resnetlab.data.build_data` (imported here so tests can substitute a small source)."""
    from resnetlab.data import build_data as build

    return build(cfg, device, rank=rank, world_size=world_size, stats=stats)


def run_training(cfg: Config, out_dir: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data` with the recipe in `cfg.optim` / `cfg.train`; write the run into
    `out_dir` (its life: `resnetlab.train.lifecycle`). Returns a summary: iterations, test_error,
    best_test_error, train_error, train_loss, time (s), interrupted (signal name or None), exit_code,
    out_dir.

    `resume=True` continues from `out_dir/checkpoint.pt` (or starts if the run never checkpointed).
    Raises `UserError` for bad configs, a non-finite loss, or an `out_dir` holding another run.
    """
    with open_run(cfg, out_dir, resume=resume) as run:
        return _train(cfg, run)


def _train(cfg: Config, run: Run) -> dict[str, Any]:
    t, info, device = cfg.train, run.info, run.device
    split = eval_split(cfg)  # what the evaluated error is called in every output: "val" or "test"
    if t.batch_size % info.world_size:
        raise UserError(f"train.batch_size {t.batch_size} is not divisible by the {info.world_size} processes")

    # ---- data, model, optimizer, schedule ------------------------------------------------------
    seed_everything(t.seed)
    # train.init_from: weights to start from and their normalisation; a resumed run has both in its checkpoint.
    source = finetune.read_source(cfg) if run.checkpoint is None else None
    stats = finetune.source_stats(source) if source else finetune.resumed_stats(cfg, run.checkpoint)
    data = build_data(cfg, device, rank=info.rank, world_size=info.world_size, stats=stats)
    model, meta = build_classifier(cfg, data)
    report = finetune.init_model(model, source, classes=data.classes) if source else []
    report += finetune.freeze(model, t.freeze)  # not in the checkpoint: applied to resumed runs too
    if info.is_main and report:
        print("\n".join(report))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    model.to(device, memory_format=torch.channels_last if t.channels_last else torch.contiguous_format)
    o = cfg.optim
    optimizer = make_sgd(
        model, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, backbone_lr_mult=o.backbone_lr_mult
    )
    schedule = LRSchedule.from_config(o, batch_size=t.batch_size)
    scaler = make_grad_scaler(t.precision, device)
    recent, since_eval = Average(), Average()  # training stats since the last log / evaluation
    elapsed_before, last_eval, best = 0.0, None, None
    if (ckpt := run.checkpoint) is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        recent.load_state_dict(ckpt["meters"]["recent"])
        since_eval.load_state_dict(ckpt["meters"]["since_eval"])
        if ckpt.get("data") and hasattr(data.train, "load_state_dict"):
            data.train.load_state_dict(ckpt["data"])
        restore_rng_states(run, ckpt["rng"])
        elapsed_before, last_eval, best = ckpt["elapsed"], ckpt["last_eval"], ckpt["best"]

    train_model: nn.Module = model
    if info.enabled:  # gradients averaged over processes; BN statistics stay per process, as in the paper
        train_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if t.compile:
        train_model = compile_model(train_model, t.compile_mode)
    train_model.train()
    step = make_train_step(
        train_model, optimizer, device=device, precision=t.precision, channels_last=t.channels_last, scaler=scaler
    )

    def state(iteration: int, elapsed: float) -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "config": to_dict(cfg),
            "meta": meta,
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "meters": {"recent": recent.state_dict(), "since_eval": since_eval.state_dict()},
            "data": data.train.state_dict() if hasattr(data.train, "state_dict") else None,
            "rng": gather_rng_states(run),
            "elapsed": elapsed,
            "last_eval": last_eval,
            "best": best,
        }

    # ---- the loop ------------------------------------------------------------------------------
    window = _Window(device, info.world_size)
    throughput = Throughput()
    bar = progress_bar(t.max_iters, run)
    t0 = time.perf_counter()
    it = run.start_iter
    lr = schedule.lr(it)
    batches = data.train.batches(run.start_iter)
    try:
        while it < t.max_iters:
            x, y = next(batches)
            warning = schedule.end_warmup_if_due(it)  # the warm-up never outlives the first milestone
            if warning and info.is_main:
                bar.write(warning)
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
            stop_now = run.stop_requested()
            checkpoint_now = it % t.checkpoint_every == 0 or stop_now
            if log_now or eval_now or checkpoint_now:
                first = it - window.count + 1
                losses, n_err, n_img = window.drain()
                run.check_finite(losses, first)
                for meter in (recent, since_eval):
                    meter.add(sum(losses), n_err, n_img, len(losses))
            if log_now:
                # Sec. 4.2 warm-up: "until the training error is below 80%", over the recent iterations.
                schedule.observe_train_error(it, recent.error)
                rate = throughput.rate()
                bar.set_postfix(
                    loss=f"{recent.loss:.3f}", err=f"{recent.error:.1f}%", lr=f"{lr:.3g}", img_s=f"{rate:.0f}"
                )
                scalars = {"train/loss": recent.loss, "train/error": recent.error, "lr": lr, "images_per_s": rate}
                run.log(it, scalars)
                recent.reset()
            if eval_now:
                test_error = _evaluate(model, data.test, device, cfg, info)
                schedule.observe_test_error(test_error)
                last_eval = {
                    "iter": it,
                    "lr": lr,
                    "train_loss": since_eval.loss,
                    "train_error": since_eval.error,
                    "test_error": test_error,  # the key for any split; `eval_split` names it
                    "eval_split": split,
                    "time": elapsed_before + time.perf_counter() - t0,
                }
                # ImageFolder with data.skip_corrupt: how many unreadable images were skipped so far.
                skipped = getattr(data.train, "skipped", 0)
                if skipped:
                    last_eval["skipped_images"] = skipped
                if best is None or test_error < best["test_error"]:
                    best = {"iter": it, "test_error": test_error}
                since_eval.reset()
                scalars = {f"{split}/error": test_error, "train/error_since_eval": last_eval["train_error"]}
                run.log(it, scalars, last_eval)
                if info.is_main:
                    bar.write(
                        f"iter {it}: {split} error {test_error:.2f}%, train error {last_eval['train_error']:.2f}%, "
                        f"loss {last_eval['train_loss']:.4f}, lr {lr:.3g}"
                        + (f", {skipped} unreadable images skipped" if skipped else "")
                    )
                throughput.rate()  # leave evaluation out of images/s
            if checkpoint_now:
                run.save_checkpoint(state(it, elapsed_before + time.perf_counter() - t0), it)
            if stop_now:
                break
    finally:
        bar.close()

    elapsed = elapsed_before + time.perf_counter() - t0
    summary = {
        "iterations": it,
        "test_error": last_eval["test_error"] if last_eval else None,
        "best_test_error": best["test_error"] if best else None,
        "best_iter": best["iter"] if best else None,
        "train_error": last_eval["train_error"] if last_eval else None,
        "train_loss": last_eval["train_loss"] if last_eval else None,
        "time": elapsed,
        "interrupted": run.stopped,
        "exit_code": run.exit_code,
        "out_dir": str(run.out),
        "eval_split": split,
    }
    if run.stopped:
        run.announce_stop(it)
        return summary
    if run.last_checkpoint != it:
        run.save_checkpoint(state(it, elapsed), it)  # the end state, so a longer max_iters can --resume from it
    final = {"model": model.state_dict(), "config": to_dict(cfg), "meta": meta, "iteration": it}
    run.finish({**final, **_eval_fields(last_eval)})
    if info.is_main:
        _print_summary(summary, cfg)
    return summary


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
    """The evaluated split's name: "val" for a validation set (CIFAR's held-out `data.val_split` training
    images; ImageNet's / an ImageFolder's val/ folder, where the paper reports too), else "test"."""
    return "val" if cfg.data.val_split or cfg.data.name in ("imagenet", "imagefolder") else "test"


def _eval_fields(last_eval: dict[str, Any] | None) -> dict[str, Any]:
    if not last_eval:
        return {}
    return {k: last_eval[k] for k in ("test_error", "train_error", "eval_split") if k in last_eval}


def _print_summary(summary: dict[str, Any], cfg: Config) -> None:
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
