"""safetensors files with i2pscan's JSON metadata: calibrations, detectors, training checkpoints.

Never pickle: a file from a stranger must not be able to run code. Every file records its kind
and format version; reading checks both and refuses anything else with a one-line message.
Writing is atomic (a temporary file, then a rename), so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import tempfile
from contextlib import contextmanager
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import I2PError, short_path

FORMAT_VERSION = 1
_KIND = "i2pscan.kind"
_FORMAT = "i2pscan.format"
_META = "i2pscan.meta"
_SHA = "i2pscan.sha256"
MAX_HEADER_BYTES = 4 << 20  # a detector's header is a few KB; refuse giant metadata before parsing it

_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def write(path: str | os.PathLike, kind: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    text = json.dumps(meta, sort_keys=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {_KIND: kind, _FORMAT: str(FORMAT_VERSION), _META: text, _SHA: content_sha256(text, tensors)}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
        _canonical_header(tmp)


def _canonical_header(path: str) -> None:
    """Rewrite the safetensors header with its keys sorted (the writer orders metadata at random),
    so that the same content gives the same bytes. Same length, so the data offsets hold."""
    with open(path, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        raw = fh.read(n)
        header = json.loads(raw)
        text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
        if len(text) > n:
            return
        fh.seek(8)
        fh.write(text + b" " * (n - len(text)))


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary name beside ``path`` to write to; on success it is synced, given the mode a new
    file gets under the umask, and renamed over ``path``; on failure removed. Readers see the old
    file or the whole new one, never half. The temporary name records the file it is for and the
    writer's pid, so that :func:`remove_leftovers` can clear what a killed writer left."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}-", suffix=suffix,
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


def _tmp_prefix(path: str) -> str:
    """``.tmp-<8 hex of the file name>-``: short whatever the name's length, and specific to it."""
    digest = hashlib.sha1(os.fsencode(os.path.basename(path))).hexdigest()[:8]
    return f".tmp-{digest}-"


def remove_leftovers(path: str | os.PathLike) -> list[str]:
    """Remove the temporary files that :func:`atomic_path` left beside ``path`` when its writer
    was killed (its pid no longer runs); a temporary file of a live writer stays. Returns what
    was removed."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix = _tmp_prefix(path)
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
        raise I2PError(f"cannot write {short_path(path)}: it exists and is {what}; outputs only replace regular files")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise I2PError(f"cannot write {short_path(path)}: folder {short_path(folder)} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=".i2pscan-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise I2PError(f"cannot write in {short_path(folder)}: {exc.strerror or exc}") from exc


def content_sha256(meta_text: str, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the metadata text and every tensor (name, dtype, shape, bytes, in name order):
    written into the file, and checked on reading, so that a flipped bit anywhere is caught."""
    digest = hashlib.sha256(meta_text.encode("utf-8"))
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous()
        digest.update(json.dumps([key, str(t.dtype), list(t.shape)]).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def read_meta(path: str | os.PathLike, kinds: tuple[str, ...]) -> tuple[str, dict]:
    """The kind and metadata of an i2pscan file, reading only its header."""
    kind, meta, _ = _open(path, kinds, load=False)
    return kind, meta


def read(path: str | os.PathLike, kinds: tuple[str, ...]) -> tuple[str, dict, dict[str, torch.Tensor]]:
    """(kind, metadata, tensors) of an i2pscan file of one of ``kinds``; raises I2PError."""
    return _open(path, kinds, load=True)


def _open(path, kinds, load):
    path = os.fspath(path)
    what = " or ".join(kinds)
    if not os.path.isfile(path):
        raise I2PError(f"{what} file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_PICKLE_MAGIC):
        raise I2PError(f"{path} is a pickle (PyTorch .pt/.bin), not an i2pscan {what} file; "
                       f"refusing to load it because pickles can run code")
    header = _header_size(path)
    if header > MAX_HEADER_BYTES:
        raise I2PError(f"{path}: its header claims {header:,} bytes of metadata (at most {MAX_HEADER_BYTES:,} "
                       f"allowed); refusing it")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get(_KIND) not in kinds:
                found = metadata.get(_KIND)
                if found:
                    raise I2PError(f"{path} is an i2pscan {found} file, not a {what} file")
                raise I2PError(f"{path} is a safetensors file but not an i2pscan {what} file")
            version = metadata.get(_FORMAT, "")
            if not version.isdigit() or int(version) > FORMAT_VERSION:
                raise I2PError(f"{path} has format version {version or '?'}; this i2pscan reads up to "
                               f"{FORMAT_VERSION}: upgrade i2pscan")
            text = metadata[_META]
            meta = json.loads(text)
            if not isinstance(meta, dict):
                raise I2PError(f"{path}: its i2pscan metadata is not a JSON object")
            tensors = {k: f.get_tensor(k) for k in f.keys()} if load else {}
            recorded = metadata.get(_SHA)
            if load and recorded is not None and content_sha256(text, tensors) != recorded:
                raise I2PError(f"{path}: its content does not match the checksum it records (damaged in "
                               f"transfer or edited); get the file again")
    except SafetensorError as exc:
        raise I2PError(f"{path} is not a readable safetensors file (truncated or corrupt): {exc}") from exc
    except (json.JSONDecodeError, KeyError, ValueError, RecursionError) as exc:
        raise I2PError(f"{path}: its i2pscan metadata is corrupt") from exc
    except OSError as exc:
        raise I2PError(f"cannot read {path}: {exc}") from exc
    if load and kinds == ("detector",) and metadata.get(_SHA) is None:
        raise I2PError(f"{path}: records no checksum (written by an older i2pscan?); write it again with "
                       f"this version")
    return metadata[_KIND], meta, tensors


def _header_size(path: str) -> int:
    with open(path, "rb") as fh:
        first = fh.read(8)
    return struct.unpack("<Q", first)[0] if len(first) == 8 else 0
