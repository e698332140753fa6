"""Thumbnails for the review page: decode robustly (decode.decode), shrink, save as WebP or JPEG.

Besides decode.py, the only module that imports Pillow (for the thumbnail format check alone).
Decoding runs in worker processes; a worker that crashes costs its file a placeholder, not the build.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Sequence

from PIL import features

from i2pscan.io.decode import decode
from i2pscan.errors import one_line

THUMB_SIZE = 256
EXTENSION = "webp" if features.check("webp") else "jpg"


def thumb_name(index: int) -> str:
    """The file name of row ``index``'s thumbnail (never derived from the untrusted path)."""
    return f"{index:07d}.{EXTENSION}"


def make_thumb(source: str, dest: str, size: int = THUMB_SIZE) -> str | None:
    """Write a thumbnail of ``source`` (at most ``size`` px a side) to ``dest``; None when done,
    else why not (one line)."""
    info = decode(source, timeout_s=30.0)
    if info.image is None:
        if (info.error or "").startswith("file not found"):
            return "file not found"
        return info.error or "cannot decode"
    try:
        image = info.image
        image.thumbnail((size, size))
        if EXTENSION == "webp":
            image.save(dest, "WEBP", quality=80, method=4)
        else:
            image.save(dest, "JPEG", quality=85)
    except Exception as exc:  # an encoder failure is this file's problem, not the build's
        return f"thumbnail failed: {one_line(exc)}"
    return None


def _job(args: tuple[int, str, str]) -> tuple[int, str | None]:
    index, source, dest = args
    return index, make_thumb(source, dest)


def make_thumbs(jobs: Sequence[tuple[int, str]], folder: str, workers: int,
                on_done: Callable[[], None] | None = None) -> dict[int, str | None]:
    """Thumbnails for ``jobs`` (row index, file path) into ``folder``. Returns {index: None when
    made, else why not}. ``workers`` 0 decodes in this process."""
    tasks = [(i, src, os.path.join(folder, thumb_name(i))) for i, src in jobs]
    results: dict[int, str | None] = {}
    if workers <= 0:
        for task in tasks:
            index, error = _job(task)
            results[index] = error
            if on_done:
                on_done()
        return results
    pending = list(tasks)
    while pending:  # a crashed worker breaks the pool: the files it held become placeholders
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [(task, pool.submit(_job, task)) for task in pending]
            pending = []
            broken = False
            for task, future in futures:
                try:
                    index, error = future.result()
                except BrokenProcessPool:
                    if not broken:  # the first casualty is the culprit (or shares its fate)
                        results[task[0]] = "the decoder crashed"
                        broken = True
                        if on_done:
                            on_done()
                    else:
                        pending.append(task)
                    continue
                results[index] = error
                if on_done:
                    on_done()
    return results

