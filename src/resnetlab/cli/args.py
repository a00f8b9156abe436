"""Command-line values checked where argparse reads them, and a parser whose errors are one line.

argparse's own error is the usage block plus a line; ours is one line that names the flag as the
user typed it, what was given and what is allowed, then where the help is (exit status 2)."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """`add_subparsers` creates parsers of the same class, so every command gets one-line errors."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high]: `type=int_at_least(1)`."""
    allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} is not {allowed}")
        return value

    parse.__name__ = allowed  # argparse names the type in some messages
    return parse


def float_in(low: float, high: float) -> Callable[[str], float]:
    """A finite number in [low, high]."""
    allowed = f"a number from {low:g} to {high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {allowed}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is not {allowed}")
        return value

    parse.__name__ = allowed
    return parse


POSITIVE = int_at_least(1)
NON_NEGATIVE = int_at_least(0)


def add_device_and_quiet(p: argparse.ArgumentParser) -> None:
    """--device and --quiet, as every command that runs a model over a set of images takes them."""
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar (none is shown off a terminal either)")
