"""The one exception type the CLI turns into a one-line message (no traceback) and exit code 2."""


class UserError(Exception):
    """Bad input from the user: a config value, a file, a dataset. The message says what and where."""
