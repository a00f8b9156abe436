"""The natural range of every number key, checked once when a config is loaded."""

from __future__ import annotations

import typing
from typing import Any

from resnetlab.config.schema import section_types
from resnetlab.errors import UserError
from resnetlab.utils.text import cut, shown


def require_at_least_one(cfg: Any, keys: list[str]) -> None:
    """UserError for the first `section.key` of `cfg` whose value is below 1 (counts, sizes, periods)."""
    for key in keys:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value < 1:
            raise UserError(f"{key}: must be >= 1, got {value}")


# The loop counters every training config tree has (classification and detection).
TRAIN_COUNTS = [
    "train.batch_size",
    "train.max_iters",
    "train.eval_every",
    "train.checkpoint_every",
    "train.log_every",
    "train.eval_batch_size",
]


class Range(typing.NamedTuple):
    """The values a number key takes: from `low` up to `high` (None: no upper bound), each end
    included unless `*_open`."""

    low: float = 0
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def problem(self, value: float) -> str | None:
        """None when `value` is in range, else what it must be ("> 0", "in [0, 1)", "<= 2147483647")."""
        too_low = value <= self.low if self.low_open else value < self.low
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if not (too_low or too_high):
            return None
        low, high = _number(self.low), _number(self.high)
        if self.high is not None and self.high != INT_LIMIT:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if too_low:
            return f"{'>' if self.low_open else '>='} {low}"
        return f"{'<' if self.high_open else '<='} {high}"


def _number(x: float | None) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


INT_LIMIT = 2**31 - 1  # no count or size of a config is larger; 1e20 would pass `int` and fail deep inside a run

# The natural range of number keys, by `section.key` in every config tree (detection shares the names).
# A number key not listed here, a new one included, must be >= 0 (no count, size, rate or factor of
# either tree is negative); every integer is at most INT_LIMIT, every float finite (`_check`). Sizes,
# processes and depths have a real upper bound: 2**31 - 1 passed and overflowed a tensor's size or
# never ended deep inside a run.
MAX_SIDE = 4096  # pixels: an image side to resize to or crop (the paper's largest is 640, its multi-scale test)
MAX_BATCH = 65536  # the largest batch ResNet-50 has been trained with (Ying et al. 2018: 64k on a TPU pod)
RANGES: dict[str, Range] = {
    **{key: Range(1) for key in TRAIN_COUNTS},
    "train.batch_size": Range(1, MAX_BATCH),
    "train.eval_batch_size": Range(1, MAX_BATCH),
    "train.seed": Range(0, 2**32 - 1),  # what torch and numpy seeding accept
    "model.depth": Range(1, 2000),  # the paper's deepest is 1202
    "model.pool_size": Range(0, 64),  # detection: RoI side (14)
    "model.anchor_sizes": Range(0, MAX_SIDE),
    "data.scale_min": Range(1, MAX_SIDE),
    "data.scale_max": Range(1, MAX_SIDE),
    "data.crop": Range(1, MAX_SIDE),
    "data.min_size": Range(0, MAX_SIDE),  # detection (600)
    "data.max_size": Range(0, MAX_SIDE),  # detection (1000)
    "data.image_size": Range(0, 1024),  # CIFAR recipe: the whole split stays decoded on the device at this side
    "data.pad": Range(0, 256),  # CIFAR recipe: 4 in the paper; a pad past the image's side crops padding only
    "data.workers": Range(0, 256),  # DataLoader processes
    "data.shapes_images": Range(0, 100_000),  # detection's synthetic set, generated in memory
    "data.shapes_size": Range(0, 1024),
    "data.mean_samples": Range(1),
    "optim.lr": Range(0, low_open=True),
    "optim.momentum": Range(0, 1, high_open=True),
    "optim.gamma": Range(0, 1, low_open=True),
    "optim.milestones": Range(1),
    "train.keep_checkpoints": Range(1),
    "optim.plateau_patience": Range(1),
    "optim.warmup_lr": Range(0, low_open=True),
    "optim.warmup_until_error": Range(0, 100),  # a training error in % (0: warm up until the 1st milestone)
    "optim.base_batch_size": Range(1),
}


# String keys that name files: a path (each name in it) or one folder name below data.dir. Checked
# against what a file system holds, so that a name too long is one line here, not ENAMETOOLONG (exit 1)
# deep inside a run.
PATH_KEYS = ("data.dir", "train.init_from", "model.pretrained")
NAME_KEYS = ("data.eval_split",)
NAME_MAX, PATH_MAX = 255, 4095  # bytes (Linux, macOS)


def _name_problem(key: str, value: str) -> str | None:
    names = value.split("/") if key in PATH_KEYS else [value]
    if key in PATH_KEYS and not value.strip():  # "" would be the working folder, and no one means that
        return "must not be empty (leave the key out for its default)"
    if key in NAME_KEYS and ("/" in value or value in ("", ".", "..")):
        return "must be one folder name (no '/', not empty, '.' or '..')"
    if len(value.encode()) > PATH_MAX or any(len(n.encode()) > NAME_MAX for n in names):
        if key in PATH_KEYS:
            return f"must be a path of at most {PATH_MAX} bytes, each name in it at most {NAME_MAX}"
        return f"must be a name of at most {NAME_MAX} bytes"
    return None


def check_ranges(cfg: Any) -> None:
    """UserError for the first number of a config tree (list items included) outside its range
    (`RANGES`, else >= 0; integers at most INT_LIMIT), or the first file name too long for a file
    system (`PATH_KEYS`, `NAME_KEYS`)."""
    for section, section_tp in section_types(type(cfg)).items():
        values = getattr(cfg, section)
        for name, tp in section_types(section_tp).items():
            key, value = f"{section}.{name}", getattr(values, name)
            rng = RANGES.get(key, Range(0))
            if isinstance(value, str) and (key in PATH_KEYS or key in NAME_KEYS):
                problem = _name_problem(key, value)
                if problem:
                    raise UserError(f"{key}: {problem}, got {shown(value)}")
            for v in value if isinstance(value, tuple) else (value,):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    continue
                if isinstance(v, int) and rng.high is None:
                    rng = rng._replace(high=INT_LIMIT, high_open=False)
                problem = rng.problem(v)
                if problem:
                    nullable = type(None) in typing.get_args(tp)
                    raise UserError(f"{key}: must be {problem}{' (or null)' if nullable else ''}, got {cut(str(v))}")
