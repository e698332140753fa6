"""Rows on stdout: a line per file, JSON lines, or flagged paths for xargs; a reader that leaves."""

from __future__ import annotations

import os
import sys


class RowPrinter:
    """A callback printing each row to stdout as asked. When the reader goes away (a closed
    pipe), printing stops; the scan stops too (StopScan) unless a report is being written.
    ``flagged`` and ``errors`` count the rows handed out before that (rows --flagged-only leaves
    out included), so that the exit code of ``scan ... | head -1`` reflects what the reader was
    given."""

    def __init__(self, fmt: str, flagged_only: bool, null: bool, stop_when_closed: bool):
        self.fmt, self.flagged_only, self.null, self.stop_when_closed = fmt, flagged_only, null, stop_when_closed
        self.terminal = sys.stdout.isatty()
        self.closed = False
        self.flagged = self.errors = 0

    def __call__(self, row: dict) -> None:
        if self.closed:
            return
        if not self.flagged_only or row["verdict"] == "synthetic":
            if self._printable(row):
                self._write(self._bytes(row))
        self.flagged += row["verdict"] == "synthetic"
        self.errors += row["verdict"] == "error"

    def _printable(self, row: dict) -> bool:
        """Whether a flagged path can go out one per line: a name holding a newline would read as
        several names (``x\\nprecious.db\\n.png`` | xargs rm removes precious.db); it is left out
        of newline-separated output, with a line on stderr that says why and to use -0."""
        if self.fmt == "jsonl" or not self.flagged_only or self.null:
            return True
        raw = self._raw(row)
        if b"\n" not in raw:
            return True
        from i2pscan import render

        render.alert(f"not printed: the flagged file {render.terminal_text(row['path'])} has a newline in its name, "
                    f"which newline-separated output cannot carry; use -0 for NUL-separated names")
        return False

    @staticmethod
    def _raw(row: dict) -> bytes:
        return row["path_raw"] if row["path_raw"] is not None else row["path"].encode("utf-8")

    def _bytes(self, row: dict) -> bytes:
        from i2pscan import render
        from i2pscan.scan.rows import row_json

        if self.fmt == "jsonl":
            return (row_json(row) + "\n").encode("utf-8")
        if self.flagged_only:
            return self._raw(row) + (b"\0" if self.null else b"\n")
        return (render.scan_line(row) + "\n").encode("utf-8", "backslashreplace")

    def _write(self, data: bytes) -> None:
        try:
            if self.terminal:  # as text, so that a progress bar on the same terminal stays below the lines
                sys.stdout.write(data.decode("utf-8", "backslashreplace"))
                sys.stdout.flush()
            else:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
        except BrokenPipeError:
            self.closed = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # so that the interpreter's final flush stays quiet
            os.close(devnull)
            if self.stop_when_closed:
                from i2pscan.scan.session import StopScan

                raise StopScan() from None
