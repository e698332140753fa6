"""Robust decoding of one image file into 8-bit RGB, and reading its header alone.

Decoding never raises for a bad file: it returns a :class:`Decoded` whose ``error`` says what was
wrong, so that one input always gives one result.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from i2pscan.errors import one_line
from i2pscan.io.formats import IMAGE_EXTENSIONS, is_dng, register_decoders, unscored_kind
from i2pscan.io.metadata import exif_tags

DEFAULT_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS  # Pillow's own refusal limit, about 179 MP
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_DECODE_TIMEOUT_S = 60.0


def has_image_extension(name: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    ext = os.path.splitext(name)[1][1:].lower()
    return ext in extensions


@dataclass
class Decoded:
    """What decoding one file gave: an RGB image, or an error message. Never both."""

    image: Image.Image | None
    error: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    size_bytes: int | None = None
    mtime: float | None = None
    sha256: str | None = None
    data: bytes | None = None  # the file's bytes, when asked for (keep_bytes): shared with the evidence reader
    exif: dict | None = None  # with keep_bytes: the EXIF tags Pillow already parsed (read_exif's keys)
    xmp: bytes | None = None  # an XMP packet Pillow found where the bytes do not show it (HEIF, AVIF items)
    provenance: dict | None = None  # report columns from provenance.EvidenceReader, when asked for


RGB_MODES = ("i2p", "pillow")
# Modes whose Image.convert("RGB") is what the published detectors' authors get; 16/32-bit and float
# images would come out clipped to white or black there, so they go through _to_rgb in both modes.
_PILLOW_CONVERTS = ("1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LA", "La", "PA")


def decode(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
           want_hash: bool = False, timeout_s: float | None = None,
           keep_bytes: bool = False, rgb: str = "i2p") -> Decoded:
    """Read and decode one image file into 8-bit RGB.

    The format is recognised from the content, not the extension. ``rgb="i2p"``: EXIF orientation
    is applied and every Pillow mode is mapped to RGB with care (alpha composited on white,
    16/32-bit and float scaled to 8 bits, LAB and CMYK converted). ``rgb="pillow"``: the image as
    the published detectors' authors read it, ``Image.open(path).convert("RGB")`` (stored
    orientation, alpha dropped), except that 16/32-bit and float images are scaled to 8 bits as
    above rather than clipped to a blank frame. Animations give their first frame. Truncated files, files
    above ``max_pixels`` (decompression bombs, or above Pillow's own limit of this process: see
    :func:`limit_pixels`), above ``max_bytes``, or taking over ``timeout_s`` to decode (an alarm
    signal, so only in a process's main thread; None: no deadline) give an error, as does anything
    that cannot be read at all. ``keep_bytes`` keeps the
    file's bytes in ``data`` (even when the pixels fail to decode), so that they are read once.
    """
    if rgb not in RGB_MODES:
        raise ValueError(f"rgb must be one of {RGB_MODES}, not {rgb!r}")
    result = Decoded(image=None)
    data = b""
    try:
        data = _read(path, max_bytes, result)
        if data is None:
            return result
        if keep_bytes:
            result.data = data
        if want_hash:
            result.sha256 = hashlib.sha256(data).hexdigest()
        with _deadline(timeout_s), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = _open_checked(data, max_pixels, result, path)
            if image is not None:
                if keep_bytes:  # Pillow parses EXIF for the orientation anyway: share it with the evidence reader
                    result.exif = exif_tags(image.getexif)
                    xmp = image.info.get("xmp") if image.format in ("HEIF", "AVIF", "JXL") else None
                    result.xmp = xmp if isinstance(xmp, bytes) else None
                if rgb == "pillow":
                    result.image = image.convert("RGB") if image.mode in _PILLOW_CONVERTS else _to_rgb(image)
                else:
                    result.image = _to_rgb(_oriented(image))
                result.width, result.height = result.image.size
    except FileNotFoundError:
        result.error = "file not found (deleted or moved during the scan?)"
    except PermissionError:
        result.error = "permission denied"
    except Image.DecompressionBombError as exc:
        result.error = f"decompression bomb: {exc}".split(", could be")[0]
    except UnidentifiedImageError:
        result.error = _unidentified_message(data)
    except _DecodeTimeout:
        result.error = f"decoding took longer than {timeout_s:g} s"
    except MemoryError:
        result.error = "out of memory while decoding"
    except Exception as exc:  # a corrupt file can raise anything from a decoder
        result.error = one_line(exc)
    if result.error:
        result.image = None
    return result


def _read(path: str, max_bytes: int, result: Decoded) -> bytes | None:
    """The file's bytes, or None with ``result.error`` set (a folder, empty, too large...)."""
    st = os.stat(path)
    result.size_bytes, result.mtime = st.st_size, st.st_mtime
    if os.path.isdir(path):
        result.error = ("a folder that cannot be listed" if not os.access(path, os.R_OK | os.X_OK)
                        else "a folder, not an image file")
        return None
    if not os.path.isfile(path):
        result.error = "not a regular file"
        return None
    if st.st_size == 0:
        result.error = "empty file"
        return None
    if st.st_size > max_bytes:
        result.error = f"file too large ({st.st_size:,} bytes, limit {max_bytes:,})"
        return None
    with open(path, "rb") as fh:
        return fh.read()


def read_header(path: str, max_bytes: int = DEFAULT_MAX_BYTES, want_hash: bool = False) -> Decoded:
    """The file's bytes (in ``data``), size, mtime and, from the header alone, format and size in
    pixels: no pixel is decoded (``--metadata-only``). An unreadable file gets ``error``; a file
    Pillow does not recognise keeps its bytes with format, width and height unset."""
    result = Decoded(image=None)
    try:
        data = _read(path, max_bytes, result)
    except FileNotFoundError:
        result.error = "file not found (deleted or moved during the scan?)"
        return result
    except PermissionError:
        result.error = "permission denied"
        return result
    except OSError as exc:
        result.error = one_line(exc)
        return result
    if data is None:
        return result
    result.data = data
    if want_hash:
        result.sha256 = hashlib.sha256(data).hexdigest()
    unscored = unscored_kind(data, path)
    if unscored:
        result.format = unscored[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            register_decoders(data)
            with Image.open(io.BytesIO(data)) as image:
                result.format = "DNG" if is_dng(image) else unscored[0] if unscored else image.format
                result.width, result.height = image.size
                if image.format in ("HEIF", "AVIF", "JXL"):  # metadata in ISOBMFF items: Pillow's parse
                    result.exif = exif_tags(image.getexif)
                    xmp = image.info.get("xmp")
                    result.xmp = xmp if isinstance(xmp, bytes) else None
    except Exception:  # not an image Pillow knows (SVG, JXL...): the evidence may still be there
        pass
    return result


def _unidentified_message(data: bytes) -> str:
    return "not an image (or a format Pillow cannot read)"


def limit_pixels(max_pixels: int) -> None:
    """Make Pillow's own decompression-bomb limit this process's ``max_pixels`` (Pillow refuses
    above twice its MAX_IMAGE_PIXELS). For processes i2pscan owns (its decoding workers): in any
    other process Pillow's limit is left as it is, and ``decode`` refuses what exceeds either."""
    Image.MAX_IMAGE_PIXELS = max_pixels // 2


def _open_checked(data: bytes, max_pixels: int, result: Decoded, path: str = "") -> Image.Image | None:
    unscored = unscored_kind(data, path)
    if unscored:
        result.format, result.error = unscored
        return None
    register_decoders(data)
    image = Image.open(io.BytesIO(data))
    result.format = image.format
    if is_dng(image):
        result.format, result.error = unscored_kind(data, "x.dng")
        return None
    width, height = image.size
    result.width, result.height = width, height
    if width * height > max_pixels:
        result.error = f"decompression bomb: {width}x{height} pixels exceeds the limit of {max_pixels:,}"
        return None
    if width < 1 or height < 1:
        result.error = f"invalid image size {width}x{height}"
        return None
    image.load()
    return image


_EXIF_ORIENTATION = 0x0112


def _oriented(image: Image.Image) -> Image.Image:
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (1, None):
            return image  # exif_transpose would copy the whole image for nothing
        return ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF: keep the stored orientation rather than lose the image
        return image


_LAB_TO_SRGB = None


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(image)), "L").convert("RGB")
    if mode == "LAB":
        global _LAB_TO_SRGB
        if _LAB_TO_SRGB is None:
            _LAB_TO_SRGB = ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"),
                                                   "LAB", "RGB")
        return ImageCms.applyTransform(image, _LAB_TO_SRGB)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale a 16-bit, 32-bit or float single-channel image to 8 bits."""
    a = array.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    a = np.where(finite, a, 0.0)
    lo, hi = float(a.min()), float(a.max())
    if array.dtype.kind == "f":
        scale = 255.0 if lo >= 0.0 and hi <= 1.0 else None
    elif hi <= 255:
        scale = 1.0
    elif hi <= 65535 and lo >= 0:
        scale = 255.0 / 65535.0
    else:
        scale = None
    if scale is None:  # unknown range: stretch to the full 8 bits
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        scale = 1.0
    return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)


class _DecodeTimeout(Exception):
    pass


@contextmanager
def _deadline(seconds: float | None) -> Iterator[None]:
    """Interrupt decoding after ``seconds`` (SIGALRM; only in a process's main thread)."""
    usable = (seconds and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise _DecodeTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
