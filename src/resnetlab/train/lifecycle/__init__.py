"""A training run's life in its folder, the same for every loop (`train`, `detect train`, `reproduce`).

`open_run(cfg, out, resume=...)` claims and locks the folder (`claim`), checks that it holds the run
asked for (`resume`), and hands the loop a `Run` (`run`): what to restore, what is due after each step,
the stop on SIGINT / SIGTERM agreed across ranks (`signals`), every rank's random state (`rng`).
What it guarantees, in order, and a loop's shape: "Nothing lost" in docs/train.md.
"""

from resnetlab.train.lifecycle.resume import PLACE_KEYS, RESUMABLE_KEYS, compare_configs, config_diff, truncate_metrics
from resnetlab.train.lifecycle.rng import seed_everything
from resnetlab.train.lifecycle.run import (
    Due,
    NonFiniteLoss,
    Run,
    open_run,
    progress_bar,
    resume_command,
    start_branch,
)

__all__ = [
    "PLACE_KEYS",
    "RESUMABLE_KEYS",
    "Due",
    "NonFiniteLoss",
    "Run",
    "compare_configs",
    "config_diff",
    "open_run",
    "progress_bar",
    "resume_command",
    "seed_everything",
    "start_branch",
    "truncate_metrics",
]
