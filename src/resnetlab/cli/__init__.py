"""`resnetlab` command line: one module per subcommand group, each with `register(subparsers)`.

Every handler returns an exit code. Every error is one line on stderr, never a traceback: a bad
flag (argparse) or a `UserError` is `error: <message>`, exit 2; any other exception is
`error: <Type>: <message>` plus how to see the traceback (`--debug` or RESNETLAB_DEBUG=1), exit 1;
Ctrl-C is `interrupted`, exit 130; SIGTERM is `terminated`, exit 143 (training checkpoints first
and says so itself). The rules live in `resnetlab.errors.guarded`, which the worker processes of
`reproduce` apply too; `main` adds the SIGTERM handler that raises `Terminated`.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import signal
import sys
import threading

from resnetlab import __version__
from resnetlab.cli.args import Parser
from resnetlab.errors import DEBUG_ENV, Terminated, UserError, guarded

__all__ = ["DEBUG_ENV", "Terminated", "build_parser", "guarded", "main"]

# Modules under resnetlab.cli, in the order their commands appear in `--help`. Their top level and
# `register` import no torch: `--help` answers at once; each handler imports what it needs.
COMMAND_MODULES = ["info", "train", "config", "evaluate", "analyze", "bench", "detect"]


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


def empty_argument(argv: list[str]) -> str | None:
    """The option (or the place of the argument) given an empty or blank value: `--out ""`,
    `--out=`, a blank image path. Path("") is the working folder, which no one types on purpose."""
    for i, token in enumerate(argv):
        if token.startswith("--") and token.endswith("=") and len(token) > 3:
            return token[:-1]
        if not token.strip():
            before = argv[i - 1] if i else ""
            return before if before.startswith("-") else f"argument {i + 1} of the command line"
    return None


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
        empty = empty_argument(sys.argv[1:] if argv is None else argv)
        if empty:
            raise UserError(f"{empty} is empty; give a path or value (an empty one would mean the working folder)")
        return int(args.func(args) or 0)

    return guarded(command, debug=lambda: bool(getattr(args, "debug", False)))
