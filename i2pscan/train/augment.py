"""Training augmentations, built from the pixel operations of io/pixels.py."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from i2pscan.io.preprocess import Preprocess
from i2pscan.io.pixels import flip_horizontal, gaussian_blur, jpeg_roundtrip

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class Augment:
    """Training augmentations (DESIGN §1.2 step 6), applied to both classes alike."""

    flip: float = 0.5
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.0, 3.0)
    jpeg_p: float = 0.5
    jpeg_quality: tuple[int, int] = (30, 100)


class TrainTransform:
    """Random crop (no resize), flip, Gaussian blur and JPEG re-encoding -> Tensor[1, 3, S, S].

    The randomness of image ``index`` in ``epoch`` comes from (seed, epoch, index) alone, so a run
    gives the same batches whatever the number of workers, and a resumed run the same as an
    uninterrupted one.
    """

    def __init__(self, preprocess: Preprocess, augment: Augment, seed: int):
        self.preprocess = preprocess
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __call__(self, image: Image.Image, index: int) -> torch.Tensor:
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}")
        a, s = self.augment, self.preprocess.crop_size
        x = rng.randint(0, max(image.width - s, 0))
        y = rng.randint(0, max(image.height - s, 0))
        crop = image.crop((x, y, min(x + s, image.width), min(y + s, image.height)))
        if rng.random() < a.flip:
            crop = flip_horizontal(crop)
        if rng.random() < a.blur_p:
            crop = gaussian_blur(crop, rng.uniform(*a.blur_sigma))
        if rng.random() < a.jpeg_p:
            crop = jpeg_roundtrip(crop, rng.randint(*a.jpeg_quality))
        return self.preprocess.normalise(np.asarray(crop))[None]

