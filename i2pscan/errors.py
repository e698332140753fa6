"""The one exception type that reaches users as a one-line message (exit code 2 on the CLI)."""


class I2PError(Exception):
    """A problem with the user's input or configuration, stated in one line.

    The message says what is wrong and, where possible, what to do about it. The CLI prints it
    after ``Error:`` and exits with status 2; library callers catch it like any exception.
    """
