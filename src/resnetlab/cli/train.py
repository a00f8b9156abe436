"""`resnetlab train --preset NAME --out DIR [--set KEY=VALUE ...] [--device D] [--resume]`."""

from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path

from resnetlab.cli.args import add_overrides
from resnetlab.errors import UserError

EPILOG = """examples:
  resnetlab train --preset cifar10-resnet20 --out runs/r20
  resnetlab train --preset cifar10-resnet20 --out runs/fm --device cpu \\
      --set data.name=fashion-mnist optim.milestones=[400] train.max_iters=600
  resnetlab train --out runs/r20 --resume          # continue an interrupted run
  resnetlab train --out runs/r20-32k --branch-from runs/r20/checkpoint-16000.pt \
      --set train.max_iters=32000 optim.milestones=[16000,24000]   # the same run on a shorter schedule
  resnetlab train --preset finetune-imagefolder --out runs/ft --set data.dir=/data/flowers
  resnetlab train --preset cifar10-resnet20 --out runs/mnist --init-from runs/fm/final.pt \
      --set data.name=mnist train.freeze=[stem] optim.backbone_lr_mult=0.1
  torchrun --nproc_per_node 2 -m resnetlab train --preset cifar10-resnet110 --out runs/r110
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from resnetlab.config import list_presets  # YAML only, no torch

    presets = textwrap.fill(", ".join(list_presets()), width=100, initial_indent="  ", subsequent_indent="  ")
    p = subparsers.add_parser(
        "train",
        help="train a network with one of the paper's recipes (presets in configs/)",
        description=(
            "Iteration-based SGD training (sec. 3.4 / 4.2). Writes config.yaml, metrics.jsonl, tb/, "
            "checkpoint.pt and, when finished, final.pt into --out. SIGTERM / Ctrl-C save a checkpoint."
        ),
        epilog=f"presets (configs/, see `resnetlab config show --preset NAME`):\n{presets}\n\n{EPILOG}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--preset", metavar="NAME", help="configs/NAME.yaml or a path to a YAML file")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder")
    add_overrides(p, "config overrides, e.g. train.max_iters=600 optim.milestones=[400]")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (sets train.device)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoint.pt")
    start.add_argument(
        "--branch-from",
        metavar="CHECKPOINT",
        help="a new run in --out that starts from another run's training checkpoint (one it kept with "
        "train.keep_checkpoints), with that run's config unless --preset, and --set changing how long it "
        "runs and its lr drops after that iteration (docs/train.md)",
    )
    p.add_argument(
        "--init-from",
        metavar="SOURCE",
        help="fine-tune from weights (sets train.init_from): our checkpoint, a torchvision .pth, or "
        "torchvision:ResNet50_Weights.IMAGENET1K_V2 (see docs/finetune.md)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar (none is drawn off a terminal either)")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    """The preset (or, with --resume and no preset, the run's own config.yaml; with --branch-from, the
    config of the checkpoint it starts from) plus the overrides."""
    from resnetlab.config import apply_overrides, from_dict, list_presets, load_preset, read_yaml

    overrides = list(args.set) + ([f"train.device={args.device}"] if args.device else [])
    if getattr(args, "init_from", None):
        overrides.append(f"train.init_from={args.init_from}")
    if args.preset:
        cfg = load_preset(args.preset)
    elif getattr(args, "branch_from", None):
        cfg = from_dict(_branch_config(Path(args.branch_from)))
    elif args.resume and _is_file(Path(args.out) / "config.yaml"):
        cfg = from_dict(read_yaml(Path(args.out) / "config.yaml"))
    else:
        raise UserError(f"give --preset NAME (presets: {', '.join(list_presets())})")
    return apply_overrides(cfg, overrides)


def _branch_config(source: Path) -> dict:
    """The config stored in the checkpoint a branch starts from (a one-line error if it has none)."""
    from resnetlab.utils import checkpoint  # torch import only here

    try:
        config = checkpoint.load(source).get("config")
    except UserError as e:
        raise UserError(f"--branch-from: {e}") from None
    if not isinstance(config, dict):
        raise UserError(f"--branch-from: {source} holds no run config; give --preset NAME")
    return config


def _is_file(path: Path) -> bool:
    """Path.is_file, False for a path the system cannot look up at all (a name too long)."""
    try:
        return path.is_file()
    except OSError:
        return False


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    from resnetlab.train import run_training  # torch import only when training

    # A run that fails before it saved anything leaves no folder behind (`train.lifecycle.open_run`).
    resume = args.resume
    if args.branch_from:  # the new folder becomes a run that --resume continues (rank 0 makes it)
        from resnetlab.train.lifecycle import start_branch

        if os.environ.get("RANK", "0") == "0":  # torchrun's other ranks wait for rank 0 in run_training
            start_branch(cfg, args.out, args.branch_from)
        resume = True
    return run_training(cfg, args.out, resume=resume, quiet=args.quiet)["exit_code"]  # 130 SIGINT, 143 SIGTERM
