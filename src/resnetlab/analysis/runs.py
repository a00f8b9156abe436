"""Reading training runs: a run folder's `config.yaml` (what model) and `metrics.jsonl` (its curve)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from resnetlab.config import read_yaml
from resnetlab.errors import UserError

# cifar_resnet20, cifar_plain56, resnet50, plain34, and the generic cifar_resnet / cifar_plain (+ depth).
_NAME = re.compile(r"^(?:cifar_)?(resnet|plain)(\d*)$")


def parse_model_name(name: str, depth: int | None = None) -> tuple[str, int]:
    """`"cifar_plain56"` -> `("plain", 56)`; `"cifar_resnet"` takes its depth from `depth`."""
    m = _NAME.match(name)
    if not m or not (m.group(2) or depth):
        raise UserError(f"cannot tell plain/residual and depth from model name {name!r}")
    return m.group(1), int(m.group(2) or depth)  # type: ignore[arg-type]


def model_label(kind: str, depth: int) -> str:
    """The paper's names: "ResNet-56", "plain-20"."""
    return f"ResNet-{depth}" if kind == "resnet" else f"plain-{depth}"


@dataclass(frozen=True)
class RunRecord:
    """A training run folder as analysis reads it: which network, and its evaluations."""

    path: Path
    kind: str  # "resnet" | "plain"
    depth: int
    metrics: list[dict]  # one dict per evaluation, in iteration order

    @property
    def label(self) -> str:
        return model_label(self.kind, self.depth)

    @property
    def final_test_error(self) -> float:
        return float(self.metrics[-1]["test_error"])

    @property
    def final_train_error(self) -> float | None:
        value = self.metrics[-1].get("train_error")
        return None if value is None else float(value)


def read_metrics(path: Path) -> list[dict]:
    """The evaluations of `metrics.jsonl`, sorted by iteration; a resumed run's repeats keep the last.
    A last line without its newline that is not JSON is a line a killed run was writing: left out (the
    run's resume truncates it), as `runner.status` does; a bad line anywhere else is a UserError."""
    rows: dict[int, dict] = {}
    text = path.read_text()
    lines = text.splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines) and not text.endswith("\n"):
                break
            raise UserError(f"{path}:{n}: not a JSON line") from None
        if "iter" not in row or "test_error" not in row:
            continue  # not an evaluation record
        rows[int(row["iter"])] = row
    return [rows[k] for k in sorted(rows)]


def load_run(run_dir: str | Path) -> RunRecord:
    run_dir = Path(run_dir)
    metrics_path, config_path = run_dir / "metrics.jsonl", run_dir / "config.yaml"
    if not metrics_path.is_file():
        raise UserError(f"{run_dir}: no metrics.jsonl (not a training run folder, or not started)")
    if not config_path.is_file():
        raise UserError(f"{run_dir}: no config.yaml")
    model = read_yaml(config_path).get("model") or {}
    kind, depth = parse_model_name(str(model.get("name", "")), model.get("depth"))
    metrics = read_metrics(metrics_path)
    if not metrics:
        raise UserError(f"{metrics_path}: no evaluations yet")
    return RunRecord(run_dir, kind, depth, metrics)
