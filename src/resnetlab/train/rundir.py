"""The run folder and the state that makes `--resume` exact: folder checks, RNG states, metrics."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from resnetlab.config import Config, to_dict
from resnetlab.errors import UserError
from resnetlab.utils import checkpoint

# Keys that may differ between a run and its `--resume` (they do not change what is learned).
RESUMABLE_KEYS = {
    "train.max_iters",
    "train.eval_every",
    "train.checkpoint_every",
    "train.log_every",
    "train.device",
    "train.compile",
    "train.eval_batch_size",
    "data.dir",
    "data.download",
    "data.workers",
}
RUN_FILES = ("config.yaml", "checkpoint.pt", "final.pt", "metrics.jsonl")


def open_run(cfg: Config, out: Path, resume: bool) -> dict[str, Any] | None:
    """Check `out` against `resume`; return the checkpoint to continue from, if any."""
    if not resume:
        existing = [name for name in RUN_FILES if (out / name).exists()]
        if existing:
            raise UserError(
                f"{out} already holds a run ({existing[0]}); pass --resume to continue it or choose another --out"
            )
        return None
    path = out / "checkpoint.pt"
    if not path.exists():
        if not (out / "config.yaml").is_file():
            raise UserError(f"--resume: {out} holds no run to resume (no checkpoint.pt, no config.yaml)")
        check_same_run(read_yaml(out / "config.yaml"), cfg, out)
        return None  # started but never checkpointed: start again from iteration 0
    ckpt = checkpoint.load(path)
    if "iteration" not in ckpt or "optimizer" not in ckpt:
        raise UserError(f"{path} is a weights file, not a training checkpoint; cannot resume from it")
    check_same_run(ckpt["config"], cfg, out)
    return ckpt


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"{path}: not valid YAML") from None


def check_same_run(saved: dict[str, Any], cfg: Config, out: Path) -> None:
    def flat(d: dict[str, Any]) -> dict[str, Any]:
        return {f"{s}.{k}": v for s, sec in d.items() if isinstance(sec, dict) for k, v in sec.items()}

    old, new = flat(saved), flat(to_dict(cfg))
    for key in sorted(set(old) | set(new)):
        if key not in RESUMABLE_KEYS and old.get(key) != new.get(key):
            raise UserError(
                f"{out} holds a different run: {key} is {old.get(key)!r} there, {new.get(key)!r} now "
                "(resume with the run's own settings, or choose another --out)"
            )


def truncate_metrics(path: Path, upto_iter: int) -> None:
    """Drop evaluations logged after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["iter"] <= upto_iter]
    path.write_text("".join(line + "\n" for line in keep))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    try:
        import numpy as np

        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = (name, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached)
    except ImportError:
        pass
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    if "numpy" in state:
        import numpy as np

        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))
