"""What the container walk found in one file (:class:`Found`), and the limits every walk keeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_TEXT_BYTES = 4 << 20  # one text chunk, decompressed
MAX_TOTAL_TEXT_BYTES = 16 << 20  # everything inflated from one file's compressed text, together
MAX_TOTAL_PLAIN_BYTES = 16 << 20  # uncompressed text kept from one file (it is in the file already)
MAX_XMP_BYTES = 4 << 20  # one XMP packet
MAX_TOTAL_XMP_BYTES = 16 << 20  # all XMP packets of a file
MAX_XMP_PACKETS = 1000  # parsed per file (xmp.py: packets naming no field of interest are never parsed)
MAX_CHUNKS = 100_000  # PNG chunks / JPEG segments / RIFF chunks walked per file (a hostile file may hold millions)
MAX_LIST = 50  # status codes, source types... kept in the detail
SHORT_CHARS = 256


@dataclass
class Found:
    texts: dict[str, str] = field(default_factory=dict)  # PNG text chunks (and JPEG comments)
    exif: list[bytes] = field(default_factory=list)
    xmp: list[bytes] = field(default_factory=list)
    manifest_bytes: int = 0
    complete: bool = False  # a PNG, JPEG or WebP whose metadata places were all walked: nothing elsewhere
    notes: list[str] = field(default_factory=list)
    xmp_info: dict = field(default_factory=dict)
    exif_info: dict = field(default_factory=dict)
    inflate_budget: int = MAX_TOTAL_TEXT_BYTES  # bytes of text this file may still inflate
    text_budget: int = MAX_TOTAL_PLAIN_BYTES  # bytes of uncompressed text this file may still keep

    def note(self, text: str) -> None:
        if len(self.notes) < 20:
            self.notes.append(text)


def short(value: Any, limit: int = SHORT_CHARS) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    return value
