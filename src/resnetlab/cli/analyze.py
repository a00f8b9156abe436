"""`resnetlab analyze curves|responses` (figs. 1/4/6, fig. 7) and `resnetlab reproduce NAME` (grids)."""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
from pathlib import Path

from resnetlab.cli.args import (
    FIGURE_SUFFIXES,
    POSITIVE,
    add_device_and_quiet,
    add_overrides,
    float_in,
    output_file,
    pick,
    say_for,
)
from resnetlab.runner.grids import DATASETS, GRIDS, SHORT_FACTOR  # data only: no torch import at --help

FIGURE = output_file(FIGURE_SUFFIXES)  # checked before the runs are read or the checkpoints measured


def register(subparsers: argparse._SubParsersAction) -> None:
    analyze = subparsers.add_parser("analyze", help="figures of the paper from runs and checkpoints")
    sub = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    curves = sub.add_parser(
        "curves",
        help="training (dashed) and test (bold) error vs iterations (figs. 1/4/6)",
        description="One colour per depth; plain | residual panels when both kinds are given.",
    )
    curves.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="training output folders")
    curves.add_argument("--out", required=True, type=FIGURE, help="figure file (.png, .pdf, .svg)")
    curves.add_argument("--title", default=None)
    curves.set_defaults(func=_curves)

    resp = sub.add_parser(
        "responses",
        help="std of each 3x3 layer's response after BN, before ReLU/addition (fig. 7)",
        description="std over all elements (N*C*H*W) of the test set, per layer in network order and sorted.",
    )
    resp.add_argument("--checkpoint", nargs="+", required=True, metavar="CK", help="one or more checkpoints")
    resp.add_argument("--out", default=None, type=FIGURE, help="figure file (.png, .pdf, .svg)")
    resp.add_argument("--json", action="store_true", help="print the per-layer stds as JSON on stdout")
    resp.add_argument(
        "--data-dir",
        default=None,
        help="where the test set is (default: the checkpoint's data.dir, named on the first line)",
    )
    resp.add_argument(
        "--max-images",
        type=POSITIVE,
        default=None,
        metavar="N",
        help="N test images only: a fixed random sample (seed 0) of a test set held in memory, else the first N",
    )
    add_device_and_quiet(resp)
    resp.set_defaults(func=_responses)

    rep = subparsers.add_parser(
        "reproduce",
        help="train a grid of the paper (table6, fig6-plain, degradation, cifar-section), write its table and figures",
        description=(
            "Skips finished runs (final.pt), resumes interrupted ones (checkpoint.pt). One run per GPU when "
            "several are visible, one after another otherwise (--procs N: N at once on the CPU, the longest first). "
            "--schedule short: the paper's schedule / "
            f"{SHORT_FACTOR} (milestones at 1/2 and 3/4 of --iters, default {64000 // SHORT_FACTOR}). "
            "--budget-s stops the grid cleanly (runs checkpoint, exit 124), as SIGTERM and Ctrl-C do (exit 143, "
            "130); the same command resumes it."
        ),
    )
    rep.add_argument("name", choices=list(GRIDS), metavar="NAME", help=" | ".join(GRIDS))
    rep.add_argument(
        "--nets",
        nargs="+",
        default=None,
        metavar="NET",
        help="only these networks of the grid, e.g. resnet20 plain20 (trained and in the table and figures)",
    )
    rep.add_argument("--seeds", type=POSITIVE, default=1, help="runs per network (seeds 0..N-1)")
    rep.add_argument("--dataset", choices=DATASETS, default="cifar10", help="imagefolder: needs --data-dir")
    rep.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="data.dir; for imagefolder DIR/train/<class>/ + DIR/test/ (or val/), trained with the CIFAR recipe",
    )
    rep.add_argument("--schedule", choices=("paper", "short"), default="paper")
    rep.add_argument("--iters", type=POSITIVE, default=None, help="total iterations (same schedule shape)")
    rep.add_argument("--eval-every", type=POSITIVE, default=None, help="default 1000 (paper), iters/16 otherwise")
    rep.add_argument("--out", default=None, help="default runs/reproduce/NAME-DATASET-SCHEDULE")
    rep.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    rep.add_argument(
        "--jobs-per-gpu",
        type=POSITIVE,
        default=1,
        metavar="N",
        help="runs sharing each GPU at once (default 1); refused on the CPU, where --procs N runs N at once",
    )
    rep.add_argument(
        "--procs",
        type=POSITIVE,
        default=1,
        metavar="N",
        help="CPU: N runs at once, each in its own process (default 1: one after another in this process); "
        "on a GPU use --jobs-per-gpu",
    )
    rep.add_argument(
        "--threads",
        type=POSITIVE,
        default=None,
        metavar="T",
        help="CPU: intra-op threads per run (default with --procs N: usable cores // N, at least 1; without: torch's)",
    )
    rep.add_argument(
        "--batch-runs",
        type=POSITIVE,
        default=1,
        metavar="K",
        help="train up to K runs whose networks stack (seeds of a net, a ResNet and its plain twin) as one "
        "computation, each in its own folder (default 1: one by one); a group is one job for --jobs-per-gpu",
    )
    rep.add_argument(
        "--budget-s",
        type=float_in(1, 1e9),
        default=None,
        metavar="S",
        help="wall-clock seconds: then no run starts, running ones checkpoint and stop (exit 124, no report)",
    )
    rep.add_argument(
        "--no-tf32",
        action="store_true",
        help="the same as --set train.tf32=false, the default: fp32 convolutions in full fp32 on CUDA "
        "(--set train.tf32=true allows TF32, faster)",
    )
    rep.add_argument(
        "--status",
        action="store_true",
        help="where each run stands and about how long the rest takes; reads the folders, starts nothing",
    )
    rep.add_argument(
        "--report-only",
        action="store_true",
        help="write the table and figures of the runs finished so far and train nothing (the others are named)",
    )
    rep.add_argument(
        "--branch-from",
        metavar="GRID",
        default=None,
        help="start each new run from the checkpoint its namesake in the grid folder GRID kept "
        "(train.keep_checkpoints) at the latest iteration where both schedules agree",
    )
    rep.add_argument("--with-1202", action="store_true", help="table6: also ResNet-1202 (19.4M params)")
    add_overrides(rep)
    rep.add_argument("--max-images", type=POSITIVE, default=None, help="responses on N test images (random, seed 0)")
    rep.add_argument("--no-responses", action="store_true", help="skip the fig. 7 analysis")
    rep.add_argument(
        "--rerun-changed",
        action="store_true",
        help="a run folder holding another recipe is left as is; that run trains again into NAME-r1 (-r2, ...)",
    )
    rep.add_argument("--quiet", action="store_true", help="no progress bars, for the training nor the analysis")
    rep.set_defaults(func=_reproduce)


def _curves(args: argparse.Namespace) -> int:
    from resnetlab.analysis.curves import plot_curves
    from resnetlab.analysis.runs import load_run

    runs = [load_run(d) for d in args.run_dirs]
    print(f"wrote {plot_curves(runs, args.out, title=args.title)}")
    return 0


def _responses(args: argparse.Namespace) -> int:
    from resnetlab.analysis.responses import checkpoint_responses, plot_responses
    from resnetlab.errors import UserError
    from resnetlab.utils.device import resolve_device

    if not args.out and not args.json:
        raise UserError("give --out FIG.png and/or --json")
    device = resolve_device(args.device)
    results = [
        checkpoint_responses(
            ck,
            device=device,
            **pick(args, "data_dir", "max_images", "quiet"),
            say=say_for(args.json),
        )
        for ck in args.checkpoint
    ]
    if args.out:
        path = plot_responses(results, args.out)
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for res in results:
            stds = list(res["layers"].values())
            print(
                f"{res['label']:>10}: {len(stds)} layers, std mean {sum(stds) / len(stds):.3f}, "
                f"min {min(stds):.3f}, max {max(stds):.3f} ({res['images']} test images"
                + (f", top-1 error {res['test_error']:.2f}%)" if res["test_error"] is not None else ")")
            )
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    import torch

    from resnetlab.errors import UserError
    from resnetlab.runner.plan import plan
    from resnetlab.runner.pool import refuse_other_recipes, run_jobs
    from resnetlab.utils.device import resolve_device

    out = Path(args.out or f"runs/reproduce/{args.name}-{args.dataset}-{args.schedule}")
    overrides = list(args.set)
    if args.no_tf32:  # kept for the commands already written down; the key records it in each config.yaml
        if any(kv.split("=", 1)[0].strip() == "train.tf32" for kv in overrides):
            raise UserError("give --no-tf32 or --set train.tf32=..., not both")
        overrides.insert(0, "train.tf32=false")
    jobs = plan(
        args.name,
        out=out,
        schedule_name=args.schedule,
        overrides=overrides,
        **pick(
            args, "seeds", "dataset", "iters", "eval_every", "device", "with_1202", "rerun_changed", "data_dir", "nets"
        ),
    )
    device = resolve_device(args.device)
    cpu_only = [f"--procs {args.procs}"] if args.procs > 1 else []
    cpu_only += [f"--threads {args.threads}"] if args.threads is not None else []
    if cpu_only and device.type == "cuda":
        raise UserError(
            f"{' '.join(cpu_only)} is for runs on the CPU, and --device {args.device} is {device} here; "
            "add --device cpu, or on a GPU use --jobs-per-gpu N (runs sharing each GPU)"
        )
    gpus = torch.cuda.device_count() if args.device in ("auto", "cuda") and device.type == "cuda" else 0
    if args.jobs_per_gpu != 1 and gpus == 0:  # it would be ignored: one run at a time
        instead = (
            "on the CPU use --procs N"
            if device.type != "cuda"
            else "use --device cuda (CUDA_VISIBLE_DEVICES picks GPUs)"
        )
        raise UserError(
            f"--jobs-per-gpu {args.jobs_per_gpu} is for runs sharing the GPUs of --device auto or cuda, and "
            f"--device {args.device} is {device} here; {instead}"
        )
    if args.status:
        from resnetlab.runner.status import status_lines

        slots = args.procs if gpus == 0 else gpus * args.jobs_per_gpu
        source = None
        if args.branch_from:
            from resnetlab.runner.branch import check_source

            source = Path(args.branch_from)
            check_source(source)
        print("\n".join(status_lines(jobs, slots, batch_runs=args.batch_runs, branch_from=source)))
        return 0
    refuse_other_recipes(jobs)  # before commands.txt records a line that would train nothing
    if args.branch_from and not args.report_only:
        from resnetlab.runner.branch import branch_new_jobs

        branch_new_jobs(jobs, Path(args.branch_from))
    try:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "commands.txt", "a") as f:
            f.write(_command_line(args) + "\n")  # how these results were made, one line per invocation
    except OSError as e:  # a file where the folder goes, a folder that cannot be written
        raise UserError(f"--out {out}: cannot write the grid there ({e.strerror or e})") from None
    if args.report_only:
        return _report(jobs, out, device, args)
    train_fn = batched_fn = None
    if args.quiet:
        from resnetlab.train import run_training
        from resnetlab.train.batched import train_batched

        train_fn = functools.partial(run_training, quiet=True)
        batched_fn = functools.partial(train_batched, quiet=True)
    left = run_jobs(
        jobs,
        gpus=gpus,
        train_fn=train_fn,
        batched_fn=batched_fn,
        **pick(args, "jobs_per_gpu", "procs", "threads", "batch_runs", "budget_s"),
    )
    if left:  # only the budget returns unfinished runs; a signal raises (`resnetlab.runner.stop`)
        print(
            f"--budget-s {args.budget_s:g} reached: {len(left)} of {len(jobs)} runs unfinished (checkpointed); "
            "the same command resumes them (report when all are done)"
        )
        return 124
    return _report(jobs, out, device, args)


def _report(jobs: list, out: Path, device, args: argparse.Namespace) -> int:
    """The report of the grid's finished runs, printed, with the others named (only --report-only has any)."""
    from resnetlab.analysis.report import report

    report(
        jobs,
        out,
        device=device,
        responses=not args.no_responses,
        **pick(args, "dataset", "max_images", "quiet"),
    )
    print((out / "table.md").read_text(), end="")
    left = [j.name for j in jobs if j.state() != "done"]
    if left:
        print(f"report of {len(jobs) - len(left)} of {len(jobs)} runs; not finished: {', '.join(left)}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The `resnetlab reproduce ...` line equivalent to `args`."""
    words = ["resnetlab", "reproduce", args.name, "--seeds", str(args.seeds), "--dataset", args.dataset]
    words += ["--schedule", args.schedule, "--device", args.device]
    for flag in ("iters", "eval_every", "out", "max_images", "data_dir", "budget_s", "branch_from"):
        if getattr(args, flag) is not None:
            words += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    words += [w for kv in args.set for w in ("--set", kv)]
    if args.jobs_per_gpu != 1:
        words += ["--jobs-per-gpu", str(args.jobs_per_gpu)]
    if args.procs != 1:
        words += ["--procs", str(args.procs)]
    if args.threads is not None:
        words += ["--threads", str(args.threads)]
    if args.nets:
        words += ["--nets", *args.nets]
    if args.batch_runs != 1:
        words += ["--batch-runs", str(args.batch_runs)]
    words += ["--with-1202"] * args.with_1202 + ["--no-responses"] * args.no_responses + ["--no-tf32"] * args.no_tf32
    words += ["--report-only"] * args.report_only
    words += ["--rerun-changed"] * args.rerun_changed  # it picks the folders (-r1, ...) the runs go to
    return shlex.join(words)
