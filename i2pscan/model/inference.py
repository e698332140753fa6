"""The only place a logit is computed, for every architecture (i2p, rine, univfd): finetune's
validation, evaluate, local scans and Ray scans all come through here.

Temperature and threshold are fitted on validation logits, so those logits must be the ones a scan
will produce: the same decoding (the scan's decode pool), the same crops, the same way of
combining them, the same delta arithmetic (a separate float32 term, ``sparse.attach``), the same
autocast policy (the backbone in the model's precision on CUDA, fp32 elsewhere; heads always in
fp32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import dataclasses

import numpy as np
import torch
from torch.nn.utils import parametrize

from i2pscan.progress import progress
from i2pscan.errors import InputError
from i2pscan.io.pool import scan_batches
from i2pscan.io.preprocess import CropTransform, Preprocess
from i2pscan.io.work import FileWork
from i2pscan.model.backbone import Backbone
from i2pscan.model.device import autocast
from i2pscan.model.policy import DEFAULT_POLICY, parse_policy

ARCHITECTURES = ("i2p", "rine", "univfd")


@dataclass(frozen=True)
class Model:
    """What turns crops into logits: a backbone, a head, and how the head reads the backbone.

    ``architecture`` ``i2p``: the head reads the class tokens (``view``) of its critical layers;
    ``rine``: RINE's head reads every block's ``ln_2`` class token; ``univfd``: UnivFD's linear
    probe reads the projected CLIP embedding. ``precision``: the backbone's arithmetic on CUDA
    (``bf16`` or ``fp32``; a CPU always computes in fp32). ``preprocess``: how uint8 crops are
    normalised (on the model's device) before the backbone reads them.
    """

    backbone: Backbone
    head: torch.nn.Module
    architecture: str = "i2p"
    view: str = "cls"
    precision: str = "bf16"
    preprocess: Preprocess | None = None

    @property
    def device(self) -> torch.device:
        return self.backbone.device


@torch.no_grad()
def logits(model: Model, pixels, extents=None) -> torch.Tensor:
    """Head logits (float32, on the model's device) of crops [B, 3, S, S] (an array or a tensor):
    uncalibrated, one per crop. Float crops are taken as normalised; uint8 crops (a scan's) are
    copied to the device as they are (non-blocking from pinned memory) and normalised there by
    ``model.preprocess``, with ``extents`` (Batch.extents) for images smaller than the crop."""
    device = model.device
    pixels = torch.as_tensor(pixels).to(device, non_blocking=True)
    if pixels.dtype == torch.uint8:
        if model.preprocess is None:
            raise ValueError("uint8 crops need the model's preprocessing (Model.preprocess)")
        pixels = model.preprocess.normalise_batch(pixels, None if extents is None else torch.as_tensor(extents))
    with parametrize.cached(), autocast(device, model.precision):
        if model.architecture == "i2p":
            taps = model.backbone.taps(pixels, list(model.head.config.layers), model.view)
        elif model.architecture == "rine":
            taps = model.backbone.ln2_class_tokens(pixels)
        elif model.architecture == "univfd":
            taps = model.backbone.embed(pixels)
        else:
            raise ValueError(f"unknown architecture {model.architecture!r}")
    with torch.autocast(device.type, enabled=False):  # heads run in fp32
        if model.architecture == "i2p":
            out, _ = model.head({b: t.float() for b, t in taps.items()})
        else:
            out = model.head(taps.float())
    return out.float()


def combine(crop_logits: torch.Tensor, crops: int, how: str) -> torch.Tensor:
    """[n * crops] logits, image-major -> [n]: the mean or the max of each image's crops."""
    per_image = crop_logits.view(-1, crops)
    return per_image.mean(dim=1) if how == "mean" else per_image.max(dim=1).values


def probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Calibrated probability of being synthetic: sigmoid(logit / temperature)."""
    return torch.sigmoid(logits / temperature)


def score_batch(model: Model, pixels, crops: int, how: str, temperature: float,
                extents=None) -> tuple[list[float], list[float]]:
    """(combined logit, calibrated score) of each image whose ``crops`` crops are in ``pixels``."""
    combined = combine(logits(model, pixels, extents), crops, how)
    return combined.cpu().tolist(), probabilities(combined, temperature).cpu().tolist()


@torch.no_grad()
def file_logits(model: Model, paths: Sequence[str], preprocess: Preprocess,
                policies: Sequence[str] = (DEFAULT_POLICY,), batch_size: int = 32, workers: int = 0,
                description: str = "validate") -> tuple[dict[str, np.ndarray], list[int]]:
    """({policy: combined logits of the decodable files}, their positions in ``paths``), decoded
    by the scan's own decode pool: one decoding pass per crop count. Raises I2PError when no file
    decodes."""
    model.head.eval()
    if model.preprocess is None:
        model = dataclasses.replace(model, preprocess=preprocess)
    by_crops: dict[int, list[str]] = {}
    for key in policies:
        crops, _ = parse_policy(key)
        by_crops.setdefault(crops, []).append(key)
    out: dict[str, np.ndarray] = {}
    kept: list[int] | None = None
    for crops, keys in sorted(by_crops.items()):
        chunks: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        positions: list[int] = []
        work = FileWork(CropTransform(preprocess, crops), uint8=True)
        label = description if crops == 1 else f"{description} ({crops} crops)"
        with progress(len(paths), label) as bar:
            for batch in scan_batches(paths, work, batch_size, workers, pin_memory=model.device.type == "cuda"):
                if batch.pixels is not None:
                    z = logits(model, batch.pixels, batch.extents).cpu()
                    for k in keys:
                        chunks[k].append(combine(z, crops, parse_policy(k)[1]))
                    positions.extend(batch.items[i].index for i in batch.ok)
                bar.advance(len(batch.items))
        if kept is not None and positions != kept:
            raise InputError("the validation images decoded differently between passes")
        kept = positions
        for k in keys:
            out[k] = torch.cat(chunks[k]).numpy() if chunks[k] else np.zeros(0, np.float32)
    if not kept:
        raise InputError("none of the validation images could be decoded")
    return out, kept
