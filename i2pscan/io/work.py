"""What a worker does with one file: read it, decode it, read its provenance evidence from the
same bytes, crop it. One input gives one :class:`Item`: crops, or a failure record; never a
substitute."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from i2pscan.errors import one_line
from i2pscan.io.decode import DEFAULT_MAX_PIXELS, Decoded, decode, limit_pixels, read_header
from i2pscan.io.pixels import perturb


class EvidenceSource(Protocol):
    """Reads the provenance columns of a file from its bytes (``provenance.EvidenceReader``)."""

    def columns(self, data: bytes | None, path: str, exif: dict | None, xmp: bytes | None = None) -> dict: ...


@dataclass
class Item:
    """One file's result: its position in the input, its crops (None when it failed), what was read."""

    index: int
    pixels: Any  # crops [n_crops, 3, S, S] (an array or a tensor), or None
    info: Decoded

@dataclass(frozen=True)
class FileWork:
    """Everything a worker does with one file: read it, decode it, read its provenance evidence
    from the same bytes, crop it.

    ``evidence`` reads the provenance columns into ``Decoded.provenance`` (None: not read);
    ``header_only`` reads the header and evidence and decodes no pixels (``--metadata-only``).
    ``as_numpy`` returns crops as arrays (pickled by value between processes, never through
    torch's shared-memory file descriptors, which a dying worker can leave dangling).
    ``deadline_s`` stops one decode after that long (an alarm: set only for decoding workers).
    """

    transform: Callable[[Any, int], Any] | None  # (image, index) -> crops, e.g. preprocess.CropTransform
    want_hash: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    perturbation: str | None = None
    evidence: EvidenceSource | None = None
    header_only: bool = False
    as_numpy: bool = False
    deadline_s: float | None = None  # in a decoding worker: stop a decode taking longer (decode's timeout_s)

    def prepare_process(self) -> None:
        """Set up a decoding worker process (one i2pscan owns) for this work: Pillow's own
        decompression-bomb limit becomes ``max_pixels``."""
        limit_pixels(self.max_pixels)

    def __call__(self, index: int, path: str) -> Item:
        if self.header_only:
            info = read_header(path, want_hash=self.want_hash)
            _add_evidence(info, self.evidence, path)
            return Item(index=index, pixels=None, info=info)
        preprocess = getattr(self.transform, "preprocess", None)
        info = decode(path, max_pixels=self.max_pixels, want_hash=self.want_hash, keep_bytes=self.evidence is not None,
                      rgb=preprocess.rgb_mode if preprocess is not None else "i2p", timeout_s=self.deadline_s)
        _add_evidence(info, self.evidence, path)
        pixels = None
        if info.image is not None:
            try:
                image = perturb(info.image, self.perturbation) if self.perturbation else info.image
                pixels = self.transform(image, index)
                if self.as_numpy:
                    pixels = pixels.numpy()
            except Exception as exc:
                info.error = f"preprocessing failed: {one_line(exc)}"
        info.image = None
        return Item(index=index, pixels=pixels, info=info)

    def failed(self, index: int, path: str, message: str) -> Item:
        """The item of a file this work could not finish (its worker crashed or hung)."""
        info = Decoded(image=None, error=message)
        try:
            st = os.stat(path)
            info.size_bytes, info.mtime = st.st_size, st.st_mtime
        except OSError:
            pass
        return Item(index=index, pixels=None, info=info)


def _add_evidence(info: Decoded, evidence: EvidenceSource | None, path: str) -> None:
    """Provenance columns from the bytes decoding already read (then the bytes are dropped)."""
    if evidence is not None:
        info.provenance = evidence.columns(info.data, path, info.exif, info.xmp)
    info.data = info.exif = info.xmp = None
