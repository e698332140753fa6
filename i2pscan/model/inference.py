"""The one numeric path from images to logits: finetune validation, evaluate and scan all use it.

Temperature and threshold are fitted on validation logits, so those logits must be the ones a scan
will produce: the same crops, the same way of combining them, the same delta arithmetic (the
delta is a separate float32 term, ``i2pscan.sparse.attach``), the same autocast policy (backbone
in bf16 on CUDA, fp32 elsewhere; the head always in fp32).

A crop policy is ``N:mean`` or ``N:max``: score N crops of each image and combine their logits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.nn.utils import parametrize

from i2pscan import console
from i2pscan.io.preprocess import CropTransform, Preprocess
from i2pscan.errors import I2PError
from i2pscan.model.device import autocast
from i2pscan.io.loader import ImageFiles, loader

COMBINE = ("mean", "max")
DEFAULT_POLICY = "1:mean"


def policy_key(crops: int, combine: str) -> str:
    """``1:mean``, ``9:max``, ...; one crop is the same under either combination."""
    return f"{crops}:{'mean' if crops == 1 else combine}"


def parse_policy(text: str) -> tuple[int, str]:
    """``"9:max"`` -> (9, "max"); raises I2PError for anything else."""
    crops, sep, combine = str(text).strip().partition(":")
    if not sep or not crops.isdigit() or int(crops) < 1 or combine not in COMBINE:
        raise I2PError(f"crop policy {text!r} is not N:mean or N:max (N crops per image, e.g. 9:max)")
    return int(crops), combine


def normalise_policies(policies: Sequence[str]) -> tuple[str, ...]:
    """Sorted, unique policy keys, always with the centre crop ``1:mean``."""
    keys = {policy_key(*parse_policy(p)) for p in policies} | {DEFAULT_POLICY}
    return tuple(sorted(keys, key=lambda k: (int(k.split(":")[0]), k)))


@torch.no_grad()
def logits(backbone, head, view: str, pixels: torch.Tensor, precision: str = "bf16") -> torch.Tensor:
    """Head logits (float32, on the backbone's device) of preprocessed crops [B, 3, S, S];
    ``precision`` is the backbone's on CUDA (``features.autocast``)."""
    device = backbone.device
    pixels = torch.as_tensor(pixels)
    with parametrize.cached(), autocast(device, precision):
        taps = backbone.taps(pixels.to(device, non_blocking=True), list(head.config.layers), view)
    with torch.autocast(device.type, enabled=False):
        out, _ = head({b: t.float() for b, t in taps.items()})
    return out.float()


def combine(crop_logits: torch.Tensor, crops: int, how: str) -> torch.Tensor:
    """[n * crops] logits, image-major -> [n]."""
    per_image = crop_logits.view(-1, crops)
    return per_image.mean(dim=1) if how == "mean" else per_image.max(dim=1).values


@torch.no_grad()
def sample_logits(backbone, head, view: str, paths: Sequence[str], policies: Sequence[str] = (DEFAULT_POLICY,),
                  batch_size: int = 32, workers: int = 0, description: str = "validate"
                  ) -> tuple[dict[str, np.ndarray], list[int]]:
    """({policy: combined logits of the decodable files}, their positions in ``paths``): one
    decoding pass per crop count. Raises I2PError when no file decodes."""
    head.eval()
    preprocess = Preprocess.from_dict(backbone.preprocessing())
    by_crops: dict[int, list[str]] = {}
    for key in policies:
        crops, _ = parse_policy(key)
        by_crops.setdefault(crops, []).append(key)
    out: dict[str, np.ndarray] = {}
    kept: list[int] | None = None
    for crops, keys in sorted(by_crops.items()):
        chunks: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        positions: list[int] = []
        dataset = ImageFiles(paths, CropTransform(preprocess, crops))
        label = description if crops == 1 else f"{description} ({crops} crops)"
        with console.progress(len(paths), label) as bar:
            for batch in loader(dataset, batch_size, workers, pin_memory=backbone.device.type == "cuda"):
                if batch.pixels is not None:
                    z = logits(backbone, head, view, batch.pixels).cpu()
                    for k in keys:
                        chunks[k].append(combine(z, crops, parse_policy(k)[1]))
                    positions.extend(batch.items[i].index for i in batch.ok)
                bar.advance(len(batch.items))
        if kept is not None and positions != kept:
            raise I2PError("the validation images decoded differently between passes")
        kept = positions
        for k in keys:
            out[k] = torch.cat(chunks[k]).numpy() if chunks[k] else np.zeros(0, np.float32)
    if not kept:
        raise I2PError("none of the validation images could be decoded")
    return out, kept
