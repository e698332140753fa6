"""Pixel operations on decoded images: JPEG re-encoding, flips, blur, resizing, and the robustness
perturbations (``jpeg:Q``, ``blur:SIGMA``, ``resize:F``) that evaluation applies before scoring.
Training augmentations (train/augment.py) compose the same operations."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, features

from i2pscan.errors import ConfigError


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def flip_horizontal(image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def gaussian_blur(image: Image.Image, sigma: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius=sigma))


def rescale(image: Image.Image, factor: float) -> Image.Image:
    """Bilinear resize by ``factor`` (at least 1x1)."""
    size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
    return image.resize(size, Image.Resampling.BILINEAR)


def save_image(array: np.ndarray, path: str | Path, quality: int | None = None) -> None:
    """Write an HxWx3 uint8 array (PNG, or JPEG when the suffix says so)."""
    image = Image.fromarray(np.ascontiguousarray(array), "RGB")
    if str(path).lower().endswith((".jpg", ".jpeg")):
        image.save(path, quality=quality or 95)
    else:
        image.save(path)


THUMBNAIL_FORMAT = "webp" if features.check("webp") else "jpg"


def save_thumbnail(image: Image.Image, dest: str | Path, size: int) -> None:
    """Shrink ``image`` (in place) to at most ``size`` px a side and save it to ``dest`` as
    THUMBNAIL_FORMAT (WebP where Pillow has it, else JPEG)."""
    image.thumbnail((size, size))
    if THUMBNAIL_FORMAT == "webp":
        image.save(dest, "WEBP", quality=80, method=4)
    else:
        image.save(dest, "JPEG", quality=85)


PERTURBATIONS = ("jpeg", "blur", "resize")


def perturb(image: Image.Image, spec: str) -> Image.Image:
    """Robustness perturbations as GenImage/RINE report them: ``jpeg:Q``, ``blur:SIGMA``, ``resize:F``."""
    kind, _, value = spec.partition(":")
    v = float(value)
    if kind == "jpeg":
        return jpeg_roundtrip(image, int(v))
    if kind == "blur":
        return gaussian_blur(image, v)
    if kind == "resize":
        return rescale(image, v)
    raise ValueError(f"unknown perturbation {spec!r}")


def parse_perturbation(spec: str) -> str:
    """Validate ``KIND:VALUE`` and return it normalised; raises I2PError."""
    kind, sep, value = spec.partition(":")
    try:
        v = float(value)
    except ValueError:
        v = None
    ok = sep and kind in PERTURBATIONS and v is not None and (
        (kind == "jpeg" and 1 <= v <= 100) or (kind == "blur" and v >= 0) or (kind == "resize" and 0 < v <= 4))
    if not ok:
        raise ConfigError(f"`perturb` {spec}: expected jpeg:QUALITY (1-100), blur:SIGMA or resize:FACTOR")
    return f"{kind}:{value}"
