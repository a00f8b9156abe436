"""The last-resort handler of `resnetlab` (one line, exit 1, --debug for the traceback), Ctrl-C (130),
one-line argparse errors, and the run folder a failed run leaves (none, when it saved nothing)."""

from __future__ import annotations

import pytest

from resnetlab import cli
from resnetlab.cli import args as cli_args
from resnetlab.cli import info


def _boom(exc):
    def run(args):
        raise exc

    return run


def test_unexpected_error_is_one_line_with_how_to_see_more(monkeypatch, capsys):
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    monkeypatch.setattr(info, "run", _boom(ZeroDivisionError("the\nmessage \x1b[31mred\x1b[0m")))
    assert cli.main(["info", "--list"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "\x1b" not in err
    # the escapes shown, not removed (a typed path with one in it was shown as another path)
    assert err.startswith("error: ZeroDivisionError: the message \\x1b[31mred\\x1b[0m") and "--debug" in err
    assert cli.DEBUG_ENV in err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(monkeypatch, how):
    monkeypatch.setattr(info, "run", _boom(ZeroDivisionError("x")))
    argv = ["info", "--list"]
    if how == "flag":
        argv = ["--debug", *argv]
    else:
        monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ZeroDivisionError):  # re-raised: Python prints the traceback, exit status 1
        cli.main(argv)


def test_ctrl_c_is_130_without_a_traceback(monkeypatch, capsys):
    monkeypatch.setattr(info, "run", _boom(KeyboardInterrupt()))
    assert cli.main(["info", "--list"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_dataloader_worker_error_keeps_only_its_last_line(monkeypatch, capsys):
    from resnetlab.errors import UserError

    text = (
        "Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nresnetlab.errors.UserError: cannot read image a.jpg'
    )
    monkeypatch.setattr(info, "run", _boom(UserError(text)))
    assert cli.main(["info", "--list"]) == 2
    assert capsys.readouterr().err == "error: cannot read image a.jpg\n"


def test_argparse_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["info", "--depth", "0"])
    assert e.value.code == 2
    assert (
        capsys.readouterr().err
        == "error: argument --depth: 0 is not an integer from 1 to 2000 (see `resnetlab info --help`)\n"
    )


def test_typed_values():
    assert cli_args.int_at_least(0)("0") == 0 and cli_args.float_in(0, 1)("0.5") == 0.5
    for parse, bad in (
        (cli_args.int_at_least(1), "0"),
        (cli_args.int_at_least(1), "1.5"),
        (cli_args.float_in(0, 1), "nan"),
    ):
        with pytest.raises(Exception, match="is not"):
            parse(bad)


def test_a_line_break_in_our_message_is_escaped_and_a_quoted_library_message_joined():
    """A UserError is one line by construction: a line break in it belongs to a name the user gave
    and is shown escaped; another library's lines, quoted through one_line, are joined by spaces."""
    from resnetlab.errors import UserError, one_line

    assert (
        one_line(UserError("checkpoint /tmp/no\nck.pt does not exist")) == "checkpoint /tmp/no\\nck.pt does not exist"
    )
    library = RuntimeError("Error(s) in loading state_dict:\n\tsize mismatch for fc.weight")
    quoted = UserError(f"model: {one_line(library)}")
    assert one_line(quoted) == "model: Error(s) in loading state_dict: size mismatch for fc.weight"
