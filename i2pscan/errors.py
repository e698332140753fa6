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


def short_path(path: str, limit: int = 160) -> str:
    """A path for a message: whole when short, else its start and end around an ellipsis (a
    4 KB path would bury the message). Reports keep paths whole; only messages shorten them."""
    path = str(path)
    if len(path) <= limit:
        return path
    head = limit // 3
    return f"{path[:head]}…{path[len(path) - (limit - head - 1):]}"


class I2PError(Exception):
    """A problem with the user's input or configuration, stated in one line.

    The message says what is wrong and, where possible, what to do about it. The CLI prints it
    after ``Error:`` and exits with status 2; library callers catch it like any exception.
    """
