"""Photo-like JPEGs for the decoding and scan benchmarks: a scikit-image photograph (noise without
scikit-image), resized, plus sensor-like noise, so that JPEG's entropy coding works as on a photo."""

from __future__ import annotations

import os

import numpy as np


def photo_jpeg(folder: str, name: str, size: tuple[int, int], seed: list[int], **save) -> str:
    """Write ``folder/name.jpg`` at ``size`` (width, height), quality 90 (``save``: more Pillow options)."""
    from PIL import Image

    try:
        import skimage.data

        base = Image.fromarray(skimage.data.astronaut())
    except ImportError:
        base = Image.fromarray(np.random.default_rng(0).integers(0, 255, (512, 512, 3), np.uint8))
    rng = np.random.default_rng(seed)
    img = np.asarray(base.resize(size, Image.Resampling.BICUBIC)).astype(np.int16)
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    path = os.path.join(folder, f"{name}.jpg")
    Image.fromarray(img).save(path, quality=90, **save)
    return path
