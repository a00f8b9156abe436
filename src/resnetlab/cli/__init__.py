"""`resnetlab` command line: one module per subcommand group, each with `register(subparsers)`.

Every handler returns an exit code; a `UserError` becomes `error: <message>` on stderr, exit 2,
with no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from resnetlab import __version__
from resnetlab.errors import UserError

# Modules under resnetlab.cli, in the order their commands appear in `--help`. Their top level and
# `register` import no torch: `--help` answers at once; each handler imports what it needs.
COMMAND_MODULES = ["info", "train", "config", "evaluate", "analyze", "bench", "detect"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="resnetlab",
        description="Deep Residual Learning (He et al., 2015): models, training, test protocols, analyses.",
    )
    parser.add_argument("--version", action="version", version=f"resnetlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"resnetlab.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
