"""Step timing: per-step wall times after warm-up, and their median and spread.

On CUDA every step boundary is a CUDA event recorded on the stream; the host synchronises once, after
the last step, and reads the intervals between consecutive events (airbench's way: the GPU timeline,
no sync inside the loop). On CPU the boundaries are `time.perf_counter()` readings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch


class PerfClock:
    """Host wall clock: a mark is a `perf_counter()` reading."""

    def mark(self) -> float:
        return time.perf_counter()

    def intervals(self, marks: Sequence[float]) -> list[float]:
        return [b - a for a, b in zip(marks, marks[1:])]


class CudaClock:
    """A mark is a CUDA event recorded on the current stream; `intervals` synchronises once."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        return event

    def intervals(self, marks: Sequence[torch.cuda.Event]) -> list[float]:
        marks[-1].synchronize()
        return [a.elapsed_time(b) / 1000.0 for a, b in zip(marks, marks[1:])]  # ms -> s


def make_clock(device: torch.device) -> PerfClock | CudaClock:
    return CudaClock(device) if device.type == "cuda" else PerfClock()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    step: Callable[[], object], *, iters: int, warmup: int, clock: PerfClock | CudaClock, device: torch.device
) -> list[float]:
    """Run `step` warmup + iters times; return the `iters` timed step durations in seconds.

    The warm-up steps (compilation, allocator growth, cuDNN autotuning, a DataLoader filling its
    queue) run before the first mark, so none of them is in the result.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"need iters >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    for _ in range(warmup):
        step()
    synchronize(device)  # warm-up work still queued on the GPU must not land in the first step
    marks = [clock.mark()]
    for _ in range(iters):
        step()
        marks.append(clock.mark())
    return clock.intervals(marks)


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default, `statistics` 'inclusive')."""
    if not sorted_values:
        raise ValueError("no values")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class StepStats:
    """Summary of per-step times in seconds: median and spread (min/max and the quartiles)."""

    n: int
    median: float
    mean: float
    min: float
    max: float
    q1: float
    q3: float

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "iqr": self.iqr}


def summarize(times: Sequence[float]) -> StepStats:
    s = sorted(times)
    return StepStats(
        n=len(s),
        median=quantile(s, 0.5),
        mean=sum(s) / len(s),
        min=s[0],
        max=s[-1],
        q1=quantile(s, 0.25),
        q3=quantile(s, 0.75),
    )
