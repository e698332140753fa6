"""What may reach a terminal of what strangers wrote: file names and metadata strings escaped.

Pure functions, no rich: render.py applies them to everything a person reads; reports, jsonl and
``-0`` output keep the true bytes.
"""

from __future__ import annotations

import re

# What a terminal must not receive raw from a file name or a file's metadata: C0 controls (a carriage
# return rewrites the line, ESC starts colour, title and clear-screen sequences), DEL, C1 controls
# (8-bit CSI), and the bidirectional overrides and isolates that reorder what is shown.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    ch = match.group(0)
    return _NAMED.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")


def visible(message: str) -> str:
    """A line for a terminal: every unsafe character (see _UNSAFE) escaped visibly (``\\r``,
    ``\\x1b``, ``\\u202e``). For messages, whose own text is i2pscan's."""
    return _UNSAFE.sub(_escape, message)


def terminal_text(text: str) -> str:
    """A name or a metadata value for a terminal, as git quotes such names: unchanged when it holds
    no unsafe character, else in double quotes with backslashes and quotes escaped and every unsafe
    character shown as an escape, so that it cannot pass for another name. Reports, jsonl and
    ``-0`` output keep the true bytes; only what a person reads is escaped."""
    if not _UNSAFE.search(text):
        return text
    return '"' + _UNSAFE.sub(_escape, text.replace("\\", "\\\\").replace('"', '\\"')) + '"'
