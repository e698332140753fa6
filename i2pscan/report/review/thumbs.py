"""Thumbnails for the review page: decoded in the scanner's isolated decode pool (io.pool), shrunk
while decoding (io.decode's ``max_side``), saved as WebP or JPEG.

A decoder that crashes or hangs costs its file a placeholder, never the page: the same pool, the
same per-file blame, as a scan's decoding.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

from i2pscan.io.pixels import THUMBNAIL_FORMAT
from i2pscan.io.pool import DecodePool
from i2pscan.io.work import ThumbWork

THUMB_SIZE = 256
EXTENSION = THUMBNAIL_FORMAT
FILE_TIMEOUT_S = 60.0  # a worker silent this long on one file is stopped and the file gets a placeholder


def thumb_name(index: int) -> str:
    """The file name of row ``index``'s thumbnail (never derived from the untrusted path)."""
    return f"{index:07d}.{EXTENSION}"


def make_thumbs(jobs: Sequence[tuple[int, str]], folder: str, workers: int,
                on_done: Callable[[], None] | None = None, size: int = THUMB_SIZE,
                timeout_s: float = FILE_TIMEOUT_S) -> dict[int, str | None]:
    """Thumbnails for ``jobs`` (row index, file path) into ``folder``, decoded by ``workers``
    isolated processes (at least one). Returns {index: None when made, else why not, one line}."""
    results: dict[int, str | None] = {}
    if not jobs:
        return results
    work = ThumbWork(os.path.join(folder, ".by-position"), size)  # named by position in ``jobs``, then by row
    os.makedirs(work.folder, exist_ok=True)
    pool = DecodePool(work, max(1, workers), timeout_s=timeout_s)
    try:
        for item in pool.items([source for _, source in jobs]):
            index = jobs[item.index][0]
            note = item.info.error
            if note is None:
                os.replace(work.dest(item.index), os.path.join(folder, thumb_name(index)))
            results[index] = note
            if on_done:
                on_done()
    finally:
        for name in os.listdir(work.folder):  # left by a file whose worker died after writing
            os.unlink(os.path.join(work.folder, name))
        os.rmdir(work.folder)
    return results
