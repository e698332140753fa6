"""A small labelled toy sample, made offline: photographs cut into tiles, and "generated" tiles.

Real images are tiles of the photographs bundled with scikit-image. Synthetic ones come from toy
generators that, like real image generators, synthesise at half resolution and upsample with
weights of their own, leaving a period-2 trace that differs in detail from one to the next: a
transposed convolution (``tconv``, as in GAN decoders), a sub-pixel convolution
(``pixelshuffle``, as in super-resolution networks), and bilinear upsampling with a per-phase
gain (``bilinear``). The layout is GenImage's, ``OUT/<generator>/{train,val}/{nature,ai}``, so
that one generator trains a detector and the others test how it generalises.

This demonstrates the pipeline; it says nothing about real generators.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from i2pscan.io.pixels import save_image
from i2pscan.errors import ConfigError, MissingDependency

GENERATORS = ("tconv", "pixelshuffle", "bilinear")
_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
           "brick", "grass", "gravel", "camera", "moon", "coins", "clock", "cell")


def photographs() -> list[np.ndarray]:
    """The bundled scikit-image photographs as HxWx3 uint8 arrays."""
    try:
        import skimage.data
    except ImportError as exc:
        raise MissingDependency("the demo data needs scikit-image: pip install 'i2pscan[demo]'") from exc
    images = []
    for name in _PHOTOS:
        try:
            a = np.asarray(getattr(skimage.data, name)())
        except Exception:  # a file this scikit-image build does not bundle
            continue
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        images.append(np.ascontiguousarray(a[..., :3]).astype(np.uint8))
    if not images:
        raise MissingDependency("scikit-image bundles none of the demo photographs")
    return images


def _tile(rng: np.random.Generator, photos: list[np.ndarray], size: int) -> np.ndarray:
    while True:
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        if h >= size and w >= size:
            y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
            return photo[y:y + size, x:x + size]


def _downsample(tile: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(tile.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    return F.avg_pool2d(t, 2)


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    return (t[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255.0 + 0.5).astype(np.uint8)


class ToyGenerator:
    """One 2x upsampling generator with weights drawn once from its seed."""

    def __init__(self, kind: str, seed: int):
        if kind not in GENERATORS:
            raise ConfigError(f"unknown toy generator {kind!r}; choose from {', '.join(GENERATORS)}")
        self.kind = kind
        g = torch.Generator().manual_seed(seed)
        if kind == "tconv":
            k = 1.0 + 0.35 * torch.randn(3, 1, 4, 4, generator=g)
            self.kernel = k / k.sum(dim=(2, 3), keepdim=True) * 4.0  # each output phase gets its own gain
        elif kind == "pixelshuffle":
            identity = torch.zeros(12, 1, 3, 3)
            identity[:, 0, 1, 1] = 1.0
            self.kernel = identity + 0.12 * torch.randn(12, 1, 3, 3, generator=g)  # 4 sub-pixel filters per colour
        else:
            self.gain = 1.0 + 0.10 * torch.randn(3, 2, 2, generator=g)

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        low = _downsample(tile)
        if self.kind == "tconv":
            up = F.conv_transpose2d(low, self.kernel, stride=2, padding=1, groups=3)
        elif self.kind == "pixelshuffle":
            x = F.pad(low, (1, 1, 1, 1), mode="replicate").repeat_interleave(4, dim=1)
            up = F.pixel_shuffle(F.conv2d(x, self.kernel, groups=12), 2)
        else:
            up = F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
            h, w = up.shape[-2:]
            up = up * self.gain.repeat(1, h // 2, w // 2)[None]
        return _to_uint8(up)


def make_toy_dataset(out: str | os.PathLike, train_per_class: int = 160, val_per_class: int = 80, tile: int = 96,
                     generators: tuple[str, ...] = GENERATORS, seed: int = 0) -> dict[str, int]:
    """Write the toy sample under ``out``; returns the number of files per generator."""
    out = Path(out)
    if tile % 2:
        raise ConfigError("`tile` must be even")
    photos = photographs()
    counts = {}
    for gi, kind in enumerate(generators):
        generator = ToyGenerator(kind, seed=seed * 1000 + gi)
        rng = np.random.default_rng([seed, gi])
        n = 0
        for split, per_class in (("train", train_per_class), ("val", val_per_class)):
            for folder in ("nature", "ai"):
                (out / kind / split / folder).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                save_image(_tile(rng, photos, tile), out / kind / split / "nature" / f"{i:05d}.png")
                save_image(generator(_tile(rng, photos, tile)), out / kind / split / "ai" / f"{i:05d}.png")
                n += 2
        counts[kind] = n
    return counts
