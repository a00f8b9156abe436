"""`train_batched(cfgs, out_dirs)`: K small runs trained as one batched computation, each in its own run folder.

The CIFAR nets leave most of a large GPU idle; `stack_models` turns K of them into one network of
grouped convolutions (run k is channel group k) and `loop.train_runs` trains it with the code of a run
alone, so each run keeps its own weights, data order, BN statistics, optimizer, schedule and folder.
Equal to separate runs up to the order of summation (1e-9 in float64). Why grouped convolutions and
not vmap, and the fp32 drift measured: docs/train.md, "Several runs as one computation".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from resnetlab.config import Config, flat_diff, model_options, to_dict
from resnetlab.errors import UserError, one_line
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
        raise UserError(f"these runs cannot be trained batched ({names}): {one_line(e)}") from None
