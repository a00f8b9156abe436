"""A grid of the paper as jobs: one `Job` per (network, seed), with its resolved config and folder.

A grid is a list of (kind, depth) networks (`grids.GRIDS`), trained once per seed from the
`configs/cifar10-*.yaml` presets with overrides (dataset, schedule, device, seed). Each run has its own
folder `OUT/<kind><depth>-seed<s>/`: a finished run (`final.pt`) is reused only when its stored config
equals the requested one (outside `lifecycle.PLACE_KEYS`: device, data.dir, workers, ...), one with
only `checkpoint.pt` is resumed, so re-running the same command after an interruption finishes the
grid. A folder holding a run of another recipe is refused with the diff, or, with
`rerun_changed=True`, the run goes to a fresh folder `<kind><depth>-seed<s>-r1` (`-r2`, ...).

Schedules: "paper" is the paper's (lr / 10 at 32k and 48k, stop at 64k). "short" keeps its shape
(milestones at 1/2 and 3/4 of the run) over `iters` iterations, 1/10 of the paper's (6.4k) by default.

Data: a built-in dataset by name, or `imagefolder` with `data_dir` (train/<class>/ + test/ or val/),
trained with the CIFAR recipe (`data.recipe=cifar`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from resnetlab.config import Config, apply_overrides, list_presets, load_config, read_yaml
from resnetlab.errors import UserError
from resnetlab.runner.grids import DATASETS, GRIDS, PAPER_ITERS, PAPER_MILESTONES, SHORT_FACTOR
from resnetlab.train.lifecycle import PLACE_KEYS, config_diff


def schedule(name: str, iters: int | None = None) -> tuple[tuple[int, ...], int]:
    """(milestones, max_iters): the paper's, or the same shape scaled to `iters` iterations."""
    if name == "paper" and iters is None:
        return PAPER_MILESTONES, PAPER_ITERS
    total = iters if iters is not None else PAPER_ITERS // SHORT_FACTOR
    if total < 4:
        raise UserError(f"--iters must be at least 4, got {total}")
    # 32k/64k = 1/2 and 48k/64k = 3/4 of the run.
    return (round(total * PAPER_MILESTONES[0] / PAPER_ITERS), round(total * PAPER_MILESTONES[1] / PAPER_ITERS)), total


@dataclass(frozen=True)
class Job:
    kind: str
    depth: int
    seed: int
    out_dir: Path
    cfg: Config

    @property
    def name(self) -> str:
        return self.out_dir.name

    def changed(self) -> str | None:
        """The one-line diff between the folder's stored config and this job's, if it holds a run of
        another recipe (None for the same recipe or an empty folder)."""
        stored = self.out_dir / "config.yaml"
        if not stored.is_file():
            return None
        return config_diff(read_yaml(stored), self.cfg, allowed=PLACE_KEYS)

    def state(self) -> str:
        """`other` (the folder holds a run of another recipe), `done` (final.pt), `resume`
        (checkpoint.pt, or a started run that never checkpointed: `run_training(resume=True)` starts
        it again in place) or `new`."""
        if self.changed():
            return "other"
        if (self.out_dir / "final.pt").is_file():
            return "done"
        if (self.out_dir / "checkpoint.pt").is_file() or (self.out_dir / "config.yaml").is_file():
            return "resume"
        return "new"

    def checkpoint(self, state: str | None = None) -> tuple[int | None, float | None]:
        """(iteration, training seconds) of the folder's checkpoint.pt: (0, None) when the job is new or
        never checkpointed, (None, None) when that checkpoint cannot be read (its own resume then says
        what is wrong). `state` spares a second config read when the caller has it."""
        ckpt = self.out_dir / "checkpoint.pt"
        if (state or self.state()) == "new" or not ckpt.is_file():
            return 0, None
        from resnetlab.utils.checkpoint import load  # torch

        try:
            saved = load(ckpt)
            return int(saved["iteration"]), float(saved.get("elapsed", 0.0)) or None
        except (UserError, KeyError, TypeError, ValueError):
            return None, None

    def start_iteration(self) -> int | None:
        """The iteration this job would start from (`checkpoint`)."""
        return self.checkpoint()[0]

    def cost(self) -> int:
        """Work left, in layer-iterations: depth x the iterations still to train. A CIFAR network's
        time per iteration grows with its depth (every stage has the same FLOPs per block)."""
        start = self.start_iteration() or 0
        return self.depth * max(0, self.cfg.train.max_iters - start)


def base_config(kind: str, depth: int) -> Config:
    """The preset `cifar10-<kind><depth>`, else the nearest one with the model swapped."""
    presets = set(list_presets())
    name = f"cifar10-{kind}{depth}"
    if name in presets:
        return load_config(name)
    for fallback in (f"cifar10-resnet{depth}", "cifar10-resnet20", "cifar10"):
        if fallback in presets:
            cfg = load_config(fallback, [f"model.name=cifar_{kind}{depth}"])
            if depth >= 110 and cfg.optim.warmup_lr is None:
                cfg = apply_overrides(cfg, ["optim.warmup_lr=0.01"])  # sec. 4.2: warm-up for 110/1202
            return cfg
    raise UserError(f"no configs/cifar10-*.yaml preset found for {name}; presets: {', '.join(sorted(presets))}")


def plan(
    grid: str,
    *,
    out: str | Path,
    seeds: int = 1,
    dataset: str = "cifar10",
    schedule_name: str = "paper",
    iters: int | None = None,
    eval_every: int | None = None,
    device: str = "auto",
    with_1202: bool = False,
    overrides: list[str] | None = None,
    config_fn: Callable[[str, int], Config] = base_config,
    rerun_changed: bool = False,
    data_dir: str | Path | None = None,
    nets: list[str] | None = None,
) -> list[Job]:
    """Every run of grid `grid`, in the grid's order, with its resolved config and folder (nothing is
    started). `rerun_changed`: a job whose folder holds a run of another recipe moves to `<folder>-rN`,
    the first such folder that is free or holds this recipe. `data_dir`: data.dir (required for
    `imagefolder`, which also gets the CIFAR recipe and the folder's evaluation split). `nets`: only
    these networks of the grid (`<kind><depth>`, e.g. resnet20), in the grid's order."""
    if grid not in GRIDS:
        raise UserError(f"unknown experiment {grid!r}; choose from {', '.join(GRIDS)}")
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    data = data_overrides(dataset, data_dir)
    if any(o.startswith("data.val_split=") and o.split("=", 1)[1].strip() != "0" for o in overrides or []):
        data = [o for o in data if not o.startswith("data.eval_split=")]  # the error is on held-out training images
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1, got {seeds}")
    networks = GRIDS[grid] + ([("resnet", 1202)] if grid == "table6" and with_1202 else [])
    if nets is not None:
        names = [f"{kind}{depth}" for kind, depth in networks]
        unknown = [n for n in nets if n not in names]
        if unknown:
            raise UserError(f"--nets {' '.join(unknown)}: not in {grid}, whose networks are {', '.join(names)}")
        networks = [net for net, name in zip(networks, names) if name in nets]
    milestones, total = schedule(schedule_name, iters)
    # The paper evaluates often enough for smooth curves; a short run keeps ~16 points per curve.
    every = eval_every or (1000 if total == PAPER_ITERS else max(1, total // 16))
    jobs = []
    for kind, depth in networks:
        for seed in range(seeds):
            cfg = apply_overrides(
                config_fn(kind, depth),
                [
                    *data,
                    f"optim.milestones=[{milestones[0]}, {milestones[1]}]",
                    f"train.max_iters={total}",
                    f"train.eval_every={every}",
                    f"train.checkpoint_every={every}",
                    f"train.seed={seed}",
                    f"train.device={device}",
                    *(overrides or []),
                ],
            )
            job = Job(kind, depth, seed, Path(out) / f"{kind}{depth}-seed{seed}", cfg)
            base, n = job.out_dir, 0
            while rerun_changed and job.state() == "other":
                n += 1
                job = dataclasses.replace(job, out_dir=base.with_name(f"{base.name}-r{n}"))
            jobs.append(job)
    return jobs


def data_overrides(dataset: str, data_dir: str | Path | None) -> list[str]:
    """The `data.*` overrides of `--dataset` / `--data-dir`. An ImageFolder trains with the CIFAR recipe
    (the grids are CIFAR networks: on-device per-pixel mean, pad 4 + crop + flip) and is evaluated on
    its test/ split (CIFAR-10's JPEG folder; the 45k/5k protocol is `data.val_split=5000`), else on val/."""
    if data_dir is None:
        if dataset == "imagefolder":
            raise UserError("--dataset imagefolder needs --data-dir DIR (DIR/train/<class>/ and DIR/test/<class>/)")
        return [f"data.name={dataset}"]
    folder = Path(data_dir)
    if dataset != "imagefolder":
        return [f"data.name={dataset}", f"data.dir={folder}"]
    if not (folder / "train").is_dir():
        raise UserError(f"--data-dir {folder}: no train/ folder (an ImageFolder is DIR/train/<class>/*.jpg + test/)")
    split = "test" if (folder / "test").is_dir() else "val" if (folder / "val").is_dir() else None
    if split is None:
        raise UserError(f"--data-dir {folder}: neither test/ nor val/ beside train/ (the evaluation split)")
    return ["data.name=imagefolder", f"data.dir={folder}", "data.recipe=cifar", f"data.eval_split={split}"]
