"""Crops at native resolution and their normalisation: how a decoded image becomes model input.

Crops never resize (resampling would erase the traces a detector looks for); an image smaller
than the crop is padded (with the mean colour, zero after normalisation, or black as torchvision
pads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from PIL import Image


CROP_MODES = ("i2p", "torchvision")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes model input: a crop of ``crop_size`` at native resolution, normalised.

    ``crop_mode`` ``i2p``: centre offset rounded down, a small image padded with the mean colour.
    ``torchvision``: as torchvision's ``CenterCrop`` (the published detectors' authors use it):
    offset ``int(round(d / 2))`` (half to even), a small image padded with black; and the image
    decoded as their code reads it (``rgb_mode``: ``decode(rgb="pillow")``).
    """

    crop_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_mode: str = "i2p"

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["crop_size"]), tuple(float(x) for x in d["mean"]), tuple(float(x) for x in d["std"]),
                   str(d.get("crop_mode", "i2p")))

    @property
    def rgb_mode(self) -> str:
        """How files are decoded for this preprocessing (``decode``'s ``rgb``)."""
        return "pillow" if self.crop_mode == "torchvision" else "i2p"

    def to_dict(self) -> dict:
        d = {"crop_size": self.crop_size, "mean": list(self.mean), "std": list(self.std)}
        if self.crop_mode != "i2p":
            d["crop_mode"] = self.crop_mode
        return d

    def normalise(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 HxWx3 (H, W <= crop) -> float CxSxS, centred in a canvas of the padding colour."""
        s = self.crop_size
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        norm = (pixels.astype(np.float32) / 255.0 - mean) / std
        h, w = norm.shape[:2]
        if self.crop_mode == "torchvision" and (h < s or w < s):
            out = np.broadcast_to(-mean / std, (s, s, 3)).astype(np.float32)
        else:
            out = np.zeros((s, s, 3), np.float32)
        top, left = (s - h) // 2, (s - w) // 2
        out[top:top + h, left:left + w] = norm
        return torch.from_numpy(out.transpose(2, 0, 1).copy())


def crop_origins(width: int, height: int, size: int, n: int, crop_mode: str = "i2p") -> list[tuple[int, int]]:
    """Top-left corners of ``n`` crops: the centre first, then the four corners, then a grid."""
    if n < 1:
        raise ValueError("n must be >= 1")
    max_x, max_y = max(width - size, 0), max(height - size, 0)
    centre = (int(round(max_x / 2.0)), int(round(max_y / 2.0))) if crop_mode == "torchvision" else (max_x // 2, max_y // 2)
    origins = [centre, (0, 0), (max_x, 0), (0, max_y), (max_x, max_y)]
    if n > len(origins):
        g = math.ceil(math.sqrt(n))
        grid = [(round(max_x * i / max(g - 1, 1)), round(max_y * j / max(g - 1, 1))) for j in range(g) for i in range(g)]
        origins = origins[:1] + [o for o in grid if o != origins[0]]
    return origins[:n]


class CropTransform:
    """Deterministic crops for calibration and scanning: ``n`` crops per image -> Tensor[n, 3, S, S]."""

    def __init__(self, preprocess: Preprocess, n_crops: int = 1):
        self.preprocess = preprocess
        self.n_crops = n_crops

    def __call__(self, image: Image.Image, index: int) -> torch.Tensor:
        s = self.preprocess.crop_size
        crops = []
        for x, y in crop_origins(image.width, image.height, s, self.n_crops, self.preprocess.crop_mode):
            # crop in Pillow first: converting a whole 12 MP image to an array costs as much as decoding it
            box = (x, y, min(x + s, image.width), min(y + s, image.height))
            crops.append(self.preprocess.normalise(np.asarray(image.crop(box))))
        return torch.stack(crops)

