"""Does the folder hold the run that was asked for (a new run, or `--resume` with the same config)?
And, once the checkpoint is restored, bringing the folder to the iteration the run resumes from."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from resnetlab.config import dump, flat_diff, from_dict, read_yaml, to_dict
from resnetlab.errors import UserError
from resnetlab.utils import checkpoint

# Keys that change where and how a run is carried out or reported, never its result: `reproduce`
# reuses a finished run whose config differs from the requested one in these keys only.
PLACE_KEYS = frozenset(
    {
        "train.device",
        "train.compile",
        "train.compile_mode",
        "train.log_every",
        "train.checkpoint_every",
        "train.keep_checkpoints",
        "train.eval_batch_size",
        "data.dir",
        "data.download",
        "data.workers",
        "data.cache",  # where decoded images are kept changes no result
    }
)
# Keys that may differ between a run and its `--resume`: those above, and how long it runs and how
# often it evaluates. Anything else is a different run.
RESUMABLE_KEYS = PLACE_KEYS | {"train.max_iters", "train.eval_every", "train.eval_max_images"}

# The files of a run: each must be a file where it exists (a folder in its place is one line).
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "final.pt")


def check_folder(cfg: Any, out: Path, resume: bool, device: torch.device | str = "cpu") -> dict[str, Any] | None:
    """UserError unless the folder's state fits the request (new run / --resume); the checkpoint it
    read (on `device`) when it resumes from one, else None."""
    ckpt_path, final = out / "checkpoint.pt", out / "final.pt"
    for name in RUN_FILES:
        if (out / name).exists() and not (out / name).is_file():
            raise UserError(
                f"{out / name} is not a file (a run writes its {name} there); move it away or choose another --out"
            )
    if (out / "tb").exists() and not (out / "tb").is_dir():
        raise UserError(f"{out / 'tb'} is not a folder (a run writes TensorBoard events there); move it away")
    if not resume:
        for path in (ckpt_path, final):
            if path.exists():
                raise UserError(
                    f"{out} already holds a run ({path.name}); pass --resume to continue it or choose another --out"
                )
        return None
    if not ckpt_path.exists():
        if not (out / "config.yaml").is_file():
            raise UserError(f"--resume: {out} holds no run to resume (no checkpoint.pt, no config.yaml)")
        if final.exists():  # a finished run whose checkpoint.pt was removed: starting again would replace it
            raise UserError(
                f"--resume: {out} holds a finished run (final.pt) and no checkpoint.pt to continue from; "
                "choose another --out to train it again"
            )
        compare_configs(read_yaml(out / "config.yaml"), cfg, out)
        return None  # started but never checkpointed: start again from iteration 0
    ckpt = checkpoint.load(ckpt_path, map_location=device)
    if "iteration" not in ckpt or "optimizer" not in ckpt:
        raise UserError(f"{ckpt_path} is a weights file, not a training checkpoint; cannot resume from it")
    reached = int(ckpt["iteration"])
    compare_configs(ckpt["config"], cfg, out, reached=reached)
    if cfg.train.max_iters < reached:
        raise UserError(
            f"--resume: the run in {out} reached iteration {reached}; train.max_iters={cfg.train.max_iters} "
            f"is below it (give train.max_iters >= {reached})"
        )
    return ckpt


def check_branch(cfg: Any, source: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The training checkpoint `source` (another run's) that a new run with `cfg` starts from, read
    on `device`; UserError unless `cfg` is the same run up to the checkpoint's iteration: only
    RESUMABLE_KEYS differ, and optim.milestones where none below that iteration changes."""
    ckpt = checkpoint.load(source, map_location=device)
    if "iteration" not in ckpt or "optimizer" not in ckpt or "config" not in ckpt:
        raise UserError(f"--branch-from: {source} is a weights file, not a training checkpoint; cannot branch from it")
    reached = int(ckpt["iteration"])
    changes = config_diff(ckpt["config"], cfg, reached=reached)
    if changes:
        raise UserError(
            f"--branch-from: {source} (iteration {reached}) is from a different run: {changes} (only "
            f"{changeable(cfg, reached)}, may differ)"
        )
    if cfg.train.max_iters < reached:
        raise UserError(
            f"--branch-from: {source} is at iteration {reached}; train.max_iters={cfg.train.max_iters} is below it"
        )
    return ckpt


def branch_folder(source: Path, out: Path, reached: int) -> None:
    """A new run folder `out` that continues from another run's checkpoint `source` (iteration
    `reached`): the checkpoint as OUT/checkpoint.pt (a hard link), that run's metrics.jsonl rows up to
    `reached` as the start of OUT's. After this the folder is a run that `--resume` continues."""
    rows = source.parent / "metrics.jsonl"
    if rows.is_file():
        truncate_metrics(out / "metrics.jsonl", reached, source=rows)
    checkpoint.link_atomic(source, out / "checkpoint.pt")


def neutral(keys: frozenset[str], cfg: Any) -> frozenset[str]:
    """`keys` less those that shape `cfg`'s lr schedule: train.log_every under a warm-up
    (optim.warmup_lr: it ends at a log, on the training error of that log's window), train.eval_every
    under the plateau schedule (its patience counts evaluations)."""
    optim = getattr(cfg, "optim", None)
    if getattr(optim, "warmup_lr", None) is not None:
        keys = keys - {"train.log_every"}
    if getattr(optim, "schedule", None) == "plateau":
        keys = keys - {"train.eval_every"}
    return keys


def same_lr_until(saved: dict[str, Any], now: dict[str, Any], reached: int) -> bool:
    """Whether two configs' lr schedules gave every iteration before `reached` the same lr, whatever
    their milestones after it: both multistep with the same milestones below `reached` (the first
    one also caps a warm-up). Every other optim key is compared as it is."""
    a, b = saved.get("optim", {}), now.get("optim", {})
    if a.get("schedule") != "multistep" or b.get("schedule") != "multistep":
        return False
    return [m for m in a.get("milestones", ()) if m < reached] == [m for m in b.get("milestones", ()) if m < reached]


def config_diff(
    saved: dict[str, Any], cfg: Any, *, allowed: frozenset[str] = RESUMABLE_KEYS, reached: int | None = None
) -> str | None:
    """None if the stored config `saved` and `cfg` agree outside `allowed`, else the differences in
    one line: `optim.lr: 0.1 there, 0.2 now; train.seed: 0 there, 3 now`. With `reached` (the
    iteration a checkpoint of `saved` reached), optim.milestones may differ too where the lr of every
    iteration before it stays the same: the run continues on another schedule from there."""
    try:  # through the loader: old key names migrate, keys added since take their defaults
        saved = to_dict(from_dict(saved, base=type(cfg)()))
    except UserError:
        pass  # a key that no longer exists: compare as stored (it shows in the diff)
    allowed = neutral(allowed, cfg)
    if reached is not None and same_lr_until(saved, to_dict(cfg), reached):
        allowed |= {"optim.milestones"}
    diff = [(k, a, b) for k, a, b in flat_diff(saved, to_dict(cfg)) if k not in allowed]
    return "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diff) or None


def compare_configs(saved: dict[str, Any], cfg: Any, out: Path, reached: int | None = None) -> None:
    """UserError with a one-line diff if `saved` and `cfg` differ outside RESUMABLE_KEYS (and, from a
    checkpoint at `reached`, optim.milestones where the lr before it stays the same)."""
    changes = config_diff(saved, cfg, reached=reached)
    if changes:
        raise UserError(
            f"{out} holds a different run: {changes} (on --resume only {changeable(cfg, reached)} may change; "
            "choose another --out for a new run)"
        )


def changeable(cfg: Any, reached: int | None) -> str:
    """The keys `config_diff` lets differ, as a refusal names them: RESUMABLE_KEYS for `cfg`, and from a
    checkpoint at `reached` optim.milestones with its condition."""
    keys = ", ".join(sorted(neutral(RESUMABLE_KEYS, cfg)))
    return keys if reached is None else f"{keys}, and optim.milestones where none below {reached} changes"


def prepare_folder(cfg: Any, out: Path, start_iter: int) -> None:
    """config.yaml, metrics.jsonl up to `start_iter`, no final.pt unless the run is already done, no
    temp file of a killed checkpoint write."""
    kept = tuple(f"checkpoint-{n}.pt" for n in cfg.train.keep_checkpoints)
    checkpoint.remove_stale_temps(out, ("checkpoint.pt", "final.pt", *kept))
    tmp = out / ".config.yaml.tmp"
    dump(cfg, tmp)
    os.replace(tmp, out / "config.yaml")
    truncate_metrics(out / "metrics.jsonl", start_iter)
    if start_iter < cfg.train.max_iters:
        (out / "final.pt").unlink(missing_ok=True)


def truncate_metrics(path: Path, upto_iter: int, source: Path | None = None) -> None:
    """Drop rows logged after iteration `upto_iter` (they will be redone), and any torn last line;
    with `source`, `path` becomes `source`'s rows up to `upto_iter` (a branch's start)."""
    source = source or path
    if not source.exists():
        return
    keep = []
    for line in source.read_text().splitlines():
        try:
            if json.loads(line)["iter"] <= upto_iter:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line half-written when the process died
    tmp = path.with_name(f".{path.name}.tmp")  # a kill while writing leaves the rows as they were
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
