"""Pillow images to what the model reads: EXIF orientation, and every Pillow mode in 8-bit RGB.

Every conversion here is per pixel (16-bit and float scaling takes its range from the whole image,
read a strip of rows at a time), so converting a crop gives exactly the pixels of the converted
whole image's crop: decode.py converts crops, never a second copy of a whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image, ImageCms, ImageOps

_EXIF_ORIENTATION = 0x0112
# what ImageOps.exif_transpose does for each orientation
TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def orientation_of(image: Image.Image) -> int:
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # broken EXIF: keep the stored orientation rather than lose the image
        return 1
    return value if value in TRANSPOSE else 1


def oriented(image: Image.Image) -> Image.Image:
    orientation = orientation_of(image)
    if orientation == 1:
        return image  # exif_transpose would copy the whole image for nothing
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image


def stored_box(box: tuple[int, int, int, int], orientation: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The box of the stored image (``width`` x ``height``) whose pixels, transposed as
    ``orientation`` says, are ``box`` of the oriented image."""
    left, top, right, bottom = box
    def stored(x: int, y: int) -> tuple[int, int]:  # where oriented pixel (x, y) is stored
        return {1: (x, y), 2: (width - 1 - x, y), 3: (width - 1 - x, height - 1 - y), 4: (x, height - 1 - y),
                5: (y, x), 6: (y, height - 1 - x), 7: (width - 1 - y, height - 1 - x), 8: (width - 1 - y, x)}[orientation]
    (x0, y0), (x1, y1) = stored(left, top), stored(right - 1, bottom - 1)
    return min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1


_LAB_TO_SRGB = None


def high_bit_depth(mode: str) -> bool:
    return mode.startswith("I;16") or mode in ("I", "F")


def to_rgb(image: Image.Image, scaler: "Scaler | None" = None) -> Image.Image:
    """``image`` in 8-bit RGB; ``scaler``: the 16-bit/float range to use (default: the image's own)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if high_bit_depth(mode):
        return Image.fromarray((scaler or Scaler.of(image)).image(image), "L").convert("RGB")
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


STRIP_VALUES = 1 << 22  # values per strip when a whole 16-bit or float image is read (32 MiB as float64)


@dataclass(frozen=True)
class Scaler:
    """How a 16-bit, 32-bit or float single-channel image maps to 8 bits: its finite range (non-
    finite values count as 0) and the scale that range calls for. Read from the image a strip of
    rows at a time, so that no float64 copy of the whole image is ever made."""

    lo: float
    hi: float
    scale: float | None  # None: unknown range, stretched to the full 8 bits
    any_finite: bool

    @classmethod
    def of(cls, image: Image.Image) -> "Scaler":
        lo, hi, any_finite = math.inf, -math.inf, False
        dtype = None
        for strip in strips(image):
            dtype = strip.dtype
            finite = np.isfinite(strip) if strip.dtype.kind == "f" else None
            if finite is not None:
                if not finite.any():
                    lo, hi = min(lo, 0.0), max(hi, 0.0)  # where every value is non-finite, they count as 0
                    continue
                any_finite = True
                if not finite.all():
                    lo, hi = min(lo, 0.0), max(hi, 0.0)
                strip = strip[finite]
            else:
                any_finite = True
            lo, hi = min(lo, float(strip.min())), max(hi, float(strip.max()))
        if dtype is not None and dtype.kind == "f":
            scale = 255.0 if lo >= 0.0 and hi <= 1.0 else None
        elif hi <= 255:
            scale = 1.0
        elif hi <= 65535 and lo >= 0:
            scale = 255.0 / 65535.0
        else:
            scale = None
        return cls(lo, hi, scale, any_finite)

    def __call__(self, array: np.ndarray) -> np.ndarray:
        """``array`` (any part of the image) in 8 bits."""
        if not self.any_finite:
            return np.zeros(array.shape, np.uint8)
        a = array.astype(np.float64)
        if array.dtype.kind == "f":
            a[~np.isfinite(a)] = 0.0
        scale = self.scale
        if scale is None:  # unknown range: stretch to the full 8 bits
            a = (a - self.lo) * (255.0 / (self.hi - self.lo)) if self.hi > self.lo else np.zeros_like(a)
            scale = 1.0
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)

    def image(self, image: Image.Image) -> np.ndarray:
        """The whole ``image`` in 8 bits, converted a strip of rows at a time."""
        out = np.empty((image.height, image.width), np.uint8)
        row = 0
        for strip in strips(image):
            out[row:row + len(strip)] = self(strip)
            row += len(strip)
        return out


def strips(image: Image.Image) -> Iterator[np.ndarray]:
    rows = max(1, STRIP_VALUES // max(1, image.width))
    for top in range(0, image.height, rows):
        yield np.asarray(image.crop((0, top, image.width, min(top + rows, image.height))))


