"""Text for the terminal: names from outside (class folders, files) made safe to print, and values
shortened for an error message."""

from __future__ import annotations

import reprlib
from typing import Any


def printable(text: str) -> str:
    """`text` with every non-printable character written as Python writes it in a literal: a class
    folder named "cat\\n" or one holding a terminal escape ("\\x1b[2J" clears the screen) is shown as
    `cat\\n` / `\\x1b[2J`, on one line, and cannot move the cursor or recolour the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxstring = 3, 8, 8, 8, 80


def cut(text: str, limit: int = 80) -> str:
    """`text` shortened to `limit` characters with "..." (what the user typed can be any size)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: Any) -> str:
    """`repr(value)` for an error message, at most 80 characters: reprlib stops at a few items per
    level, so a value of any size (aliases expanded) costs no more to show than a small one."""
    return cut(_REPR.repr(value))
