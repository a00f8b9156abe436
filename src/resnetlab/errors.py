"""The exceptions the CLI turns into one line and an exit code, and `guarded`, which does it.

The rules (also in every process `resnetlab` starts, e.g. `python -m resnetlab.runner.worker`): a
`UserError` is `error: <message>`, exit 2; any other exception is `error: <Type>: <message>` plus how
to see the traceback (`--debug` or RESNETLAB_DEBUG=1), exit 1; Ctrl-C is `interrupted`, exit 130;
SIGTERM (`Terminated`) is `terminated`, exit 143. Kept below the CLI (standard library only) so that
any layer can raise these and any process can apply the rules without importing `resnetlab.cli`.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable

from resnetlab.utils.text import printable

DEBUG_ENV = "RESNETLAB_DEBUG"


class UserError(Exception):
    """Bad input from the user: a config value, a file, a dataset. The message says what and where."""


class Terminated(BaseException):
    """SIGTERM (what `kill` and job schedulers send) arrived: unwinds like Ctrl-C's KeyboardInterrupt,
    so `finally` blocks and temp-file clean-ups run, then `guarded` says so in one line."""


def one_line(e: BaseException) -> str:
    """The message on one line, every character a terminal would act on written escaped (`printable`:
    ESC as \\x1b), not removed: a path typed with an escape in it must not be shown as another path,
    one that may exist. A `UserError`'s message is ours, one line by construction, so a line break in it
    is part of a name the user gave and is escaped too (`no\\nck.pt`); where it quotes another
    library's message it quotes `one_line(that error)`. Any other error's lines are joined by spaces. An
    error re-raised from a DataLoader worker carries the worker's traceback: only its last line is
    kept, without its type (the type is the same, and the caller names it)."""
    text = str(e)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = re.sub(rf"^(?:[\w.]*\.)?(?:UserError|{re.escape(type(e).__name__)}): ", "", last)
    elif isinstance(e, UserError):
        return printable(text.strip()) or type(e).__name__
    return printable(" ".join(text.split())) or type(e).__name__


def guarded(command: Callable[[], int], debug: Callable[[], bool] = lambda: False) -> int:
    """`command()`'s exit code, every error one line on stderr (the module docstring's rules). The
    traceback of an unexpected error is shown when `debug()` (`--debug`) or RESNETLAB_DEBUG is set."""
    try:
        return command()
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
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
            f"error: {type(e).__name__}: {one_line(e)[:500]} (unexpected; `resnetlab --debug ...` or "
            f"{DEBUG_ENV}=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1
