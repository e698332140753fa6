"""Skip to a band of a JPEG with restart markers, without entropy decoding what lies above it.

A baseline JPEG must be Huffman-decoded from its first row to the last row a crop needs, unless it
has restart markers (many cameras and hardware encoders write them): each restart interval starts
with fresh DC predictions at a marker found by scanning the bytes. :func:`band_stream` cuts out
the restart intervals that cover a band of MCU rows (one MCU row of margin above and below, where
the image goes on) and makes them a JPEG of their own: the same header with the frame's height
changed, the same coefficients, the restart markers renumbered from 0. Its rows inside the margin
decode to exactly the original's pixels: the coefficients and the inverse DCT are the same, and
chroma upsampling reaches at most one chroma row beyond a pixel's own, well inside the margin.
Only where everything lines up: one interleaved baseline scan, intervals that start on an MCU row
inside the margin, the expected number of markers. Otherwise None, and region.py decodes from the top.
"""

from __future__ import annotations

import math
import re
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from i2pscan.io.region import JpegLayout

_RST = re.compile(rb"\xff[\xd0-\xd7]")
_EOI = b"\xff\xd9"


def band_stream(data: bytes, layout: JpegLayout, top: int, bottom: int) -> tuple[bytes, int] | None:
    """A JPEG holding the MCU rows of ``data`` around pixel rows [top, bottom), and the pixel row of
    ``data`` its first row is; None when the file cannot be cut there (see the module docstring)
    or when the cut would keep almost all of it."""
    if (layout.sof not in (0xC0, 0xC1) or layout.restart <= 0 or layout.scan_components != layout.components
            or data.find(b"\xff\xda", layout.data_at) != -1):  # a second scan
        return None
    mcu_w, mcu_h = layout.mcu
    per_row = math.ceil(layout.width / mcu_w)
    rows = math.ceil(layout.height / mcu_h)
    interval = layout.restart
    first = max(0, top // mcu_h - 1)  # one MCU row of margin above the band
    while first > 0 and (first * per_row) % interval:
        first -= 1
    last = min(rows, math.ceil(bottom / mcu_h) + 1)  # and one below (exclusive)
    while last < rows and (last * per_row) % interval:
        last += 1
    if first == 0 and last == rows or (last - first) * 2 > rows:  # not worth the surgery
        return None
    end = data.rfind(_EOI)
    markers = [m.start() for m in _RST.finditer(data, layout.data_at, end)]
    if len(markers) != math.ceil(per_row * rows / interval) - 1:
        return None
    start_interval, end_interval = first * per_row // interval, math.ceil(last * per_row / interval)
    begin = layout.data_at if start_interval == 0 else markers[start_interval - 1] + 2
    stop = end if end_interval > len(markers) else markers[end_interval - 1]
    body = bytearray(data[begin:stop])
    for k, at in enumerate(markers[start_interval:end_interval - 1]):
        body[at - begin + 1] = 0xD0 + k % 8  # the band's own restart sequence
    height = min(layout.height, last * mcu_h) - first * mcu_h
    header = bytearray(data[:layout.data_at])
    header[layout.sof_at + 5:layout.sof_at + 7] = struct.pack(">H", height)
    return bytes(header + body + _EOI), first * mcu_h
