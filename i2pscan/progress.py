"""How far a long step is, said without printing: the library reports progress here, and whoever
drives it (the CLI, a notebook) decides whether and how to show it.

``progress(total, description)`` is a context manager yielding a ticker with ``advance(n,
postfix)``. With no sink installed it does nothing; ``showing(sink)`` installs one for the
duration of a block (the CLI's draws a bar on a terminal and a periodic line elsewhere: see
render.progress_sink). Log lines go to the ``i2pscan`` logger (logging), never to print.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, ContextManager, Iterator, Protocol


class Ticker(Protocol):
    def advance(self, n: int = 1, postfix: str | None = None) -> None: ...


Sink = Callable[[int | None, str], ContextManager[Ticker]]

_sink: ContextVar[Sink | None] = ContextVar("i2pscan_progress_sink", default=None)


class _Silent:
    def advance(self, n: int = 1, postfix: str | None = None) -> None:
        pass


@contextmanager
def progress(total: int | None, description: str) -> Iterator[Ticker]:
    """A ticker for a step of ``total`` units (None: unknown), shown by the installed sink."""
    sink = _sink.get()
    if sink is None:
        yield _Silent()
        return
    with sink(total, description) as ticker:
        yield ticker


@contextmanager
def showing(sink: Sink | None) -> Iterator[None]:
    """Install ``sink`` for progress reported inside the block (None: show none)."""
    token = _sink.set(sink)
    try:
        yield
    finally:
        _sink.reset(token)
