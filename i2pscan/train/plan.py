"""Which weights finetune tunes: the head's warm-up, the two scores, and the mask (DESIGN §1.2
steps 1-3).

The head warms up on frozen features of centre and augmented crops (as many steps as the data
calls for), so that training starts from a head that has met the augmentation. Task saliency is
measured on centre crops against the convex logistic probe on the centre crops' features
(``saliency_head`` ``probe``, the default: deterministic given the data) rather than against the
warmed-up head, whose random initialisation used to decide half of the mask. Sensitivity may be
put on one scale per tensor group before ranking (``sensitivity_norm``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from i2pscan.io.loader import ImageFiles, loader
from i2pscan.io.preprocess import CropTransform, Preprocess
from i2pscan.model.backbone import Backbone
from i2pscan.model.head import DetectorHead
from i2pscan.train.loop import warm_up_head, warmup_features, warmup_steps
from i2pscan.train.probe import fit_probe
from i2pscan.train.samples import LabelledSample
from i2pscan.train.sensitivity import Mask, build_mask, intrinsic_sensitivity, needs_scores, task_saliency


@dataclass
class Plan:
    """The mask, and the raw sensitivity it was chosen with (None for strategies that need none)."""

    mask: Mask
    sensitivity: dict[str, torch.Tensor] | None = None


def plan(backbone: Backbone, head: DetectorHead, params: dict, train: LabelledSample, view: str, config) -> Plan:
    """Warm ``head`` up (in place) and choose the mask ``config`` asks for."""
    need_s, need_t = needs_scores(config.strategy)
    need_s = need_s or (config.drift_penalty > 0 and config.strategy != "head-only")
    probe = None
    if need_t or warmup_steps(config, len(train.items) * config.warmup_views) > 0:
        warm = warmup_features(backbone, train, head.layers, view, config)
        warm_up_head(head, warm, config, backbone.device)
        if need_t and config.saliency_head == "probe":
            features, labels = warm.view(0)  # centre crops
            probe = fit_probe(features, labels, head.layers, device=backbone.device)
    sensitivity = saliency = None
    if need_s:
        idx = subsample(len(train.items), config.sensitivity_samples, config.seed)
        sensitivity = intrinsic_sensitivity(backbone, params, pixel_batches(backbone, train.subset(idx), config),
                                            total=len(idx), target=config.sensitivity_target,
                                            layers=list(head.layers), seed=config.seed, view=view,
                                            projections=config.sensitivity_projections)
    if need_t:
        idx = subsample(len(train.items), config.saliency_samples, config.seed + 1)
        batches = pixel_batches(backbone, train.subset(idx), config, labels=True)
        saliency = task_saliency(backbone, probe if probe is not None else head, params, batches, total=len(idx),
                                 view=view, seed=config.seed)
    mask = build_mask(config.strategy, params, config.rho, config.q,
                      sensitivity if needs_scores(config.strategy)[0] else None, saliency, seed=config.seed,
                      normalisation=config.sensitivity_norm, select_by=config.select_by)
    return Plan(mask, sensitivity)


def subsample(n: int, k: int, seed: int) -> list[int]:
    """``k`` of ``range(n)`` chosen by ``seed``, sorted (all of them when ``k >= n``)."""
    if k >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist())


def pixel_batches(backbone: Backbone, sample: LabelledSample, config, labels: bool = False):
    """Batches of centre crops of ``sample`` on the backbone's device (with their labels when asked)."""
    dataset = ImageFiles(sample.paths, CropTransform(Preprocess.from_dict(backbone.preprocessing()), 1))
    device = backbone.device
    for batch in loader(dataset, config.batch_size, config.workers, pin_memory=device.type == "cuda"):
        if batch.pixels is None:
            continue
        pixels = batch.pixels.to(device, non_blocking=True)
        if labels:
            yield pixels, torch.as_tensor(sample.labels[[batch.items[i].index for i in batch.ok]])
        else:
            yield pixels


def penalty_weights(mask: Mask, sensitivity: dict[str, torch.Tensor] | None, reference: torch.Tensor | None,
                    strength: float) -> dict[str, torch.Tensor]:
    """{tensor: w_i at each tuned entry}: the weights of the drift penalty sum_i w_i delta_i^2,
    w_i = strength * D / (2 E||g||^2) * s_i, so that the sum is ``strength`` times the drift
    (1 - cos) it predicts to first order (diagonal of J^T J; E over the drift set's reference
    embeddings g, of dimension D). Empty when there is nothing to weigh."""
    if strength <= 0 or sensitivity is None or reference is None or not len(reference):
        return {}
    scale = strength * reference.shape[1] / (2.0 * float(reference.double().square().sum(1).mean()))
    out = {}
    for name, idx in mask.indices.items():
        if idx is not None and not len(idx):
            continue  # nothing tuned in this tensor
        s = sensitivity[name].reshape(-1).float()
        w = s if idx is None else s[idx.to(s.device)]
        out[name] = (scale * w).reshape(sensitivity[name].shape if idx is None else (-1,))
    return out
