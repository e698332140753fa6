"""Everything human-readable goes through here: the only module that imports rich.

Two consoles, as rich-cli does it: ``stdout`` for results a command was asked for (tables of
``info``, ``report``, ``evaluate``), ``stderr`` for logs, progress and summaries. Progress bars are
drawn only when stderr is a terminal; otherwise a plain line is logged every few seconds so that a
job's log file shows it is alive.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

def _console(stderr: bool) -> Console:
    # A terminal gets rich's own width; a pipe or file gets wide lines rather than wrapped cells.
    width = None if os.environ.get("COLUMNS") else 200
    console = Console(stderr=stderr, highlight=False, soft_wrap=not stderr)
    if not console.is_terminal and width:
        console = Console(stderr=stderr, highlight=False, soft_wrap=not stderr, width=width)
    return console


stdout = _console(stderr=False)
stderr = _console(stderr=True)

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence logs and progress (errors are still printed by the CLI)."""
    global _quiet
    _quiet = quiet


def log(message: str) -> None:
    if not _quiet:
        stderr.print(message, markup=False, soft_wrap=True)


def warn(message: str) -> None:
    if not _quiet:
        stderr.print(f"warning: {message}", style="yellow", markup=False, soft_wrap=True)


class _Ticker:
    """The handle a `progress` block yields: call ``advance`` as work completes."""

    def __init__(self, update):
        self._update = update
        self.postfix = ""

    def advance(self, n: int = 1, postfix: str | None = None) -> None:
        if postfix is not None:
            self.postfix = postfix
        self._update(n, self.postfix)


@contextmanager
def progress(total: int | None, description: str, every_s: float = 10.0) -> Iterator[_Ticker]:
    """A progress bar on a terminal, a line every ``every_s`` seconds elsewhere, nothing if quiet."""
    if _quiet:
        yield _Ticker(lambda n, p: None)
        return
    if stderr.is_terminal:
        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[postfix]}"),
        ]
        with Progress(*columns, console=stderr, transient=False) as bar:
            task = bar.add_task(description, total=total, postfix="")
            yield _Ticker(lambda n, p: bar.update(task, advance=n, postfix=p))
        return
    state = {"done": 0, "last": time.monotonic()}

    def update(n: int, postfix: str) -> None:
        state["done"] += n
        now = time.monotonic()
        if now - state["last"] >= every_s:
            state["last"] = now
            of = f"/{total}" if total else ""
            log(f"{description}: {state['done']}{of} {postfix}".rstrip())

    yield _Ticker(update)


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[object]],
          to_stdout: bool = False) -> None:
    """Print rows as an aligned table; numeric columns are right-aligned."""
    if _quiet and not to_stdout:
        return
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for i, name in enumerate(columns):
        numeric = bool(rows) and all(_is_number(r[i]) for r in rows)
        t.add_column(name, justify="right" if numeric else "left", overflow="fold")
    for row in rows:
        t.add_row(*[_fmt(v) for v in row])
    (stdout if to_stdout else stderr).print(t)


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], marks: Sequence[str] = (),
              width: int = 40, to_stdout: bool = False) -> None:
    """A horizontal bar per label; ``marks`` adds a note after each bar (e.g. "critical")."""
    if _quiet and not to_stdout:
        return
    console = stdout if to_stdout else stderr
    top = max(values) if values and max(values) > 0 else 1.0
    console.print(title, style="bold", markup=False)
    pad = max(len(lab) for lab in labels) if labels else 0
    for i, (label, value) in enumerate(zip(labels, values)):
        n = int(round(width * value / top))
        note = marks[i] if i < len(marks) else ""
        console.print(f"  {label:>{pad}} {'█' * n}{' ' * (width - n)} {value:6.3f} {note}".rstrip(),
                      markup=False)


def _is_number(v: object) -> bool:
    if v is None or isinstance(v, (int, float)):
        return True
    try:
        float(str(v).replace(",", ""))
        return True
    except ValueError:
        return False


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


class _LogBridge(logging.Handler):
    """Library modules log to the ``i2pscan`` logger; its records print here (warnings as such)."""

    def emit(self, record: logging.LogRecord) -> None:
        (warn if record.levelno >= logging.WARNING else log)(record.getMessage())


_logger = logging.getLogger("i2pscan")
if not any(isinstance(h, _LogBridge) for h in _logger.handlers):
    _logger.addHandler(_LogBridge())
_logger.setLevel(logging.INFO)
_logger.propagate = False
