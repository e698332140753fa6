"""The errors that reach users as one line, each saying what went wrong and, where it can, what to do.

Messages name the library's parameters in backquotes (```rho``` must be in (0, 1]); the CLI shows
them as its flags (``--rho``), a notebook user sees the parameter. The CLI prints an error after
``Error:`` and exits with status 2; library callers catch the class that concerns them.
"""

from __future__ import annotations

import re

PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")


class I2PError(Exception):
    """A problem with the user's input, configuration or environment, stated in one line:
    ``message`` (what is wrong) and ``hint`` (what to do about it), joined by "; "."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message, hint) if hint else super().__init__(message)
        self.message, self.hint = message, hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class ConfigError(I2PError):
    """Options that cannot work, alone or together (a value out of range, a conflicting pair)."""


class InputError(I2PError):
    """Data, a path or a file given to read that cannot be used (missing, unreadable, wrong kind)."""


class OutputError(I2PError):
    """Where results would go cannot take them (a missing folder, something in the way)."""


class ReportBusy(OutputError):
    """Another scan is writing the same report right now."""


class FileRefused(I2PError):
    """A detector, calibration or checkpoint file that is refused: damaged, edited, a pickle, or
    made for other backbone weights or options."""


class WeightsUnavailable(I2PError):
    """Backbone weights that cannot be found, fetched or loaded here."""


class MissingDependency(I2PError):
    """An optional extra is needed (``pip install 'i2pscan[...]'``)."""


class EnvironmentFailure(I2PError):
    """The machine cannot do what was asked: no such device, decoding workers that do not start,
    a cluster that cannot be reached."""


class TrainingFailed(I2PError):
    """Training could not produce a detector (it diverged, or no image could be used)."""


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


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_text(text: str) -> str:
    """``text`` as valid Unicode (so it encodes to UTF-8, as Parquet and JSON lines need): each
    lone surrogate, which a JSON escape such as ``\\ud800`` or an undecodable file name leaves
    in a Python string, becomes the visible text ``\\ud800``."""
    if not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
