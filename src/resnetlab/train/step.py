"""One training step (forward, loss, backward, SGD update) and the precision it runs in.

The step exists once, for one run or K runs stacked into one network: the training loop and the
benchmarks both call `make_train_step`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.config import COMPILE_MODES
from resnetlab.errors import UserError
from resnetlab.models.stacked import zero_grads

# step(x, y) -> (loss, errors) for one run; step(xs, ys) -> (losses, errors), each (K,), for K runs.
TrainStep = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None means plain fp32 (the paper's, the default).

    bf16 has fp32's range, so it needs no loss scaling; fp16 does (`make_grad_scaler`).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise UserError(f"train.precision: {precision!r} is not one of 'fp32', 'bf16', 'fp16'")


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling (its range is small); other precisions do not."""
    if autocast_dtype(precision, device) is torch.float16:
        return torch.amp.GradScaler(device.type)
    return None


def configure_device(device: torch.device, *, tf32: bool = False) -> None:
    """The device settings a training run starts with (CUDA only; nothing changes on the CPU):
    cuDNN's benchmark mode (fixed input sizes: it times its kernels once and keeps the fastest) and
    TF32 for fp32 convolutions and matrix products as `train.tf32` says (off: the paper's fp32; cuDNN
    would use TF32 for convolutions by default). Global to the process: each run sets them again."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32


def compile_model(model: nn.Module, mode: str = "default") -> nn.Module:
    """`torch.compile(model, mode=mode)`, the one place the loop and the benchmarks compile.

    "reduce-overhead" also captures CUDA graphs: the CIFAR nets' kernels are small, so on a GPU the
    time goes into launching them, which a graph replay removes. On the CPU graphs do not apply and
    the mode falls back to "default"."""
    if mode not in COMPILE_MODES:
        raise UserError(f"train.compile_mode: {mode!r} is not one of {', '.join(map(repr, COMPILE_MODES))}")
    return torch.compile(model, mode=None if mode == "default" else mode)


def make_sgd(
    model: nn.Module, *, lr: float, momentum: float, weight_decay: float, backbone_lr_mult: float = 1.0
) -> torch.optim.SGD:
    """Sec. 3.4 / 4.2: SGD, momentum 0.9, weight decay 1e-4 on every parameter (as in the paper's
    Caffe solver, which has no exemption for BN parameters).

    Fine-tuning (not in the paper): frozen parameters (requires_grad False) are left out, and with
    `backbone_lr_mult` != 1 everything but the head (fc) is its own group. Each group carries
    "lr_mult": the loop sets a group's lr to the schedule's lr x lr_mult."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if backbone_lr_mult == 1.0:
        groups = [{"params": [p for _, p in params], "lr_mult": 1.0}]
    else:
        head = [p for n, p in params if n.startswith("fc.")]
        backbone = [p for n, p in params if not n.startswith("fc.")]
        groups = [
            g
            for g in ({"params": backbone, "lr_mult": backbone_lr_mult}, {"params": head, "lr_mult": 1.0})
            if g["params"]
        ]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)


def set_group_lrs(optimizer: torch.optim.Optimizer, lr: float, *, momentum_form: str = "torch") -> None:
    """Each parameter group's lr: `lr` x its lr_mult (fine-tuning: the backbone's may be smaller).

    momentum_form "caffe": where a group's lr changes from a to b, its momentum buffers are scaled
    by a / b. torch.optim.SGD keeps u = m u + g and steps lr * u; Caffe keeps V = m V + lr g and steps
    V, i.e. V = lr * u while the lr is constant. Scaling u by a / b at the change makes torch's next
    step b (m u a / b + g) = m V + b g, Caffe's."""
    for group in optimizer.param_groups:
        new = lr * group.get("lr_mult", 1.0)
        old = group["lr"]
        if momentum_form == "caffe" and old != new and new > 0:
            for p in group["params"]:
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    buf.mul_(old / new)
        group["lr"] = new


def make_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    *,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = True,
    scaler: torch.amp.GradScaler | None | Sequence[torch.amp.GradScaler | None] = None,
) -> TrainStep:
    """Return `step(x, y) -> (loss, errors)` for one batch: forward under autocast, cross-entropy,
    backward, optimizer step (through `scaler` for fp16; one is made when not given; pass your own
    to checkpoint its state).

    `model` is in train mode and already on `device` (and in channels_last when asked); it may be
    wrapped in DistributedDataParallel or torch.compile. `loss` (mean over the batch, fp32) and `errors`
    (count of misclassified images) are detached device tensors: reading them is left to the caller,
    so the step itself never waits for the device.

    K runs at once: `optimizer` (and `scaler`, if given) the K runs' sequences and, for K > 1, `model`
    from `models.stacked.stack_models` over their K networks (maybe compiled). Then the step is
    `step(xs, ys) -> (losses, errors)`: K batches, xs[k] (N, C, H, W) and ys[k] (N,), and (K,) tensors
    back. The backward pass is of the sum of the runs' mean losses (each scaled by its own scaler for
    fp16): the runs' weights are disjoint, so each run's gradient is that of its own loss.
    """
    runs = list(optimizer) if isinstance(optimizer, Sequence) else None
    optimizers = runs if runs is not None else [optimizer]
    scalers = list(scaler) if isinstance(scaler, Sequence) else [scaler] * len(optimizers)
    dtype = autocast_dtype(precision, device)
    if scaler is None:
        scalers = [make_grad_scaler(precision, device) for _ in optimizers]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if len(optimizers) > 1 and any(p.grad is None for p in model.parameters()):
        raise ValueError("a step of K runs needs the network from stack_models (its gradients are shared)")

    def step(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if device.type == "cuda":
            # A new iteration for CUDA-graph trees (compile mode "reduce-overhead"); a no-op otherwise.
            torch.compiler.cudagraph_mark_step_begin()
        # K x (N, C, H, W) -> (N, K*C, H, W): run k's batch is channel group k of the stacked network.
        x = xs[0] if len(xs) == 1 else torch.cat([x.to(device, non_blocking=True) for x in xs], dim=1)
        x = x.to(device, memory_format=memory_format, non_blocking=True)
        y = torch.stack([y.to(device, non_blocking=True) for y in ys], dim=1)  # (N, K)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x).reshape(len(y), len(ys), -1)  # (N, K, num_classes); one network: K = 1
            # The loss in fp32 under autocast; otherwise in the weights' own dtype (float64 in the tests).
            logits = logits.float() if dtype is not None else logits
            losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(0)  # (K,)
        if len(optimizers) == 1:
            optimizers[0].zero_grad(set_to_none=True)
        else:
            zero_grads(model)  # the runs' gradients are views of the wide ones: zeroed in place, never dropped
        if scalers[0] is None:
            losses.sum().backward()
            for opt in optimizers:
                opt.step()
        else:
            torch.stack([s.scale(loss) for s, loss in zip(scalers, losses)]).sum().backward()
            for opt, s in zip(optimizers, scalers):
                s.step(opt)
                s.update()
        errors = (logits.argmax(dim=2) != y).sum(0)  # (K,)
        return losses.detach(), errors

    if runs is not None:
        return step

    def one_run(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, errors = step([x], [y])
        return loss[0], errors[0]

    return one_run


@torch.inference_mode()
def evaluate_error(
    model: nn.Module,
    batches,
    *,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = True,
) -> tuple[int, int]:
    """(misclassified, images) over `batches` of (x, y): single view, top-1, model in eval mode."""
    dtype = autocast_dtype(precision, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    errors = torch.zeros((), dtype=torch.int64, device=device)
    images = 0
    for x, y in batches:
        x = x.to(device, memory_format=memory_format, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x)
        errors += (logits.argmax(dim=1) != y).sum()
        images += y.numel()
    model.train(was_training)
    return int(errors), images
