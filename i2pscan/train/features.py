"""Tapped features of a list of image files: one batched pass through the backbone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from i2pscan.progress import progress
from i2pscan.model.backbone import Backbone
from i2pscan.model.device import autocast
from i2pscan.io.preprocess import CropTransform, Preprocess
from i2pscan.io.loader import ImageFiles, loader


@dataclass
class Extracted:
    """``features[block]`` is Tensor[len(kept), D]; ``kept`` indexes the input paths that decoded."""

    features: dict[int, torch.Tensor]
    kept: list[int]
    failures: list[tuple[str, str]]  # (path, error) of the files that could not be used




@torch.no_grad()
def extract(backbone: Backbone, paths: Sequence[str], blocks: Sequence[int], view: str = "cls",
            batch_size: int = 32, workers: int = 0, description: str = "features", transform=None) -> Extracted:
    """Tap ``blocks`` for every file, centre-cropped (or through ``transform``, e.g. the training
    augmentation); files that fail to decode are listed, not fatal."""
    preprocess = Preprocess.from_dict(backbone.preprocessing())
    dataset = ImageFiles(paths, transform or CropTransform(preprocess, 1))
    device = backbone.device
    chunks: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
    kept: list[int] = []
    failures: list[tuple[str, str]] = []
    with progress(len(paths), description) as bar:
        for batch in loader(dataset, batch_size, workers, pin_memory=device.type == "cuda"):
            for item in batch.items:
                if item.info.error:
                    failures.append((paths[item.index], item.info.error))
            if batch.pixels is not None:
                with autocast(device):
                    taps = backbone.taps(batch.pixels.to(device, non_blocking=True), blocks, view)
                for b in blocks:
                    chunks[b].append(taps[b].float().cpu())
                kept.extend(batch.items[i].index for i in batch.ok)
            bar.advance(len(batch.items))
    width = backbone.width * (2 if view == "cls+patchmean" else 1)
    features = {b: torch.cat(c) if c else torch.empty(0, width) for b, c in chunks.items()}
    return Extracted(features=features, kept=kept, failures=failures)
