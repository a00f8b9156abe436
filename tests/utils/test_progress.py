"""The progress bar of evaluate / predict / analyze responses: on a terminal only, never with --quiet."""

import io
import sys

from resnetlab.utils.progress import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_on_a_terminal_only(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = progress(range(3), total=3, desc="x")
    assert list(bar) == [0, 1, 2] and "/3" in sys.stderr.getvalue()  # the bar was drawn

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert list(progress(range(3), total=3, quiet=True)) == [0, 1, 2] and sys.stderr.getvalue() == ""

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe or a log file
    assert list(progress(range(3), total=3)) == [0, 1, 2] and sys.stderr.getvalue() == ""
