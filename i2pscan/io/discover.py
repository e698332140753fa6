"""Which files a scan reads: files, folders (recursively, sorted) and paths on stdin."""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

from i2pscan.errors import InputError, short_path
from i2pscan.io.decode import IMAGE_EXTENSIONS
from i2pscan.io.formats import SCANNED_EXTENSIONS

log = logging.getLogger("i2pscan")


@dataclass(frozen=True)
class DiscoverOptions:
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    hidden: bool = False
    follow_symlinks: bool = False
    exclude: tuple[str, ...] = ()


def discover(inputs: Sequence[str], options: DiscoverOptions = DiscoverOptions(),
             stdin: Iterable[bytes] | None = None) -> list[str]:
    """Expand files, folders (recursively, sorted) and ``-`` (paths on stdin) into a file list.

    A file named explicitly (argument or stdin) is scanned whatever its extension, and a symlink
    named explicitly is followed (as ``find -H`` does); in folders, files are picked by extension
    (case-insensitive), hidden names are skipped unless ``hidden``, symlinks are not followed
    unless ``follow_symlinks`` (then without loops), and ``exclude`` globs match the path below the
    folder or the bare name. Each file appears once. A folder named explicitly that holds no image
    file gets a warning line. Raises I2PError, before any work, for an argument that does not
    exist; a missing path read from stdin, or a folder that cannot be listed, is kept so that it
    becomes an error row.
    """
    return list(iter_discover(inputs, options, stdin))


def iter_discover(inputs: Sequence[str], options: DiscoverOptions = DiscoverOptions(),
                  stdin: Iterable[bytes] | None = None) -> Iterator[str]:
    """:func:`discover`, streamed: paths come out as folders are listed, so a tree of millions of
    files is never held as a list (only one folder's entries at a time, plus, when several
    inputs could overlap, the set of paths already given). Arguments are checked first."""
    for item in inputs:
        if item != "-" and not os.path.lexists(item):
            raise InputError(f"no such file or folder: {short_path(item)}")
    return _discovered(inputs, options, stdin)


def _discovered(inputs: Sequence[str], options: DiscoverOptions, stdin: Iterable[bytes] | None) -> Iterator[str]:
    seen: set[str] | None = None if len(inputs) == 1 and inputs[0] != "-" else set()
    extensions = tuple(e.lower().lstrip(".") for e in options.extensions)
    for item in inputs:  # paths read from stdin are data: one that is missing becomes an error row
        for path in (_stdin_paths(stdin) if item == "-" else [item]):
            folder = os.path.isdir(path)
            images = 0
            for f in (_walk(path, extensions, options) if folder else [path]):
                images += 1
                if seen is None:
                    yield f
                elif f not in seen:
                    seen.add(f)
                    yield f
            if folder and not images:
                log.warning(f"{short_path(path)} is a folder with no image files to scan "
                             f"(--ext, --hidden change what is picked up)")


def _stdin_paths(stdin: Iterable[bytes] | None) -> list[str]:
    """Paths on stdin, NUL-separated when the input holds a NUL, else one per line. Names are
    kept byte for byte: a ``\\r`` before the newline is part of the name (convert CRLF lists with
    ``tr -d '\\r'``); empty lines are skipped."""
    data = (stdin if stdin is not None else sys.stdin.buffer).read()
    sep = b"\0" if b"\0" in data else b"\n"
    return [os.fsdecode(p) for p in data.split(sep) if p]


def _walk(root: str, extensions: tuple[str, ...], options: DiscoverOptions) -> Iterator[str]:
    seen: set[tuple[int, int]] = set()
    left_out: dict[str, int] = {}  # image extensions the chosen list leaves out: said, never silent

    def excluded(rel: str, name: str) -> bool:
        return any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(name, g) for g in options.exclude)

    def visit(folder: str, rel_folder: str) -> Iterator[str]:
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:  # a symlink loop, or a folder reached twice
                return
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            log.warning(f"cannot list {short_path(folder)}: {exc.strerror or exc}")
            yield folder  # an error row, so that the scan's exit code says something was unreadable
            return
        for entry in entries:
            name = entry.name
            rel = os.path.join(rel_folder, name) if rel_folder else name
            if (name.startswith(".") and not options.hidden) or excluded(rel, name):
                continue
            try:
                is_link = entry.is_symlink()
                if is_link and not options.follow_symlinks:
                    continue
                if entry.is_dir(follow_symlinks=True):
                    yield from visit(entry.path, rel)
                else:
                    ext = os.path.splitext(name)[1][1:].lower()
                    if ext in extensions:
                        yield entry.path
                    elif ext in SCANNED_EXTENSIONS:
                        left_out[ext] = left_out.get(ext, 0) + 1
            except OSError:
                yield entry.path  # unreadable entry: let decoding report it as an error row

    yield from visit(root, "")
    if left_out:
        counts = ", ".join(f"{n} .{ext}" for ext, n in sorted(left_out.items(), key=lambda kv: (-kv[1], kv[0])))
        log.warning(f"{short_path(root)}: left out {sum(left_out.values())} image file(s) whose extension is not "
                    f"in the list scanned ({counts}); --ext adds extensions")
