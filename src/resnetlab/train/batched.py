"""`train_batched(cfgs, out_dirs)`: K small runs trained as one batched computation, each in its own run folder.

Why: the CIFAR nets' 16-64-channel convolutions at batch 128 leave most of a large
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

What each run keeps as a separate run has it: it goes through the same loop, `loop.train_runs`,
as a run alone (set-up, step, logs, evaluation, checkpoints are one code for K = 1 and K > 1):
- initial weights: `seed_everything(train.seed)`, its data, then its model from the registry;
- data order and augmentation draws: its own training source from `build_data(cfg)` (seeded by
  train.seed; the data set is held once per run);
- batch-norm statistics (per channel group) and the BN step counter;
- optimizer: its own `make_sgd` optimizer over its views of the shared weights (momentum buffers,
  weight decay), its own `LRSchedule` (a warm-up ends on its own training error), its own GradScaler
  for fp16;
- its folder: `open_run` (lock, config.yaml, resume checks), metrics.jsonl, TensorBoard, checkpoint.pt
  and final.pt. These are ordinary files: `resnetlab evaluate` reads final.pt, `run_training(cfg,
  out, resume=True)` continues the run alone.
Shared: the process, the device and how it runs (train.*: precision, compile, channels_last), the
iteration counter and the log / evaluation / checkpoint cadence. A signal stops every run at the same
step, each with a checkpoint; a second Ctrl-C stops at once. A NaN in one run stops them all (the
message names the run).

Equal to separate runs up to the order of summation inside grouped convolutions and the batched fc
product: in float64 at the paper's settings, weights, BN statistics and momentum buffers agree to
1e-9 relative after 20 steps (`tests/train/test_batched.py`); in fp32 the runs drift apart
as any two fp32 runs with different summation orders do (measured: `benchmarks/batched_drift.py`,
figures in docs/train.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from resnetlab.config import Config, flat_diff, model_options, to_dict
from resnetlab.errors import UserError
from resnetlab.models import create_model
from resnetlab.models.stacked import check_stackable
from resnetlab.train import loop

__all__ = ["check_batchable", "train_batched"]

# Keys that may differ between batched runs (anything else is shared by the one computation):
# the seed, the network (stack_models checks the layer shapes) and the optimizer / lr schedule.
PER_RUN_KEYS = ("train.seed",)
PER_RUN_SECTIONS = ("model.", "optim.")


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
    return loop.train_runs(cfgs, outs, resume=resume, quiet=quiet)


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
