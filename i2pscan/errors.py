"""The one exception type that reaches users as a one-line message (exit code 2 on the CLI)."""


def one_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception as one line of text: its message with whitespace collapsed, prefixed with the
    type unless that is a plain OSError/ValueError, cut at ``limit`` characters."""
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    if not text:
        text = name
    elif name not in ("OSError", "ValueError", "SyntaxError"):
        text = f"{name}: {text}"
    return text[:limit] if limit else text


class I2PError(Exception):
    """A problem with the user's input or configuration, stated in one line.

    The message says what is wrong and, where possible, what to do about it. The CLI prints it
    after ``Error:`` and exits with status 2; library callers catch it like any exception.
    """
