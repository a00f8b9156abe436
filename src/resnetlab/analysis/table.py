"""Table 6 of the paper, and ours beside it: test error as "best (mean +- std)" over seeds.

The paper reports ResNet-110 as "6.43 (6.61+-0.16)": best of 5 runs, then mean and std of the 5.
It does not say which std; we use the sample std (n - 1 in the denominator), and print only the
best when there is a single run.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

# Table 6 (CIFAR-10 test error %, params in millions), by depth of the residual network.
PAPER_TABLE6: dict[int, tuple[str, float]] = {
    20: ("8.75", 0.27),
    32: ("7.51", 0.46),
    44: ("7.17", 0.66),
    56: ("6.97", 0.85),
    110: ("6.43 (6.61 ± 0.16)", 1.7),
    1202: ("7.93", 19.4),
}


def best_mean_std(errors: list[float]) -> tuple[float, float, float | None]:
    """(best, mean, sample std or None for a single run) of test errors in percent."""
    if not errors:
        raise ValueError("no errors to summarise")
    std = statistics.stdev(errors) if len(errors) > 1 else None
    return min(errors), statistics.fmean(errors), std


def format_best_mean_std(errors: list[float], digits: int = 2) -> str:
    """`[6.43, 6.6, 6.8]` -> `"6.43 (6.61 ± 0.19)"`; one run -> `"6.43"`."""
    best, mean, std = best_mean_std(errors)
    if std is None:
        return f"{best:.{digits}f}"
    return f"{best:.{digits}f} ({mean:.{digits}f} ± {std:.{digits}f})"


@dataclass(frozen=True)
class Row:
    label: str  # "ResNet-56"
    kind: str  # "resnet" | "plain"
    depth: int
    params: int
    errors: tuple[float, ...]  # final test error (%) of each seed
    train_errors: tuple[float, ...] = ()  # final training error (%) of each seed

    def paper(self) -> tuple[str, str]:
        """The paper's (error, params) beside ours; plain nets are only in fig. 6, not in a table."""
        if self.kind != "resnet" or self.depth not in PAPER_TABLE6:
            return "–", "–"
        error, params = PAPER_TABLE6[self.depth]
        return error, f"{params}M"


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def to_markdown(rows: list[Row], *, dataset: str, eval_set: str = "test") -> str:
    """`eval_set`: what the errors were measured on ("test", or e.g. "held-out 2000 training images")."""
    header = (
        f"| method | # layers | # params | seeds | train error (%) | {eval_set} error (%) on {dataset}, "
        "best (mean ± std) | paper: CIFAR-10 test error (%) | paper # params |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        paper_error, paper_params = r.paper()
        train = format_best_mean_std(list(r.train_errors)) if r.train_errors else "–"
        lines.append(
            f"| {r.label} | {r.depth} | {_millions(r.params)} | {len(r.errors)} | {train} | "
            f"{format_best_mean_std(list(r.errors))} | {paper_error} | {paper_params} |"
        )
    return "\n".join(lines) + "\n"


def write_csv(rows: list[Row], path: str | Path) -> None:
    from resnetlab.utils.files import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "kind", "depth", "params", "seeds", "best", "mean", "std", "train_error_mean", "paper"])
        for r in rows:
            best, mean, std = best_mean_std(list(r.errors))
            train = f"{statistics.fmean(r.train_errors):.4f}" if r.train_errors else ""
            w.writerow(
                [
                    r.label,
                    r.kind,
                    r.depth,
                    r.params,
                    len(r.errors),
                    f"{best:.4f}",
                    f"{mean:.4f}",
                    "" if std is None else f"{std:.4f}",
                    train,
                    r.paper()[0] if r.paper()[0] != "–" else "",
                ]
            )
