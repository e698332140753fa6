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
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from i2pscan.errors import one_line
from i2pscan.io.formats import IMAGE_EXTENSIONS, is_dng, register_decoders, unscored_kind
from i2pscan.io.metadata import exif_tags
from i2pscan.io import region
from i2pscan.io.convert import TRANSPOSE, Scaler, high_bit_depth, orientation_of, oriented, stored_box, to_rgb

DEFAULT_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS  # Pillow's own refusal limit, about 179 MP
DEFAULT_MAX_BYTES = 1 << 30
# what the decoded image may take in memory, as Pillow holds it (bit depth and channels counted:
# 1 byte a pixel for L/P/1, 2 for I;16, 4 for RGB, RGBA, CMYK, I, F...): every 8-bit RGB image
# under the pixel limit fits, and a worker's peak stays near this plus its start-up size, because
# conversions work on the crops or in strips of rows, never on a second whole-image copy
DEFAULT_MAX_IMAGE_BYTES = 768 << 20
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
    crops: list | None = None  # with ``boxes``: the RGB uint8 arrays (HxWx3) of the boxes, instead of ``image``
    region: bool = False  # the crops were decoded as JPEG regions (not from a whole decoded image)
    encoded: bytes | None = None  # with ``encoded_jpeg``: a JPEG's bytes, left for the model's device to decode


RGB_MODES = ("i2p", "pillow")
# Modes whose Image.convert("RGB") is what the published detectors' authors get; 16/32-bit and float
# images would come out clipped to white or black there, so they go through convert.to_rgb in both modes.
_PILLOW_CONVERTS = ("1", "L", "P", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LA", "La", "PA")


def decode(path: str, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES,
           want_hash: bool = False, timeout_s: float | None = None,
           keep_bytes: bool = False, rgb: str = "i2p",
           boxes: Callable[[int, int], Sequence[tuple[int, int, int, int]]] | None = None,
           max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES, max_side: int | None = None,
           encoded_jpeg: bool = False) -> Decoded:
    """Read and decode one image file into 8-bit RGB.

    The format is recognised from the content, not the extension. ``rgb="i2p"``: EXIF orientation
    is applied and every Pillow mode is mapped to RGB with care (alpha composited on white,
    16/32-bit and float scaled to 8 bits, LAB and CMYK converted). ``rgb="pillow"``: the image as
    the published detectors' authors read it, ``Image.open(path).convert("RGB")`` (stored
    orientation, alpha dropped), except that 16/32-bit and float images are scaled to 8 bits as
    above rather than clipped to a blank frame. Animations give their first frame. Truncated files, files
    above ``max_pixels`` (decompression bombs, or above Pillow's own limit of this process: see
    :func:`set_worker_limits`), above ``max_bytes``, or taking over ``timeout_s`` to decode (an alarm
    signal, so only in a process's main thread; None: no deadline) give an error, as does anything
    that cannot be read at all, as does an image that would take more than ``max_image_bytes``
    in memory once decoded. ``keep_bytes`` keeps the
    file's bytes in ``data`` (even when the pixels fail to decode), so that they are read once.

    ``boxes(width, height)``: only these crops are wanted (left, top, right, bottom, in the image
    as this ``rgb`` mode orients it): ``crops`` holds them as RGB uint8 arrays, exactly the pixels
    of the whole decoded image's crops; a JPEG is decoded as regions where that is exact
    (io/region.py), any other file whole, with its conversions applied to the crops only.
    ``max_side``: shrink the image to at most that many pixels a side before converting it (for
    thumbnails; a JPEG is decoded at a reduced scale), so that no full-size RGB copy is made.
    ``encoded_jpeg`` (with ``boxes``): a JPEG that region decoding could take exactly is not
    decoded at all: ``encoded`` holds its bytes for the scoring device (io/device_decode.py), and
    ``width``/``height`` its size as ``rgb`` orients it.
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
            image = _open_checked(data, max_pixels, max_image_bytes, result, path)
            if image is not None:
                if image.format != "JPEG" or (boxes is None and not max_side):
                    # now, not later: reading EXIF may load a PNG and swallow its decoding error
                    # (a JPEG's EXIF is in its header: its pixels wait for region decoding or a draft)
                    image.load()
                if keep_bytes:  # Pillow parses EXIF for the orientation anyway: share it with the evidence reader
                    result.exif = exif_tags(image.getexif)
                    xmp = image.info.get("xmp") if image.format in ("HEIF", "AVIF", "JXL") else None
                    result.xmp = xmp if isinstance(xmp, bytes) else None
                if boxes is not None:
                    _decode_crops(data, image, boxes, rgb, result, encoded_jpeg)
                else:
                    if max_side:
                        image = _shrunk(image, max_side)
                    if rgb == "pillow":
                        result.image = image.convert("RGB") if image.mode in _PILLOW_CONVERTS else to_rgb(image)
                    else:
                        result.image = to_rgb(oriented(image))
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
        result.image = result.crops = result.encoded = None
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


# Pillow refuses a whole PNG whose one compressed text chunk inflates past 1 MiB: a large ComfyUI
# workflow would make the image an error row. The evidence reader caps a chunk at 4 MiB itself.
MAX_PNG_TEXT_CHUNK = 4 << 20


def set_worker_limits(max_pixels: int) -> None:
    """Make Pillow's own decompression-bomb limit this process's ``max_pixels`` (Pillow refuses
    above twice its MAX_IMAGE_PIXELS), and let a PNG text chunk inflate to MAX_PNG_TEXT_CHUNK (Pillow
    still caps all text at 64 MiB). For processes i2pscan owns (its decoding workers): in any other
    process Pillow's limits are left as they are, and ``decode`` refuses what exceeds either."""
    Image.MAX_IMAGE_PIXELS = max_pixels // 2
    PngImagePlugin.MAX_TEXT_CHUNK = MAX_PNG_TEXT_CHUNK


def _open_checked(data: bytes, max_pixels: int, max_image_bytes: int, result: Decoded,
                  path: str = "") -> Image.Image | None:
    """The image opened (its header read, no pixel decoded yet), or None with ``result.error``."""
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
    needed = width * height * image_bytes_per_pixel(image.mode)
    if needed > max_image_bytes:
        result.error = (f"decompression bomb: {width}x{height} {image.mode} pixels take {needed:,} bytes decoded, "
                        f"above the limit of {max_image_bytes:,}")
        return None
    return image


def image_bytes_per_pixel(mode: str) -> int:
    """Bytes a pixel of ``mode`` takes in a Pillow image (3-channel modes are held in 4 bytes)."""
    if mode in ("1", "L", "P"):
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _shrunk(image: Image.Image, side: int) -> Image.Image:
    """``image`` decoded and reduced to at most ``side`` px a side, never copied whole: a JPEG
    at a reduced DCT scale, 16-bit and float images through 8 bits in strips, modes that Pillow
    would convert whole before resampling (alpha, palette, CMYK...) converted to RGB and reduced
    a strip of rows at a time; then Pillow's thumbnail."""
    if image.format == "JPEG" and image.mode in ("L", "RGB", "CMYK"):
        image.draft(image.mode, (side, side))
    image.load()
    info = image.info  # the EXIF orientation goes with the new image
    if high_bit_depth(image.mode):
        image = Image.fromarray(Scaler.of(image).image(image), "L")
    factor = max(1, max(image.size) // (2 * side))
    if factor > 1 and image.mode not in ("L", "RGB"):
        width, height = image.size
        rows = factor * max(1, STRIP_ROWS_PIXELS // (width * factor))
        small = Image.new("RGB", (-(-width // factor), -(-height // factor)))
        for top in range(0, height, rows):
            strip = to_rgb(image.crop((0, top, width, min(top + rows, height))))
            small.paste(strip.reduce(factor), (0, top // factor))
        image = small
    image.info = info
    image.thumbnail((side, side))
    return image


STRIP_ROWS_PIXELS = 1 << 22  # pixels a strip of _shrunk holds


def _decode_crops(data: bytes, image: Image.Image, boxes, rgb: str, result: Decoded, encoded_jpeg: bool = False) -> None:
    """``result.crops``: the RGB pixels of ``boxes(width, height)`` (of the image as ``rgb``
    orients it), from JPEG regions where exact, else from the whole image decoded in its own mode
    with the conversion to RGB applied to each crop (every conversion is per pixel, and 16-bit
    and float scaling takes its range from the whole image, read in strips)."""
    orientation = orientation_of(image) if rgb == "i2p" else 1
    width, height = image.size
    size = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
    stored = [stored_box(tuple(int(v) for v in b), orientation, width, height) for b in boxes(*size)]
    crops = None
    if image.format == "JPEG":
        layout = region.jpeg_layout(data)
        if layout is not None and (layout.width, layout.height) == (width, height):
            if encoded_jpeg and layout.exact:
                result.encoded = data
                result.width, result.height = size
                return
            crops = region.decode_regions(data, layout, stored)
            result.region = crops is not None
    if crops is None:
        image.load()
        scaler = Scaler.of(image) if high_bit_depth(image.mode) else None
        if rgb == "pillow" and image.mode in _PILLOW_CONVERTS:
            crops = [np.asarray(image.crop(b).convert("RGB")) for b in stored]
        else:
            crops = [np.asarray(to_rgb(image.crop(b), scaler)) for b in stored]
    if orientation != 1:
        crops = [np.asarray(Image.fromarray(c).transpose(TRANSPOSE[orientation])) for c in crops]
    result.crops = crops
    result.width, result.height = size


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
