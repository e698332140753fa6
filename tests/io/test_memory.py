"""Issue 21.5: the memory a decode takes is bounded by bytes, not pixels, and no conversion makes a
second whole-image copy: a worker's peak RSS stays under 1.5 GB on any file under the limits.

The files are made here, a row at a time (a 13000x13500 PNG of zeros is a few hundred KB)."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from i2pscan.io.decode import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_PIXELS, decode, image_bytes_per_pixel
from i2pscan.io.preprocess import CropTransform, Preprocess

PEAK_LIMIT = 1.5 * 2**30


def big_png(path: Path, width: int, height: int, bit_depth: int, color_type: int) -> Path:
    """A PNG of zeros (but one bright pixel per row), compressed a row at a time."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = bytearray(1 + width * channels * bit_depth // 8)
    z = zlib.compressobj(9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    with open(path, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)))
        parts = []
        for y in range(height):
            row[1 + (y % width)] = 0xFF
            parts.append(z.compress(bytes(row)))
            row[1 + (y % width)] = 0
            if len(parts) > 256:
                fh.write(chunk(b"IDAT", b"".join(parts)))
                parts = []
        parts.append(z.flush())
        fh.write(chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


PROBE = """
import resource, sys, time
from i2pscan.io.preprocess import CropTransform, Preprocess
from i2pscan.io.work import FileWork, ThumbWork
path, how = sys.argv[1], sys.argv[2]
started = time.perf_counter()
if how == "scan":
    item = FileWork(CropTransform(Preprocess(224, (0.5,) * 3, (0.25,) * 3), 9), uint8=True)(0, path)
    assert item.info.error is None and item.pixels.shape == (9, 3, 224, 224), item.info.error
else:
    item = ThumbWork(sys.argv[3])(0, path)
    assert item.info.error is None, item.info.error
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, time.perf_counter() - started)
"""


@pytest.mark.slow
@pytest.mark.parametrize("name, bit_depth, color_type", [("16-bit grey", 16, 0), ("16-bit RGBA", 16, 6),
                                                         ("8-bit RGB", 8, 2)])
def test_peak_memory_of_a_worker_on_the_largest_images_under_the_limits(tmp_path, name, bit_depth, color_type):
    """13000x13500 (175.5 MP, inside the default pixel limit): before, the 16-bit grey file peaked
    at 5.5 GB in a scan worker and 5.6 GB in the thumbnailer (float64 copies of the whole image)."""
    width, height = 13000, 13500
    assert width * height <= DEFAULT_MAX_PIXELS
    path = big_png(tmp_path / "big.png", width, height, bit_depth, color_type)
    for how in ("scan", "thumbnail"):
        r = subprocess.run([sys.executable, "-c", PROBE, str(path), how, str(tmp_path)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        peak, seconds = r.stdout.split()
        print(f"{name} {width}x{height}, {how}: peak RSS {int(peak) / 2**30:.2f} GiB, {float(seconds):.1f} s")
        assert int(peak) <= PEAK_LIMIT, f"{name} ({how}): peak RSS {int(peak) / 2**30:.2f} GiB"


def test_the_limit_counts_the_decoded_bytes(tmp_path):
    grey16 = big_png(tmp_path / "g16.png", 300, 200, 16, 0)
    rgb8 = big_png(tmp_path / "rgb.png", 300, 200, 8, 2)
    assert image_bytes_per_pixel("I;16") == 2 and image_bytes_per_pixel("RGB") == 4 and image_bytes_per_pixel("L") == 1
    limit = 300 * 200 * 3  # room for 2 bytes a pixel, not 4
    assert decode(str(grey16), max_image_bytes=limit).error is None
    refused = decode(str(rgb8), max_image_bytes=limit)
    assert refused.image is None and refused.error == (
        "decompression bomb: 300x200 RGB pixels take 240,000 bytes decoded, above the limit of 180,000")
    # every 8-bit RGB image under the pixel limit fits the default byte limit
    assert DEFAULT_MAX_PIXELS * image_bytes_per_pixel("RGB") <= DEFAULT_MAX_IMAGE_BYTES


def test_high_bit_depth_crops_and_thumbnails_scale_as_the_whole_image(tmp_path):
    """The range of a 16-bit image comes from all of it (read in strips), so a crop of a dark
    corner is scaled as the whole image's crop would be."""
    from PIL import Image

    import i2pscan.io.convert as convert

    values = np.zeros((120, 160), np.uint16)
    values[100:, 140:] = 60000  # the bright part lies outside the centre crop
    values[:50, :50] = np.arange(2500, dtype=np.uint16).reshape(50, 50) * 7
    Image.fromarray(values).save(tmp_path / "a.png")
    transform = CropTransform(Preprocess(40, (0.5,) * 3, (0.25,) * 3), 4)
    whole = decode(str(tmp_path / "a.png"))
    for strip_values in (7, 1000, 1 << 22):  # strips of one row, a few rows, the whole image
        convert.STRIP_VALUES = strip_values
        try:
            got = decode(str(tmp_path / "a.png"), boxes=transform.boxes)
        finally:
            convert.STRIP_VALUES = 1 << 22
        assert all(np.array_equal(a, b) for a, b in zip(got.crops, transform.crop_arrays(whole.image)))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16", "RGB"])
def test_thumbnails_shrink_before_converting_and_look_like_the_whole_image_shrunk(tmp_path, mode):
    from PIL import Image

    rng = np.random.default_rng(1)
    base = Image.fromarray(np.kron(rng.integers(0, 255, (12, 20, 4), np.uint8), np.ones((50, 50, 1), np.uint8)), "RGBA")
    image = base.convert("I;16") if mode == "I;16" else base.convert(mode)
    image.save(tmp_path / "a.png")
    got = decode(str(tmp_path / "a.png"), max_side=64)
    assert got.image.mode == "RGB" and max(got.image.size) == 64
    reference = decode(str(tmp_path / "a.png")).image
    reference.thumbnail((64, 64))
    assert got.image.size == reference.size
    diff = np.abs(np.asarray(got.image, np.int16) - np.asarray(reference, np.int16))
    assert diff.mean() < 4, diff.mean()  # a thumbnail, not bit-exact: composited before or after shrinking
