"""Text from outside (class folder names, file names) made safe to print on a terminal."""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with every non-printable character written as Python writes it in a literal: a class
    folder named "cat\\n" or one holding a terminal escape ("\\x1b[2J" clears the screen) is shown as
    `cat\\n` / `\\x1b[2J`, on one line, and cannot move the cursor or recolour the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
