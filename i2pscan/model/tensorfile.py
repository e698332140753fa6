"""safetensors files with i2pscan's JSON metadata: calibrations, detectors, training checkpoints.

Never pickle: a file from a stranger must not be able to run code. Every file records its kind
and format version; reading checks both and refuses anything else with a one-line message.
Writing is atomic (a temporary file, then a rename), so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

if TYPE_CHECKING:
    import torch

from i2pscan.errors import FileRefused, InputError
from i2pscan.io.files import atomic_path

FORMAT_VERSION = 1
_KIND = "i2pscan.kind"
_FORMAT = "i2pscan.format"
_META = "i2pscan.meta"
_SHA = "i2pscan.sha256"
MAX_HEADER_BYTES = 4 << 20  # a detector's header is a few KB; refuse giant metadata before parsing it

_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def write(path: str | os.PathLike, kind: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save_file

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



def content_sha256(meta_text: str, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the metadata text and every tensor (name, dtype, shape, bytes, in name order):
    written into the file, and checked on reading, so that a flipped bit anywhere is caught."""
    import torch

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
        raise InputError(f"{what} file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(_PICKLE_MAGIC):
        raise FileRefused(f"{path} is a pickle (PyTorch .pt/.bin), not an i2pscan {what} file; "
                          f"refusing to load it because pickles can run code")
    header = _header_size(path)
    if header > MAX_HEADER_BYTES:
        raise FileRefused(f"{path}: its header claims {header:,} bytes of metadata (at most {MAX_HEADER_BYTES:,} "
                          f"allowed); refusing it")
    try:
        with safe_open(path, framework="pt" if load else "numpy") as f:
            metadata = f.metadata() or {}
            if metadata.get(_KIND) not in kinds:
                found = metadata.get(_KIND)
                if found:
                    raise FileRefused(f"{path} is an i2pscan {found} file, not a {what} file")
                raise FileRefused(f"{path} is a safetensors file but not an i2pscan {what} file")
            version = metadata.get(_FORMAT, "")
            if not version.isdigit() or int(version) > FORMAT_VERSION:
                raise FileRefused(f"{path} has format version {version or '?'}; this i2pscan reads up to "
                                  f"{FORMAT_VERSION}: upgrade i2pscan")
            text = metadata[_META]
            meta = json.loads(text)
            if not isinstance(meta, dict):
                raise FileRefused(f"{path}: its i2pscan metadata is not a JSON object")
            tensors = {k: f.get_tensor(k) for k in f.keys()} if load else {}
            recorded = metadata.get(_SHA)
            if load and recorded is not None and content_sha256(text, tensors) != recorded:
                raise FileRefused(f"{path}: its content does not match the checksum it records (damaged in "
                                  f"transfer or edited); get the file again")
    except SafetensorError as exc:
        raise FileRefused(f"{path} is not a readable safetensors file (truncated or corrupt): {exc}") from exc
    except (json.JSONDecodeError, KeyError, ValueError, RecursionError) as exc:
        raise FileRefused(f"{path}: its i2pscan metadata is corrupt") from exc
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if load and kinds == ("detector",) and metadata.get(_SHA) is None:
        raise FileRefused(f"{path}: records no checksum (written by an older i2pscan?); write it again with "
                          f"this version")
    return metadata[_KIND], meta, tensors


def _header_size(path: str) -> int:
    with open(path, "rb") as fh:
        first = fh.read(8)
    return struct.unpack("<Q", first)[0] if len(first) == 8 else 0
