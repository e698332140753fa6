"""What a worker does with one file: read it, decode it, read its provenance evidence from the
same bytes, crop it. One input gives one :class:`Item`: crops, or a failure record; never a
substitute."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

from i2pscan.errors import one_line
from i2pscan.io.decode import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS, Decoded, decode, set_worker_limits, read_header
from i2pscan.io.pixels import THUMBNAIL_FORMAT, perturb, save_thumbnail


class EvidenceSource(Protocol):
    """Reads the provenance columns of a file from its bytes (``provenance.EvidenceReader``)."""

    def columns(self, data: bytes | None, path: str, exif: dict | None, xmp: bytes | None = None) -> dict: ...


@dataclass
class Item:
    """One file's result: its position in the input, its crops (None when it failed), what was read."""

    index: int
    pixels: Any  # crops [n_crops, 3, S, S] (float: an array or a tensor; or uint8, FileWork.uint8), or None
    info: Decoded
    extent: tuple[int, int, int, int] | None = None  # uint8 crops of a small image: where it lies in the canvas
    encoded: Any = None  # FileWork.encoded_jpeg: the JPEG's bytes (a uint8 array) for the scoring device to decode

@dataclass(frozen=True)
class FileWork:
    """Everything a worker does with one file: read it, decode it, read its provenance evidence
    from the same bytes, crop it.

    ``evidence`` reads the provenance columns into ``Decoded.provenance`` (None: not read);
    ``header_only`` reads the header and evidence and decodes no pixels (``--metadata-only``).
    ``as_numpy`` returns crops as arrays (pickled by value between processes, never through
    torch's shared-memory file descriptors, which a dying worker can leave dangling).
    ``deadline_s`` stops one decode after that long (an alarm: set only for decoding workers).
    ``uint8``: crops stay uint8 (``transform.pack``), to be normalised where the model runs.
    ``encoded_jpeg`` (with ``uint8``): a JPEG that region decoding could take exactly travels as
    its bytes (``Item.encoded``), decoded on the scoring device (io/device_decode.py).
    A transform with ``boxes`` (preprocess.CropTransform) gets only its crops decoded (JPEG
    regions where exact); any other transform gets the whole image.
    """

    transform: Callable[[Any, int], Any] | None  # (image, index) -> crops, e.g. preprocess.CropTransform
    want_hash: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    perturbation: str | None = None
    evidence: EvidenceSource | None = None
    header_only: bool = False
    as_numpy: bool = False
    deadline_s: float | None = None  # in a decoding worker: stop a decode taking longer (decode's timeout_s)
    uint8: bool = False
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    encoded_jpeg: bool = False

    def prepare_process(self) -> None:
        """Set up a decoding worker process (one i2pscan owns) for this work: Pillow's own
        decompression-bomb limit becomes ``max_pixels``."""
        set_worker_limits(self.max_pixels)

    def in_worker(self, deadline_s: float) -> "FileWork":
        """This work as a decode pool's worker does it: crops as arrays, decodes stopped after ``deadline_s``."""
        return dataclasses.replace(self, as_numpy=True, deadline_s=deadline_s)

    def __call__(self, index: int, path: str) -> Item:
        if self.header_only:
            info = read_header(path, want_hash=self.want_hash)
            _add_evidence(info, self.evidence, path)
            return Item(index=index, pixels=None, info=info)
        preprocess = getattr(self.transform, "preprocess", None)
        boxes = getattr(self.transform, "boxes", None)
        info = decode(path, max_pixels=self.max_pixels, want_hash=self.want_hash, keep_bytes=self.evidence is not None,
                      rgb=preprocess.rgb_mode if preprocess is not None else "i2p", timeout_s=self.deadline_s,
                      boxes=None if self.perturbation else boxes, max_image_bytes=self.max_image_bytes,
                      encoded_jpeg=self.encoded_jpeg and self.uint8 and not self.perturbation)
        _add_evidence(info, self.evidence, path)
        pixels = extent = None
        if info.encoded is not None:
            encoded, info.encoded = np.frombuffer(info.encoded, np.uint8), None
            return Item(index=index, pixels=None, info=info, encoded=encoded)
        if info.image is not None or info.crops is not None:
            try:
                image = info.image
                if image is not None and self.perturbation:
                    image = perturb(image, self.perturbation)
                crops = info.crops
                if crops is None and boxes is not None:
                    crops = self.transform.crop_arrays(image)
                if crops is None:
                    pixels = self.transform(image, index)
                elif self.uint8:
                    pixels, extent = self.transform.pack(crops)
                else:
                    pixels = self.transform.from_crops(crops)
                if self.as_numpy and not isinstance(pixels, np.ndarray):
                    pixels = pixels.numpy()
            except Exception as exc:
                info.error = f"preprocessing failed: {one_line(exc)}"
                pixels = extent = None
        info.image = info.crops = None
        return Item(index=index, pixels=pixels, info=info, extent=extent)

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


@dataclass(frozen=True)
class ThumbWork:
    """What a worker does for the review page: a thumbnail of one file, at most ``size`` px a side,
    written to ``folder/NNNNNNN.EXT`` (N: the file's position in the pool's input; EXT:
    THUMBNAIL_FORMAT). The item's ``info.error`` is None when it was written, else why not."""

    folder: str
    size: int = 256
    max_pixels: int = DEFAULT_MAX_PIXELS
    deadline_s: float | None = None

    def prepare_process(self) -> None:
        set_worker_limits(self.max_pixels)

    def in_worker(self, deadline_s: float) -> "ThumbWork":
        return dataclasses.replace(self, deadline_s=deadline_s)

    def dest(self, index: int) -> str:
        return os.path.join(self.folder, f"{index:07d}.{THUMBNAIL_FORMAT}")

    def __call__(self, index: int, path: str) -> Item:
        info = decode(path, max_pixels=self.max_pixels, timeout_s=self.deadline_s, max_side=self.size)
        if info.image is not None:
            try:
                save_thumbnail(info.image, self.dest(index), self.size)
            except Exception as exc:  # an encoder failure is this file's problem, not the page's
                info.error = f"thumbnail failed: {one_line(exc)}"
        elif (info.error or "").startswith("file not found"):
            info.error = "file not found"
        info.image = None
        return Item(index=index, pixels=None, info=Decoded(image=None, error=info.error or None))

    def failed(self, index: int, path: str, message: str) -> Item:
        return Item(index=index, pixels=None, info=Decoded(image=None, error=message))
