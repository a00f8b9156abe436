"""A fake clock for the timing and harness tests: nothing in them is timed for real."""

from __future__ import annotations


class FakeClock:
    """A clock that only moves when a fake step says how long it took (the `clock` that
    resnetlab.bench.timing.time_steps takes: mark() and intervals())."""

    def __init__(self) -> None:
        self.now = 0.0

    def mark(self) -> float:
        return self.now

    def intervals(self, marks):
        return [b - a for a, b in zip(marks, marks[1:])]
