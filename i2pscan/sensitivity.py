"""Which backbone weights may move: intrinsic sensitivity, task saliency and masks (DESIGN §1.2).

Both scores are diagonals of a squared-gradient matrix, streamed over batches into one fp32
tensor per eligible weight matrix (memory: two copies of the eligible weights, never per-sample
gradients). Batches are made exact in expectation by random weighting of the samples:

* intrinsic sensitivity s_i = E_x E_v[(d<v, g(x)>/d theta_i)^2] with v a random unit vector per
  sample: the batch gradient of sum_b <v_b, g(x_b)> squared has cross terms of zero mean, because
  the v_b are independent with zero mean, so its expectation is the sum of the per-sample terms;
* task saliency t_i = E[(dL/d theta_i)^2] (empirical Fisher) with Rademacher signs eps_b on the
  per-sample losses: E[(sum_b eps_b dL_b)^2] = sum_b (dL_b)^2 for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from . import console
from .backbone import Backbone
from .errors import I2PError
from .features import autocast

STRATEGIES = ("i2p", "low-sensitivity", "task-fisher", "random", "head-only", "full")
_MATRICES = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def eligible_parameters(backbone: Backbone, last_block: int) -> dict[str, nn.Parameter]:
    """The attention and MLP weight matrices of blocks 1..last_block, by name under ``visual``.

    Embeddings, norms and biases stay frozen (DESIGN §1.2 step 3).
    """
    params = dict(backbone.visual.named_parameters())
    names = [f"transformer.resblocks.{i}.{m}" for i in range(last_block) for m in _MATRICES]
    missing = [n for n in names if n not in params]
    if missing:
        raise I2PError(f"backbone {backbone.name} lacks the expected weight {missing[0]}; "
                       f"i2pscan supports open_clip ViTs with standard residual blocks")
    return {n: params[n] for n in names}


def block_of(name: str) -> int:
    """1-based block number of an eligible parameter name."""
    return int(name.split(".")[2]) + 1


def _squared_grad_pass(params: dict[str, nn.Parameter], batches: Iterable[torch.Tensor], objective,
                       description: str, total: int) -> dict[str, torch.Tensor]:
    scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    seen = 0
    try:
        with console.progress(total, description) as bar:
            for batch in batches:
                for p in params.values():
                    p.grad = None
                objective(batch).backward()
                for n, p in params.items():
                    scores[n].add_(p.grad.float().square())
                seen += len(batch)
                bar.advance(len(batch))
    finally:
        for p in params.values():
            p.requires_grad_(False)
            p.grad = None
    if seen == 0:
        raise I2PError("no decodable images to estimate sensitivity from")
    return {n: s.div_(seen) for n, s in scores.items()}


def intrinsic_sensitivity(backbone: Backbone, params: dict[str, nn.Parameter], batches: Iterable[torch.Tensor],
                          total: int, target: str = "embedding", layers: list[int] | None = None,
                          seed: int = 0, view: str = "cls") -> dict[str, torch.Tensor]:
    """s_i for every weight in ``params``: how much the pretrained representation moves with it.

    ``target``: ``embedding`` (the projected CLIP image embedding; needs the untruncated backbone)
    or ``taps`` (the concatenated features of ``layers``).
    """
    generator = torch.Generator().manual_seed(seed)
    device = backbone.device

    def objective(images):
        with autocast(device):
            if target == "embedding":
                g = backbone.embed(images)
            else:
                taps = backbone.taps(images, layers, view)
                g = torch.cat([taps[b] for b in layers], dim=1)
        v = torch.randn(g.shape, generator=generator).to(device)
        v = v / v.norm(dim=1, keepdim=True)
        return (v * g.float()).sum()

    return _squared_grad_pass(params, batches, objective, "sensitivity", total)


def task_saliency(backbone: Backbone, head: nn.Module, params: dict[str, nn.Parameter], batches, total: int,
                  view: str = "cls", seed: int = 0) -> dict[str, torch.Tensor]:
    """t_i: empirical Fisher of the detection loss under the warmed-up head; ``batches`` yields
    (images, labels)."""
    generator = torch.Generator().manual_seed(seed + 1)
    device = backbone.device
    layers = list(head.config.layers)
    labelled = iter(batches)

    def images_only():
        for images, labels in labelled:
            current["labels"] = labels
            yield images

    current: dict = {}

    def objective(images):
        labels = current["labels"].to(device).float()
        with autocast(device):
            logits, _ = head(backbone.taps(images, layers, view))
        losses = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels, reduction="none")
        signs = (torch.randint(0, 2, (len(labels),), generator=generator) * 2 - 1).to(device)
        return (signs * losses).sum()

    return _squared_grad_pass(params, images_only(), objective, "task saliency", total)


@dataclass
class Mask:
    """Which entries of each eligible tensor are tuned: flat indices, ``None`` for all of it.

    Tensors absent from ``indices`` are not tuned at all.
    """

    strategy: str
    indices: dict[str, torch.Tensor | None]
    numels: dict[str, int]  # every eligible tensor and its size
    rho: float
    q: float

    @property
    def eligible(self) -> int:
        return sum(self.numels.values())

    def tuned(self, name: str) -> int:
        if name not in self.indices:
            return 0
        idx = self.indices[name]
        return self.numels[name] if idx is None else len(idx)

    @property
    def trainable(self) -> int:
        return sum(self.tuned(n) for n in self.numels)

    def per_block(self) -> dict[int, tuple[int, int]]:
        """{block: (trainable, eligible)}."""
        out: dict[int, tuple[int, int]] = {}
        for name, numel in self.numels.items():
            t, e = out.get(block_of(name), (0, 0))
            out[block_of(name)] = (t + self.tuned(name), e + numel)
        return dict(sorted(out.items()))


def needs_scores(strategy: str) -> tuple[bool, bool]:
    """(needs sensitivity, needs saliency) for a strategy."""
    return strategy in ("i2p", "low-sensitivity"), strategy in ("i2p", "task-fisher")


def build_mask(strategy: str, params: dict[str, nn.Parameter], rho: float, q: float,
               sensitivity: dict[str, torch.Tensor] | None = None, saliency: dict[str, torch.Tensor] | None = None,
               seed: int = 0) -> Mask:
    """Choose the tuned weights, ranking all eligible weights together (not per tensor).

    ``i2p``: among the fraction ``q`` with the lowest sensitivity, the ``rho`` (of all eligible
    weights) with the highest task saliency. ``low-sensitivity``: the ``rho`` lowest by
    sensitivity. ``task-fisher``: the ``rho`` highest by saliency. ``random``: ``rho`` at random.
    ``head-only``: none. ``full``: all.
    """
    if strategy not in STRATEGIES:
        raise I2PError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if not 0 < rho <= 1:
        raise I2PError("--rho must be in (0, 1]")
    if not 0 < q <= 1:
        raise I2PError("--q must be in (0, 1]")
    names = list(params)
    numels = {n: params[n].numel() for n in names}
    total = sum(numels.values())
    k = max(1, int(round(rho * total)))
    if strategy == "head-only":
        return Mask(strategy, {}, numels, rho, q)
    if strategy == "full":
        return Mask(strategy, {n: None for n in names}, numels, rho, q)
    need_s, need_t = needs_scores(strategy)
    if (need_s and sensitivity is None) or (need_t and saliency is None):
        raise ValueError(f"strategy {strategy} needs {'sensitivity' if need_s else 'saliency'} scores")

    def flat(scores):
        return torch.cat([scores[n].reshape(-1).float().cpu() for n in names])

    if strategy == "random":
        chosen = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:k]
    elif strategy == "low-sensitivity":
        chosen = torch.topk(flat(sensitivity), k, largest=False, sorted=False).indices
    elif strategy == "task-fisher":
        chosen = torch.topk(flat(saliency), k, sorted=False).indices
    else:  # i2p
        s = flat(sensitivity)
        n_candidates = max(k, int(math.ceil(q * total)))
        threshold = torch.kthvalue(s, n_candidates).values if n_candidates < total else s.max()
        t = flat(saliency)
        t = torch.where(s <= threshold, t, torch.tensor(float("-inf")))
        del s
        chosen = torch.topk(t, k, sorted=False).indices
    chosen, _ = torch.sort(chosen)
    indices = {}
    offset = 0
    for n in names:
        lo, hi = torch.searchsorted(chosen, torch.tensor([offset, offset + numels[n]]))
        indices[n] = chosen[lo:hi] - offset
        offset += numels[n]
    return Mask(strategy, indices, numels, rho, q)


def print_mask(mask: Mask) -> None:
    rows = [[b, t, e, t / e if e else 0.0] for b, (t, e) in mask.per_block().items()]
    rows.append(["total", mask.trainable, mask.eligible, mask.trainable / mask.eligible if mask.eligible else 0.0])
    console.table(f"tuned weights: {mask.strategy}, rho {mask.rho}, q {mask.q}",
                  ["block", "trainable", "eligible", "fraction"], rows)
