"""The one progress bar of the commands that run long (evaluate, predict, analyze responses, reproduce).

tqdm on stderr, shown only when stderr is a terminal and the user did not ask for `--quiet`: a log
file or a pipe gets no bar characters. (The training loop has its own bar with loss and lr.)
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
