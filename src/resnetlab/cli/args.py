"""Command-line values checked where argparse reads them, and a parser whose errors are one line.

argparse's own error is the usage block plus a line; ours is one line that names the flag as the
user typed it, what was given and what is allowed, then where the help is (exit status 2)."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from resnetlab.config import cut


class Parser(argparse.ArgumentParser):
    """`add_subparsers` creates parsers of the same class, so every command gets one-line errors."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        raise SystemExit(2)


INT_LIMIT = 2**31 - 1  # no count or size we take is larger (the config's limit too)


def int_at_least(low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (high: at most INT_LIMIT): `type=int_at_least(1)`. A larger one
    (`--batch-size 100000000000000000000`) failed deep inside, e.g. as islice's ValueError."""
    allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{cut(repr(text))} is not {allowed}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{cut(text)} is not {allowed}")
        if value > INT_LIMIT:
            raise argparse.ArgumentTypeError(f"{cut(text)} is too large: at most {INT_LIMIT}")
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
            raise argparse.ArgumentTypeError(f"{cut(repr(text))} is not {allowed}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{cut(text)} is not {allowed}")
        return value

    parse.__name__ = allowed
    return parse


FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".webp")  # matplotlib's


def output_file(suffixes: tuple[str, ...] = ()) -> Callable[[str], str]:
    """A file the command will write, checked before any work (an evaluation of hours must not end
    in "cannot write"): not a folder, ending in one of `suffixes` (any, if none), and in a folder that
    can be written -- the nearest existing one is tried with a nameless temporary file, as permission
    bits do not tell for root, read-only mounts or /proc. Folders still missing are created on writing."""
    allowed = ", ".join(suffixes)

    def parse(text: str) -> str:
        path = Path(text).expanduser()
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name ({allowed or 'any suffix'})")
        if suffixes and path.suffix.lower() not in suffixes:
            raise argparse.ArgumentTypeError(f"{text}: the file name must end in one of {allowed}")
        folder = path.absolute().parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: {folder} is a file, not a folder")
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as e:
            raise argparse.ArgumentTypeError(f"{text}: cannot write in {folder} ({e.strerror or e})") from None
        if path.exists() and not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(f"{text}: the file exists and cannot be written")
        return text

    parse.__name__ = "a file to write"
    return parse


class Overrides(argparse._ExtendAction):
    """`--set KEY=VALUE ...` (several per flag, the flag repeatable), refusing a key typed twice: the
    last would silently win. (`apply_overrides` itself lets a later override win: commands add
    theirs after the user's, e.g. --device's train.device.)"""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        seen: dict[str, str] = {}
        for item in [*(getattr(namespace, self.dest, None) or []), *values]:
            key = item.partition("=")[0].strip()
            if key in seen:
                raise argparse.ArgumentError(
                    self, f"{cut(key, 60)} is given twice ({cut(seen[key], 40)}, then {cut(item, 40)}); give it once"
                )
            seen[key] = item
        super().__call__(parser, namespace, values, option_string)


def pick(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """Flags passed on under their own names: `f(**pick(args, "device", "quiet"))`."""
    return {name: getattr(args, name) for name in names}


def say_for(json_out: bool) -> Callable[[str], None]:
    """Where notes go: stdout, or stderr when stdout carries JSON."""
    return (lambda line: print(line, file=sys.stderr)) if json_out else print


POSITIVE = int_at_least(1)
NON_NEGATIVE = int_at_least(0)


def add_overrides(p: argparse.ArgumentParser, help: str = "config overrides, several per flag") -> None:
    p.add_argument("--set", nargs="+", action=Overrides, default=[], metavar="KEY=VALUE", help=help)


def add_device_and_quiet(p: argparse.ArgumentParser) -> None:
    """--device and --quiet, as every command that runs a model over a set of images takes them."""
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress bar (none is shown off a terminal either)")
