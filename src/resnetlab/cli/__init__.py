"""`resnetlab` command line: one module per subcommand group, each with `register(subparsers)`.

Every handler returns an exit code. Every error is one line on stderr, never a traceback: a bad
flag (argparse) or a `UserError` is `error: <message>`, exit 2; any other exception is
`error: <Type>: <message>` plus how to see the traceback (`--debug` or RESNETLAB_DEBUG=1), exit 1;
Ctrl-C is `interrupted`, exit 130; SIGTERM is `terminated`, exit 143 (training checkpoints first
and says so itself).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import re
import signal
import sys
import threading
from collections.abc import Callable

from resnetlab import __version__
from resnetlab.cli.args import Parser
from resnetlab.errors import UserError
from resnetlab.utils.text import printable

# Modules under resnetlab.cli, in the order their commands appear in `--help`. Their top level and
# `register` import no torch: `--help` answers at once; each handler imports what it needs.
COMMAND_MODULES = ["info", "train", "config", "evaluate", "analyze", "bench", "detect"]


DEBUG_ENV = "RESNETLAB_DEBUG"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="resnetlab",
        description="Deep Residual Learning (He et al., 2015): models, training, test protocols, analyses.",
    )
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help=f"show the traceback of an unexpected error (or set {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"resnetlab.cli.{name}").register(sub)
    return parser


def _one_line(e: BaseException) -> str:
    """The message on one line, its lines joined by spaces and every other character a terminal would
    act on written escaped (`printable`: ESC as \\x1b), not removed: a path typed with an escape in it
    must not be shown as another path, one that may exist. An error re-raised from a DataLoader
    worker carries the worker's traceback: only its last line is kept, without its type (the type is
    the same, and the caller names it)."""
    text = str(e)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = re.sub(rf"^(?:[\w.]*\.)?(?:UserError|{re.escape(type(e).__name__)}): ", "", last)
    return printable(" ".join(text.split())) or type(e).__name__


class Terminated(BaseException):
    """SIGTERM (what `kill` and job schedulers send) arrived: unwinds like Ctrl-C's KeyboardInterrupt,
    so `finally` blocks and temp-file clean-ups run, then `main` says so in one line."""


def _terminate(signum: int, frame: object, *, owner: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    if os.getpid() != owner:  # a forked worker (DataLoader): die as SIGTERM says, without a traceback
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    installed = threading.current_thread() is threading.main_thread()  # only there can Python set handlers
    if installed:
        previous = signal.signal(signal.SIGTERM, functools.partial(_terminate, owner=os.getpid()))
    try:
        return _main(argv)
    finally:
        if installed:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _main(argv: list[str] | None) -> int:
    args = None

    def command() -> int:
        nonlocal args
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)

    return guarded(command, debug=lambda: bool(getattr(args, "debug", False)))


def guarded(command: Callable[[], int], debug: Callable[[], bool] = lambda: False) -> int:
    """`command()`'s exit code, every error one line on stderr (the module docstring's rules), also in
    the processes `resnetlab` starts (`python -m resnetlab.analysis.worker`). The traceback of an
    unexpected error is shown when `debug()` (`--debug`) or RESNETLAB_DEBUG is set."""
    try:
        return command()
    except UserError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except Exception as e:  # the last resort: a bug or a case nobody checked, still one line
        if debug() or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        print(
            f"error: {type(e).__name__}: {_one_line(e)[:500]} (unexpected; `resnetlab --debug ...` or "
            f"{DEBUG_ENV}=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1
