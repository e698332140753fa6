"""Thumbnails for the review page: decode robustly (io.decode), shrink, save as WebP or JPEG.

Decoding runs in worker processes; a worker that crashes costs its file a placeholder, not the build.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Sequence

from i2pscan.errors import one_line
from i2pscan.io.decode import decode
from i2pscan.io.pixels import THUMBNAIL_FORMAT, save_thumbnail

THUMB_SIZE = 256
EXTENSION = THUMBNAIL_FORMAT
WORKER_DEADLINE_S = 30.0  # a decode in a worker process stops after this long


def thumb_name(index: int) -> str:
    """The file name of row ``index``'s thumbnail (never derived from the untrusted path)."""
    return f"{index:07d}.{EXTENSION}"


def make_thumb(source: str, dest: str, size: int = THUMB_SIZE, timeout_s: float | None = None) -> str | None:
    """Write a thumbnail of ``source`` (at most ``size`` px a side) to ``dest``; None when done,
    else why not (one line)."""
    info = decode(source, timeout_s=timeout_s)
    if info.image is None:
        if (info.error or "").startswith("file not found"):
            return "file not found"
        return info.error or "cannot decode"
    try:
        save_thumbnail(info.image, dest, size)
    except Exception as exc:  # an encoder failure is this file's problem, not the build's
        return f"thumbnail failed: {one_line(exc)}"
    return None


def _job(args: tuple[int, str, str]) -> tuple[int, str | None]:
    index, source, dest = args
    return index, make_thumb(source, dest, timeout_s=WORKER_DEADLINE_S)


def make_thumbs(jobs: Sequence[tuple[int, str]], folder: str, workers: int,
                on_done: Callable[[], None] | None = None) -> dict[int, str | None]:
    """Thumbnails for ``jobs`` (row index, file path) into ``folder``. Returns {index: None when
    made, else why not}. ``workers`` 0 decodes in this process."""
    tasks = [(i, src, os.path.join(folder, thumb_name(i))) for i, src in jobs]
    results: dict[int, str | None] = {}
    if workers <= 0:
        for index, source, dest in tasks:
            error = make_thumb(source, dest)
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

