"""`train_batched(cfgs, out_dirs)`: K small runs trained as one batched computation, each in its own run folder.

Why (issue 23, item 2): the CIFAR nets' 16-64-channel convolutions at batch 128 leave most of a large
GPU idle (ResNet-56: 6 ms a step on an H200 with CUDA graphs), while the paper's CIFAR section is
nine such networks. Several runs in one computation fill the GPU with one launch per layer for all.

How: `resnetlab.models.stacked.stack_models` turns the K networks into one wide network of grouped
convolutions (run k's batch is channel group k; batch norm over K*C channels is per channel, so per
run; option A shortcuts pad within each group; a residual/plain mix masks the shortcut per group).
The training loss is the sum of the runs' mean losses; the runs' weights are disjoint, so each run's
gradient is the gradient of its own loss.

Why grouped convolutions rather than `torch.func.stack_module_state` + `vmap`: vmap's batching rule
for a convolution with batched weights is itself a grouped convolution, so the GPU work is the same.
What vmap adds is batch norm trouble (its running statistics are updated in place, which vmap
refuses; functorch's `replace_all_batch_norm_modules_` drops them, and evaluation needs them) and a
functional training loop beside the ordinary one. Grouped layers keep the model's own forward code.

What each run keeps as a separate run has it:
- initial weights: `seed_everything(train.seed)`, its data, then its model from the registry, in the
  order `run_training` does it;
- data order and augmentation draws: its own training source from `build_data(cfg)` (seeded by
  train.seed; the data set is held once per run);
- batch-norm statistics (per channel group) and the BN step counter;
- optimizer: its own `make_sgd` optimizer over its views of the shared weights (momentum buffers,
  weight decay), its own `LRSchedule` (a warm-up ends on its own training error), its own GradScaler
  for fp16;
- its folder, through the same code as `run_training`: `open_run` (lock, config.yaml, resume
  checks), and the per-run steps of `train/loop.py` (lr, logs, evaluation, metrics.jsonl, TensorBoard,
  checkpoint, final.pt), called here rather than copied. A batched run's checkpoint.pt and final.pt
  are ordinary ones: `resnetlab evaluate` reads final.pt, `run_training(cfg, out, resume=True)`
  continues the run alone.
Shared: the process, the device and how it runs (train.*: precision, compile, channels_last), the
iteration counter and the log / evaluation / checkpoint cadence. A signal stops every run at the same
step, each with a checkpoint (each run installs its handler over the previous run's, so it takes K+1
Ctrl-Cs, not 2, to fall through to Python's default); a NaN in one run stops them all (the message
names the run).

Equal to separate runs up to the order of summation inside grouped convolutions and the batched fc
product (about 1e-6 relative per forward on the CPU): `tests/train/test_batched.py` compares a few
SGD steps, weights, BN statistics and losses with separate runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.config import Config, flat_diff, model_options, to_dict
from resnetlab.errors import UserError
from resnetlab.models import create_model
from resnetlab.models.stacked import check_stackable, stack_models, zero_grads
from resnetlab.train import loop
from resnetlab.train.lifecycle import NonFiniteLoss, Run, open_run, seed_everything
from resnetlab.train.schedule import LRSchedule
from resnetlab.train.step import autocast_dtype, compile_model, configure_device, make_grad_scaler, make_sgd
from resnetlab.utils.meters import Throughput

__all__ = ["check_batchable", "make_batched_step", "train_batched"]

# Keys that may differ between batched runs (anything else is shared by the one computation):
# the seed, the network (stack_models checks the layer shapes) and the optimizer / lr schedule.
PER_RUN_KEYS = ("train.seed",)
PER_RUN_SECTIONS = ("model.", "optim.")

BatchedStep = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], tuple[torch.Tensor, torch.Tensor]]


def train_batched(
    cfgs: Sequence[Config], out_dirs: Sequence[str | Path], *, resume: bool = False, quiet: bool = False
) -> list[dict[str, Any]]:
    """Train the runs `cfgs` (which differ only in train.seed, model.* and optim.*) as one batched
    computation, run k written into `out_dirs[k]` as `run_training(cfgs[k], out_dirs[k])` would.
    Returns each run's summary (the keys of `run_training`'s). `resume=True` continues every run from
    its checkpoint.pt; they must all be at the same iteration. `quiet=True`: no progress bars (as
    `run_training`'s).
    """
    cfgs, outs = list(cfgs), [Path(o) for o in out_dirs]
    check_batchable(cfgs, outs)
    with contextlib.ExitStack() as stack:
        runs = [stack.enter_context(open_run(cfg, out, resume=resume, quiet=quiet)) for cfg, out in zip(cfgs, outs)]
        return _train(cfgs, runs)


def check_batchable(cfgs: Sequence[Config], out_dirs: Sequence[Path]) -> None:
    """UserError unless the configs can share one computation (see PER_RUN_KEYS), their networks stack
    (checked on the meta device: no weights are made) and every run has a folder of its own."""
    if not cfgs:
        raise UserError("batched runs: no run given")
    if len(cfgs) != len(out_dirs):
        raise UserError(f"batched runs: {len(cfgs)} configs but {len(out_dirs)} output folders")
    seen: dict[Path, int] = {}
    for i, out in enumerate(out_dirs):
        key = Path(out).expanduser().resolve()
        if key in seen:
            raise UserError(f"batched runs {seen[key]} and {i} both write to {out}; give each run its own folder")
        seen[key] = i
    base = to_dict(cfgs[0])
    for i, cfg in enumerate(cfgs[1:], 1):
        for key, a, b in flat_diff(base, to_dict(cfg)):
            if key not in PER_RUN_KEYS and not key.startswith(PER_RUN_SECTIONS):
                raise UserError(
                    f"batched runs share {key}, but run 0 has {a!r} and run {i} {b!r} "
                    "(only train.seed, model.* and optim.* may differ between them)"
                )
    t = cfgs[0].train
    if t.init_from or t.freeze:
        raise UserError("batched runs train from scratch: train.init_from and train.freeze need separate runs")
    try:
        with torch.device("meta"):  # shapes only: the networks are checked before any folder is touched
            nets = [create_model(c.model.name, **model_options(c.model, num_classes=10, in_channels=3)) for c in cfgs]
        check_stackable(nets)
    except (ValueError, TypeError) as e:
        names = ", ".join(c.model.name for c in cfgs)
        raise UserError(f"these runs cannot be trained batched ({names}): {e}") from None


def make_batched_step(
    net: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    *,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = True,
    scalers: Sequence[torch.amp.GradScaler | None] | None = None,
) -> BatchedStep:
    """Return `step(xs, ys) -> (losses, errors)`: one SGD step of each of the K runs of `net` (from
    `stack_models`, maybe compiled). xs[k], ys[k]: run k's batch, (N, C, H, W) and (N,). `losses` (K,):
    each run's mean loss (fp32); `errors` (K,): each run's misclassified images; detached device tensors.

    Forward of the wide network under autocast, backward of the sum of the runs' mean cross-entropies,
    then optimizer k's step (through scaler k for fp16: run k's loss is scaled by run k's own scale).
    `make_train_step`'s counterpart; the same precision and memory-format rules.
    """
    dtype = autocast_dtype(precision, device)
    if scalers is None:
        scalers = [make_grad_scaler(precision, device) for _ in optimizers]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if any(p.grad is None for p in net.parameters()):
        raise ValueError("make_batched_step needs the network from stack_models (its gradients are shared)")

    def step(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # a new CUDA-graph-tree iteration (reduce-overhead)
        x = torch.cat([x.to(device, non_blocking=True) for x in xs], dim=1)  # K x (N, C, H, W) -> (N, K*C, H, W)
        x = x.contiguous(memory_format=memory_format)
        y = torch.stack([y.to(device, non_blocking=True) for y in ys], dim=1)  # (N, K)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = net(x)  # (N, K, classes)
            losses = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none").mean(0)  # (K,)
        zero_grads(net)  # the runs' gradients are views of the wide ones: zeroed in place, never dropped
        if scalers[0] is None:
            losses.sum().backward()
            for optimizer in optimizers:
                optimizer.step()
        else:
            torch.stack([s.scale(loss) for s, loss in zip(scalers, losses)]).sum().backward()
            for optimizer, scaler in zip(optimizers, scalers):
                scaler.step(optimizer)
                scaler.update()
        errors = (logits.argmax(dim=2) != y).sum(0)  # (K,)
        return losses.detach(), errors

    return step


# ---- the run ----------------------------------------------------------------------------------------


def _train(cfgs: list[Config], runs: list[Run]) -> list[dict[str, Any]]:
    t, device = cfgs[0].train, runs[0].device
    if runs[0].info.enabled:
        raise UserError("batched runs train in one process: start them without torchrun")
    if len({run.start_iter for run in runs}) > 1:
        at = ", ".join(f"{run.out} at {run.start_iter}" for run in runs)
        raise UserError(f"batched runs resume together, but their checkpoints differ ({at}); resume them one by one")
    states, step = _build(cfgs, runs)
    k = len(runs)
    windows = [loop.LossWindow(device, 1) for _ in runs]
    throughput = Throughput()
    streams = [s.data.train.batches(runs[0].start_iter) for s in states]
    it, stopped = runs[0].start_iter, None
    with contextlib.ExitStack() as bars:
        for run in runs:
            bars.enter_context(run.steps(desc=run.out.name))
            run.bar = _Labelled(run.bar, run.out.name)
        while it < t.max_iters:
            batches = [next(stream) for stream in streams]
            lrs = [loop.set_lr(s, it, run) for s, run in zip(states, runs)]
            losses, errors = step([x for x, _ in batches], [y for _, y in batches])
            for i, (window, (_, y)) in enumerate(zip(windows, batches)):
                window.add(losses[i], errors[i], y.numel())
            throughput.add(sum(y.numel() for _, y in batches))
            it += 1
            due = [run.after_step(it) for run in runs][0]  # the cadence is shared (train.* agree)
            stopped = next((run.stopped for run in runs if run.stopped), None)
            for run in runs:  # a signal is seen by one run's handler: every run stops with it
                run.stopped = stopped
            if due.log or due.eval or due.checkpoint or stopped:
                for s, run, window in zip(states, runs, windows):
                    first = it - window.count + 1
                    values, wrong, images = window.drain()
                    _check_finite(run, values, first)
                    for meter in (s.recent, s.since_eval):
                        meter.add(sum(values), wrong, images, len(values))
            if due.log:
                rate = throughput.rate() / k  # each run's own images/s, as a separate run reports it
                for s, run, lr in zip(states, runs, lrs):
                    loop.log_training(s, run, it, lr, rate)
            if due.eval:
                for s, run, lr in zip(states, runs, lrs):
                    loop.evaluate_and_log(s, run, it, lr)
                throughput.rate()  # leave evaluation out of images/s
            if due.checkpoint or stopped:
                for s, run in zip(states, runs):
                    run.save_checkpoint(s.state(run), it)
            if stopped:
                break
    summaries = [loop.run_summary(s, run, it) for s, run in zip(states, runs)]
    for s, run in zip(states, runs):
        run.end(it, {**run.record(s.model, s.meta), **loop.eval_fields(s.last_eval)})
    if not stopped:
        for summary, cfg in zip(summaries, cfgs):
            loop.print_summary(summary, cfg)
    return summaries


def _build(cfgs: list[Config], runs: list[Run]) -> tuple[list[Any], BatchedStep]:
    """Each run's data, model, optimizer and schedule (`loop.Training`, in its checkpoint's state if
    resumed), the models stacked into one network, and the batched step over it."""
    t, device = cfgs[0].train, runs[0].device
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    configure_device(device, tf32=t.tf32)  # CUDA: cuDNN benchmark mode, TF32 as train.tf32 says
    parts = []
    for cfg in cfgs:
        seed_everything(cfg.train.seed)  # as run_training: seed, data, then the model's initial weights
        data = loop.build_data(cfg, device, rank=0, world_size=1)
        model, meta = loop.build_classifier(cfg, data)
        parts.append((data, model.to(device, memory_format=memory_format), meta))
    try:
        net = stack_models([model for _, model, _ in parts], memory_format=memory_format)
    except ValueError as e:
        names = ", ".join(cfg.model.name for cfg in cfgs)
        raise UserError(f"these runs cannot be trained batched ({names}): {e}") from None
    states = []
    for cfg, run, (data, model, meta) in zip(cfgs, runs, parts):
        o = cfg.optim
        # After stacking: the optimizer holds the model's views of the shared weights.
        optimizer = make_sgd(
            model, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, backbone_lr_mult=o.backbone_lr_mult
        )
        s = loop.Training(
            cfg=cfg,
            data=data,
            model=model,
            meta=meta,
            optimizer=optimizer,
            schedule=LRSchedule.from_config(o, batch_size=t.batch_size),
            scaler=make_grad_scaler(t.precision, device),
        )
        if run.checkpoint is not None:
            s.load_state_dict(run.checkpoint)
            run.restore(model, optimizer)  # copies into the views, i.e. into the wide network
        states.append(s)
    train_net = compile_model(net, t.compile_mode) if t.compile else net
    train_net.train()
    step = make_batched_step(
        train_net,
        [s.optimizer for s in states],
        device=device,
        precision=t.precision,
        channels_last=t.channels_last,
        scalers=[s.scaler for s in states],
    )
    return states, step


def _check_finite(run: Run, values: list[float], first: int) -> None:
    try:
        run.check_finite(values, first)
    except NonFiniteLoss as e:
        raise NonFiniteLoss(f"{run.out}: {e}; the other batched runs stopped with it, their checkpoints kept") from None


class _Labelled:
    """A run's progress bar whose `write` lines name the run (K runs write to one terminal)."""

    def __init__(self, bar: Any, label: str) -> None:
        self._bar, self._label = bar, label

    def write(self, line: str) -> None:
        self._bar.write(f"{self._label}: {line}")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bar, name)
