"""Region decoding of JPEG: decode only the rows and columns that the crops need.

libjpeg-turbo decompresses a region (partial decompression: entropy decoding up to the region's
last row, inverse DCT and colour conversion inside it only); nvImageCodec's CPU backend exposes it
(``nvidia-nvimgcodec-cu13``, a wheel that bundles its libjpeg-turbo: no system library needed). Its
regions are bit-identical to Pillow's full decode and crop (tests/io/test_region.py holds that for
baseline, progressive, restart-marker, greyscale, CMYK and 4:4:4/4:2:2/4:2:0 files); where that
cannot be had, :func:`decode_regions` answers None and the caller decodes the whole image:

* a file that is not a plain 8-bit Huffman JPEG (arithmetic, lossless, 12-bit), an RGB-coded,
  YCCK or CMYK-without-Adobe-marker file, or one whose marker structure is not complete (no end-of-image marker after its first
  scan: truncated files stay the error rows a full decode gives);
* nvImageCodec missing (another platform) or failing on the file.

Crops that share rows are decoded as one band (the union of their columns), and several crops
spread over a large image as one band per row of crops, each a region decode, when that costs
less than the whole image (:func:`plan_bands`). In a file with restart markers a band's entropy
decoding starts at the restart interval above it (io/restart.py), not at the first row.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from i2pscan.io.restart import band_stream

log = logging.getLogger("i2pscan")

Box = tuple[int, int, int, int]  # left, top, right, bottom (exclusive), in stored pixels

_SOF_HUFFMAN = (0xC0, 0xC1, 0xC2)  # baseline, extended sequential, progressive
_SOF_OTHER = (0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
_STANDALONE = (0x01, *range(0xD0, 0xD8))  # TEM, RST0-7: markers without a length
ENTROPY_SHARE = 0.35  # the share of a full decode's time spent in entropy decoding (measured, 24 MP photos)
BAND_GAIN = 0.8  # bands must cost at most this share of a full decode
SWITCH = "I2PSCAN_REGION_DECODE"  # "0": decode every JPEG whole (a benchmark's baseline, or a way out)


@dataclass(frozen=True)
class JpegLayout:
    """What the header says: the frame, and whether a region decode can be exact."""

    width: int
    height: int
    components: int
    exact: bool  # a plain 8-bit Huffman JPEG of 1, 3 (YCbCr) or 4 (Adobe CMYK) components, complete
    why: str = ""  # when not ``exact``: why not
    # for io/restart.py: the frame's marker and offset, the MCU size in pixels, the restart interval
    # (MCUs; 0: none), the first scan's offset, where its entropy-coded data starts, its components
    sof: int = 0
    sof_at: int = 0
    mcu: tuple[int, int] = (8, 8)
    restart: int = 0
    scan_at: int = 0
    data_at: int = 0
    scan_components: int = 0


def jpeg_layout(data: bytes) -> JpegLayout | None:
    """Walk the markers of a JPEG up to its first scan; None when ``data`` is not a JPEG whose
    header can be read. Never raises."""
    try:
        return _layout(data)
    except (IndexError, struct.error, ValueError):
        return None


def _layout(data: bytes) -> JpegLayout | None:
    if data[:2] != b"\xff\xd8":
        return None
    pos, n = 2, len(data)
    sof = adobe = None
    restart = 0
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill bytes before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        body = data[pos + 4:pos + 2 + length]
        if marker in _SOF_HUFFMAN or marker in _SOF_OTHER:
            sof = (marker, body, pos)
        elif marker == 0xEE and body[:5] == b"Adobe" and len(body) >= 12:
            adobe = body[11]
        elif marker == 0xDD:  # DRI: the restart interval
            restart = struct.unpack(">H", body[:2])[0]
        elif marker == 0xDA:  # start of scan: the header ends here
            return _verdict(data, pos, sof, adobe, restart, body[0], pos + 2 + length)
        pos += 2 + length
    return None


def _verdict(data: bytes, sos: int, sof, adobe: int | None, restart: int, scan_components: int,
             data_at: int) -> JpegLayout | None:
    if sof is None:
        return None
    marker, body, sof_at = sof
    precision, height, width, ncomp = body[0], *struct.unpack(">HH", body[1:5]), body[5]
    ids = tuple(body[6 + 3 * i] for i in range(ncomp))
    why = ""
    if marker not in _SOF_HUFFMAN:
        why = "not a Huffman-coded sequential or progressive JPEG"
    elif precision != 8:
        why = f"{precision}-bit samples"
    elif ncomp not in (1, 3, 4):
        why = f"{ncomp} components"
    elif ncomp == 3 and (adobe == 0 or ids == (82, 71, 66)):
        why = "RGB-coded"
    elif ncomp == 4 and adobe != 0:
        why = "YCCK" if adobe else "CMYK without an Adobe marker"  # decoded inverted there, unlike Pillow
    elif data.rfind(b"\xff\xd9") < sos:
        why = "no end-of-image marker (truncated?)"
    hmax = max(body[7 + 3 * i] >> 4 for i in range(ncomp))
    vmax = max(body[7 + 3 * i] & 15 for i in range(ncomp))
    mcu = (8 * hmax, 8 * vmax) if scan_components > 1 else (8, 8)
    return JpegLayout(width, height, ncomp, exact=not why, why=why, sof=marker, sof_at=sof_at, mcu=mcu,
                      restart=restart, scan_at=sos, data_at=data_at, scan_components=scan_components)


def plan_bands(boxes: Sequence[Box], width: int, height: int) -> list[Box] | None:
    """The regions to decode for ``boxes`` (crops within a ``width`` x ``height`` image): crops
    whose rows overlap share one band spanning their columns. None when decoding the whole image
    costs about as much (entropy decoding runs from the top to each band's last row, then inverse
    DCT and colour conversion inside the band)."""
    bands: list[list[int]] = []
    for left, top, right, bottom in sorted(boxes, key=lambda b: (b[1], b[0])):
        if bands and top < bands[-1][3]:  # rows overlap the previous band: widen it
            band = bands[-1]
            band[0], band[2], band[3] = min(band[0], left), max(band[2], right), max(band[3], bottom)
        else:
            bands.append([left, top, right, bottom])
    cost = sum(ENTROPY_SHARE * width * b[3] + (1 - ENTROPY_SHARE) * (b[2] - b[0]) * (b[3] - b[1]) for b in bands)
    if len(bands) > 1 and cost > BAND_GAIN * width * height:
        return None
    return [tuple(b) for b in bands]


_decoder = None
_decoder_pid = None
_unavailable: str | None = None
_lock = threading.Lock()


def available() -> bool:
    """Whether nvImageCodec's CPU decoder can be used in this process (loaded on first call)."""
    return _get_decoder() is not None


def _get_decoder():
    global _decoder, _decoder_pid, _unavailable
    if os.environ.get(SWITCH, "1") == "0":
        return None
    if _decoder is not None and _decoder_pid == os.getpid():
        return _decoder
    if _unavailable is not None:
        return None
    with _lock:
        if _decoder is not None and _decoder_pid == os.getpid():
            return _decoder
        try:
            with _quiet_stderr():  # it names the GPU libraries it did not find, on fd 2
                from nvidia import nvimgcodec

                _decoder = (nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=1,
                                               backends=[nvimgcodec.Backend(nvimgcodec.CPU_ONLY)]),
                            # the stored orientation: decode.py maps crops through EXIF orientation itself
                            nvimgcodec.DecodeParams(apply_exif_orientation=False))
            _decoder_pid = os.getpid()
        except Exception as exc:  # not installed (another platform) or broken: the full decode it is
            _unavailable = f"{type(exc).__name__}: {exc}"
            log.debug("JPEG region decoding unavailable (%s): decoding whole images", _unavailable)
            return None
        differs = _self_check(_decoder)
        if differs:  # another nvImageCodec or Pillow whose pixels differ: exactness first
            _decoder, _unavailable = None, differs
            log.warning("JPEG region decoding is off: %s; decoding whole images", differs)
            return None
    return _decoder


def _self_check(loaded) -> str | None:
    """Regions of a few small JPEGs made here (4:2:0, 4:2:2 progressive, greyscale, restart markers)
    against Pillow's full decode: None when all are bit-identical, else what differs. Once per
    process, a few milliseconds: a library upgrade that changes a pixel turns region decoding off."""
    import io

    from PIL import Image
    from nvidia import nvimgcodec

    decoder, params = loaded
    yy, xx = np.mgrid[0:83, 0:117]
    pattern = np.stack([(xx * 7 + yy * 3) % 256, (yy * 11) % 256, ((xx ^ yy) * 5) % 256], -1).astype(np.uint8)
    cases = {"4:2:0": dict(quality=90), "4:2:2 progressive": dict(quality=80, subsampling=1, progressive=True),
             "restart markers": dict(quality=85, restart_marker_blocks=3)}
    boxes = [(0, 0, 117, 83), (13, 9, 61, 50), (50, 33, 117, 83)]
    try:
        for name, save in list(cases.items()) + [("greyscale", dict(quality=90, mode="L"))]:
            save = dict(save)
            image = Image.fromarray(pattern).convert(save.pop("mode", "RGB"))
            buf = io.BytesIO()
            image.save(buf, "JPEG", **save)
            data = buf.getvalue()
            whole = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            stream = nvimgcodec.CodeStream(data)
            for left, top, right, bottom in boxes:
                with _quiet_stderr():
                    out = decoder.decode(stream.get_sub_code_stream(
                        region=nvimgcodec.Region(start=(top, left), end=(bottom, right))), params=params)
                got = None if out is None else np.asarray(out.cpu())
                if got is not None and got.ndim == 3 and got.shape[2] == 1:
                    got = np.repeat(got, 3, axis=2)
                if got is None or not np.array_equal(got, whole[top:bottom, left:right]):
                    return f"its {name} pixels differ from Pillow's"
    except Exception as exc:  # noqa: BLE001 - whatever failed, the full decode is the safe answer
        return f"its self-check failed ({type(exc).__name__}: {exc})"
    return None


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def decode_regions(data: bytes, layout: JpegLayout, boxes: Sequence[Box]) -> list[np.ndarray] | None:
    """The RGB uint8 pixels (HxWx3) of each box of a JPEG whose ``layout`` is exact, decoded as
    regions; None when a region decode would not pay, is not available, or failed (then decode
    the whole image). Boxes are in stored pixels (before EXIF orientation)."""
    if not layout.exact or not boxes:
        return None
    bands = plan_bands(boxes, layout.width, layout.height)
    if bands is None:
        return None
    loaded = _get_decoder()
    if loaded is None:
        return None
    decoder, params = loaded
    from nvidia import nvimgcodec

    try:
        stream = nvimgcodec.CodeStream(data)
        pixels = []
        for left, top, right, bottom in bands:
            source, shift = stream, 0
            cut = band_stream(data, layout, top, bottom) if layout.restart else None
            if cut is not None:  # restart markers: skip the intervals above the band
                source, shift = nvimgcodec.CodeStream(cut[0]), cut[1]
            with _quiet_stderr():  # its warnings about a file it rejects go to fd 2
                image = decoder.decode(source.get_sub_code_stream(
                    region=nvimgcodec.Region(start=(top - shift, left), end=(bottom - shift, right))), params=params)
            if image is None:
                return None
            band = np.asarray(image.cpu())
            if band.shape[:2] != (bottom - top, right - left):
                return None
            if band.ndim == 2:
                band = band[:, :, None]
            if band.shape[2] == 1:
                band = np.repeat(band, 3, axis=2)
            if band.shape[2] != 3 or band.dtype != np.uint8:
                return None
            pixels.append(((left, top, right, bottom), band))
    except Exception as exc:  # a file it rejects is decoded whole (and so gets today's error, if any)
        log.debug("region decoding failed (%s): decoding the whole image", exc)
        return None
    out = []
    for left, top, right, bottom in boxes:
        (bl, bt, _, _), band = next(p for p in pixels if p[0][0] <= left and p[0][1] <= top
                                    and right <= p[0][2] and bottom <= p[0][3])
        out.append(np.ascontiguousarray(band[top - bt:bottom - bt, left - bl:right - bl]))
    return out
