"""Retention as a number: how far fine-tuning moved the representation it claims to preserve.

* **Drift**: 1 - cos between the projected CLIP image embedding of a fixed set of held-out real
  images under the pretrained weights and under theta0 + delta; its mean and its maximum over the
  set. It is computed in float32 (autocast off), through the same modules (the delta attached,
  zero for the reference), so that a zero delta drifts by exactly 0.
* **|delta|/|W0|**: the norm of the delta over the norm of the pretrained entries it moves, and
  the largest single change, absolute and relative to its tensor's RMS.

finetune logs all of them per epoch and stores the saved epoch's values in the detector.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from i2pscan.io.loader import ImageFiles, loader
from i2pscan.io.preprocess import CropTransform, Preprocess
from i2pscan.model.backbone import Backbone
from i2pscan.train.samples import LabelledSample

RETENTION_KEYS = ("drift_mean", "drift_max", "delta_rel", "delta_max", "delta_max_rel")


@dataclass
class DriftSet:
    """The images drift is measured on (centre crops, kept in memory) and their reference embeddings."""

    pixels: torch.Tensor  # [n, 3, S, S], preprocessed, on the CPU
    reference: torch.Tensor  # [n, E] float32 embeddings under the weights the set was made with
    paths: list[str]
    batch_size: int = 64  # what the reference was computed with: drift batches alike (no float noise)


def drift_images(val: LabelledSample, limit: int) -> list[str]:
    """The fixed held-out real images drift is measured on: the first ``limit`` real validation
    images in path order (never a training image)."""
    return sorted(p for p, y in zip(val.paths, val.labels) if y == 0)[:limit]


@torch.no_grad()
def embeddings(backbone: Backbone, pixels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Projected CLIP embeddings [n, E] in float32 (autocast off), whatever the device."""
    device = backbone.device
    out = []
    with torch.autocast(device.type, enabled=False):
        for i in range(0, len(pixels), batch_size):
            out.append(backbone.embed(pixels[i:i + batch_size].to(device).float()).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def make_drift_set(backbone: Backbone, paths: list[str], batch_size: int = 32, workers: int = 0) -> DriftSet | None:
    """Decode ``paths`` (centre crop) and embed them now; None when none decodes or the backbone
    has no projected embedding (a truncated one)."""
    if not paths or backbone.run_blocks != backbone.num_blocks or backbone.visual.proj is None:
        return None
    dataset = ImageFiles(paths, CropTransform(Preprocess.from_dict(backbone.preprocessing()), 1))
    chunks, kept = [], []
    for batch in loader(dataset, batch_size, workers):
        if batch.pixels is not None:
            chunks.append(batch.pixels.float())
            kept.extend(paths[batch.items[i].index] for i in batch.ok)
    if not chunks:
        return None
    pixels = torch.cat(chunks)
    return DriftSet(pixels, embeddings(backbone, pixels, batch_size), kept, batch_size)


def drift(backbone: Backbone, drift_set: DriftSet) -> dict[str, float]:
    """{drift_mean, drift_max}: 1 - cos of each image's embedding now against its reference
    (batched as the reference was, so that an unchanged model drifts by exactly 0)."""
    now = embeddings(backbone, drift_set.pixels, drift_set.batch_size)
    a = torch.nn.functional.normalize(now.double(), dim=1)
    b = torch.nn.functional.normalize(drift_set.reference.double(), dim=1)
    d = 0.5 * (a - b).square().sum(dim=1)  # = 1 - cos for unit vectors, without 1 - cos's cancellation
    return {"drift_mean": float(d.mean()), "drift_max": float(d.max())}


@torch.no_grad()
def delta_size(deltas: dict, params: dict[str, torch.nn.Parameter]) -> dict[str, float]:
    """{delta_rel, delta_max, delta_max_rel}: ||delta|| / ||W0 at the tuned entries||, the largest
    |delta_i|, and the largest |delta_i| / RMS(W0 of its tensor). Zeros when nothing is tuned."""
    num = den = 0.0
    biggest = biggest_rel = 0.0
    for name, d in deltas.items():
        values = d.values.detach().float().reshape(-1)
        if not len(values):
            continue
        w0 = params[name].detach().float().reshape(-1)
        at = w0 if d.indices is None else w0[d.indices.to(w0.device).long()]
        num += float(values.square().sum())
        den += float(at.square().sum())
        top = float(values.abs().max())
        biggest = max(biggest, top)
        rms = float(w0.square().mean().sqrt())
        if rms > 0:
            biggest_rel = max(biggest_rel, top / rms)
    return {"delta_rel": (num / den) ** 0.5 if den > 0 else 0.0, "delta_max": biggest, "delta_max_rel": biggest_rel}
