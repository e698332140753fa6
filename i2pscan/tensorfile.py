"""safetensors files with i2pscan's JSON metadata: calibrations, detectors, training checkpoints.

Never pickle: a file from a stranger must not be able to run code. Every file records its kind
and format version; reading checks both and refuses anything else with a one-line message.
Writing is atomic (a temporary file, then a rename), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import I2PError

FORMAT_VERSION = 1
_KIND = "i2pscan.kind"
_FORMAT = "i2pscan.format"
_META = "i2pscan.meta"

_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def write(path: str | os.PathLike, kind: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    metadata = {_KIND: kind, _FORMAT: str(FORMAT_VERSION), _META: json.dumps(meta, sort_keys=True)}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """A temporary name beside ``path`` to write to; on success it is synced and renamed over
    ``path``, on failure removed. Readers see the old file or the whole new one, never half."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_writable(path: str | os.PathLike) -> None:
    """Raise I2PError now, not after hours of work, if ``path`` cannot be created (its folder is
    missing or not writable)."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise I2PError(f"cannot write {os.fspath(path)}: folder {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=".i2pscan-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise I2PError(f"cannot write in {folder}: {exc.strerror or exc}") from exc


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
            meta = json.loads(metadata[_META])
            tensors = {k: f.get_tensor(k) for k in f.keys()} if load else {}
    except SafetensorError as exc:
        raise I2PError(f"{path} is not a readable safetensors file (truncated or corrupt): {exc}") from exc
    except (json.JSONDecodeError, KeyError) as exc:
        raise I2PError(f"{path}: its i2pscan metadata is corrupt") from exc
    except OSError as exc:
        raise I2PError(f"cannot read {path}: {exc}") from exc
    return metadata[_KIND], meta, tensors
