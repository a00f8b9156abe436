"""The progress bars of the commands that run long: over an iterable (evaluate, predict, analyze
responses, reproduce) and over training steps (train, detect train; loss and lr as its postfix).

tqdm on stderr, shown only when stderr is a terminal and the user did not ask for `--quiet`: a log
file or a pipe gets no bar characters.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def shown(quiet: bool = False) -> bool:
    return not quiet and sys.stderr.isatty()


def progress(
    iterable: Iterable[T], *, total: int | None = None, desc: str | None = None, quiet: bool = False, unit: str = "it"
) -> Iterator[T]:
    """`iterable`, with a bar when `shown(quiet)`."""
    if not shown(quiet):
        return iter(iterable)
    return iter(tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True, file=sys.stderr))


class _StepBar(tqdm):
    """tqdm whose `n` counts the steps when the bar is hidden too (a disabled tqdm stops counting)."""

    def update(self, n: float | None = 1) -> bool | None:
        if self.disable:
            self.n += n or 0
            return None
        return super().update(n)


def step_bar(total: int, *, initial: int = 0, desc: str | None = None, quiet: bool = False) -> tqdm:
    """A bar that the caller `update`s; hidden (drawing nothing, `write` still prints to stdout, `n`
    still counts) when not `shown(quiet)`."""
    return _StepBar(
        total=total,
        initial=initial,
        desc=desc,
        disable=not shown(quiet),
        unit="it",
        dynamic_ncols=True,
        mininterval=0.1,
        file=sys.stderr,
    )
