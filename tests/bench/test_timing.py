"""Step timing and its statistics, on injected fake timings (nothing here is timed for real)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest
import torch

from resnetlab.bench.timing import summarize, time_steps

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fakes import FakeClock  # noqa: E402


def scripted_steps(clock: FakeClock, durations: list[float]):
    calls = []

    def step():
        clock.now += durations[len(calls)]
        calls.append(1)

    return step, calls


def test_warmup_steps_are_not_timed():
    clock = FakeClock()
    durations = [100.0, 50.0, 25.0] + [1.0, 2.0, 3.0, 4.0]  # three slow warm-up steps first
    step, calls = scripted_steps(clock, durations)
    times = time_steps(step, iters=4, warmup=3, clock=clock, device=torch.device("cpu"))
    assert len(calls) == 7
    assert times == [1.0, 2.0, 3.0, 4.0]


def test_no_warmup_times_every_step():
    clock = FakeClock()
    step, _ = scripted_steps(clock, [7.0, 1.0])
    assert time_steps(step, iters=2, warmup=0, clock=clock, device=torch.device("cpu")) == [7.0, 1.0]


def test_rejects_no_timed_steps():
    with pytest.raises(ValueError):
        time_steps(lambda: None, iters=0, warmup=1, clock=FakeClock(), device=torch.device("cpu"))


def test_summary_odd_count_by_hand():
    s = summarize([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s.n, s.median, s.min, s.max, s.q1, s.q3, s.mean) == (5, 3.0, 1.0, 5.0, 2.0, 4.0, 3.0)
    assert s.iqr == 2.0


@pytest.mark.parametrize(
    "times",
    [
        [0.31, 0.29, 0.5, 0.30, 0.33, 0.28],
        [1.0, 9.0],
        [0.2] * 7,
        [3.0, 1.0, 2.0, 10.0, 4.0, 6.0, 5.0, 8.0, 7.0, 9.0, 0.5],
    ],
)
def test_summary_matches_statistics_module(times):
    s = summarize(times)
    q1, q2, q3 = statistics.quantiles(times, n=4, method="inclusive")
    assert s.median == pytest.approx(statistics.median(times))
    assert s.median == pytest.approx(q2)
    assert (s.q1, s.q3) == (pytest.approx(q1), pytest.approx(q3))
    assert (s.min, s.max) == (min(times), max(times))
    assert s.mean == pytest.approx(statistics.fmean(times))
    assert s.to_dict()["iqr"] == pytest.approx(q3 - q1)
