"""Crops at native resolution and their normalisation: how a decoded image becomes model input.

Crops never resize (resampling would erase the traces a detector looks for); an image smaller
than the crop is padded (with the mean colour, zero after normalisation, or black as torchvision
pads).

Scans move crops as uint8 (:meth:`CropTransform.pack`: a quarter of float32's bytes through the
decode pool's pipes and Ray's object store) and normalise them where the model runs
(:meth:`Preprocess.normalise_batch`), to the same float32 values as :meth:`Preprocess.normalise`.
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


    def normalise_batch(self, pixels: torch.Tensor, extents: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 crops [B, 3, S, S] (on any device, padded with black by :meth:`CropTransform.pack`)
        -> float32 [B, 3, S, S] on the same device, equal to :meth:`normalise` bit for bit.
        ``extents`` [B, 4] (top, left, height, width of the image inside each canvas; None: none
        padded): for ``i2p`` the padding becomes 0 after normalisation (the mean colour)."""
        device = pixels.device
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        # a device tensor, not a Python number: CUDA divides by a host scalar as a product with its
        # reciprocal, which can differ from numpy's division in the last bit
        out = pixels.float().div_(torch.tensor(255.0, device=device)).sub_(mean).div_(std)
        if extents is not None and self.crop_mode != "torchvision":
            s = self.crop_size
            for i, (top, left, h, w) in enumerate(extents.tolist()):
                if (h, w) != (s, s):
                    keep = torch.zeros(s, s, dtype=torch.bool, device=device)
                    keep[top:top + h, left:left + w] = True
                    out[i].masked_fill_(~keep, 0.0)
        return out


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
        if origins[0] in grid:  # the centre once, first; a grid that repeats itself keeps its repeats
            grid.remove(origins[0])
        origins = origins[:1] + grid
    return origins[:n]


class CropTransform:
    """Deterministic crops for calibration and scanning: ``n`` crops per image -> Tensor[n, 3, S, S]."""

    def __init__(self, preprocess: Preprocess, n_crops: int = 1):
        self.preprocess = preprocess
        self.n_crops = n_crops

    def boxes(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """The crops of a ``width`` x ``height`` image: (left, top, right, bottom), clipped to it."""
        s = self.preprocess.crop_size
        return [(x, y, min(x + s, width), min(y + s, height))
                for x, y in crop_origins(width, height, s, self.n_crops, self.preprocess.crop_mode)]

    def crop_arrays(self, image: Image.Image) -> list[np.ndarray]:
        """The crops of a decoded RGB image as uint8 arrays (what ``decode(boxes=...)`` gives)."""
        return [np.asarray(image.crop(box)) for box in self.boxes(image.width, image.height)]

    def from_crops(self, crops: list[np.ndarray]) -> torch.Tensor:
        """uint8 crops (HxWx3) -> normalised float Tensor[n, 3, S, S], as ``__call__`` gives."""
        return torch.stack([self.preprocess.normalise(c) for c in crops])

    def pack(self, crops: list[np.ndarray]) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
        """uint8 crops (HxWx3, H and W at most S, the same for every crop of an image) -> one uint8
        array [n, 3, S, S], each crop centred on a black canvas, and where it is padded the extent
        (top, left, height, width) for :meth:`Preprocess.normalise_batch`; None when not."""
        s = self.preprocess.crop_size
        h, w = crops[0].shape[:2]
        if (h, w) == (s, s):
            return np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2)), None
        top, left = (s - h) // 2, (s - w) // 2
        out = np.zeros((len(crops), 3, s, s), np.uint8)
        for i, crop in enumerate(crops):
            out[i, :, top:top + h, left:left + w] = crop.transpose(2, 0, 1)
        return out, (top, left, h, w)

    def __call__(self, image: Image.Image, index: int) -> torch.Tensor:
        return self.from_crops(self.crop_arrays(image))
