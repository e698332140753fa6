"""Files on disk: atomic writes that a reader never sees half of, leftovers of killed writers,
checking an output can be written before any work, and content hashes."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from contextlib import contextmanager
from typing import Iterator

from i2pscan.errors import OutputError, short_path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary name beside ``path`` to write to; on success it is synced, given the mode a new
    file gets under the umask, and renamed over ``path``; on failure removed. Readers see the old
    file or the whole new one, never half. The temporary name records the file it is for and the
    writer's pid, so that :func:`remove_leftovers` can clear what a killed writer left."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=f"{temporary_prefix(path)}{os.getpid()}-", suffix=suffix,
                               dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600 whatever the umask
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def temporary_prefix(path: str) -> str:
    """``.tmp-<8 hex of the file name>-``: short whatever the name's length, and specific to it."""
    digest = hashlib.sha1(os.fsencode(os.path.basename(path))).hexdigest()[:8]
    return f".tmp-{digest}-"


def remove_leftovers(path: str | os.PathLike) -> list[str]:
    """Remove the temporary files that :func:`atomic_path` left beside ``path`` when its writer
    was killed (its pid no longer runs); a temporary file of a live writer stays. Returns what
    was removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix = temporary_prefix(path)
    removed = []
    try:
        names = [n for n in os.listdir(folder) if n.startswith(prefix)]
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(os.path.join(folder, name))
            except OSError:
                pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike) -> None:
    """Raise I2PError now, not after hours of work, if ``path`` cannot be created (its folder is
    missing or not writable) or names something that is not a regular file (a folder, a device
    such as /dev/null, a FIFO): an output never replaces anything but a file."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise OutputError(f"cannot write {short_path(path)}: it exists and is {what}; outputs only replace regular files")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"cannot write {short_path(path)}: folder {short_path(folder)} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=".i2pscan-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write in {short_path(folder)}: {exc.strerror or exc}") from exc


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
