"""Which backbone weights may move: intrinsic sensitivity, task saliency and masks (DESIGN §1.2).

Both scores are diagonals of a squared-gradient matrix, E_x[(d f(x)/d theta_i)^2], estimated from
exact per-sample gradients however the images are batched:

* intrinsic sensitivity s_i = E_x E_v[(d<v, g(x)>/d theta_i)^2], one random unit vector v per
  image (drawn from the seed and the image's position in the sample, so batching cannot change it);
* task saliency t_i = E_x[(dL(x)/d theta_i)^2] (empirical Fisher of the per-image loss).

A batched backward pass gives the sum of the per-sample gradients, whose square carries cross
terms between images: an estimate whose variance grows with the batch size (at batch 64 the mask
was mostly chance). Instead, during the pass each eligible weight's ``F.linear`` is swapped for
one whose backward forms the per-sample weight gradients of a few images at a time
(``G_b = dy_bᵀ x_b``, exact because images never interact in a ViT forward) and accumulates
their squares; no parameter gradient is materialised. Time is about one batched backward, extra
memory a chunk of per-sample gradients of one matrix (``_CHUNK_BYTES``). ``benchmarks/
bench_sensitivity.py`` compares it with the old batched estimator.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from i2pscan.progress import progress
from i2pscan.model.backbone import Backbone, block_of
from i2pscan.errors import ConfigError, InputError
from i2pscan.model.device import autocast
from i2pscan.model.sparse import SparseAttention

STRATEGIES = ("i2p", "low-sensitivity", "task-fisher", "random", "head-only", "full")
NORMALISATIONS = ("none", "tensor", "group")
_CHUNK_BYTES = 1 << 28  # per-sample gradients held at once, per weight matrix


class _SquaredGradLinear(torch.autograd.Function):
    """``F.linear(x, weight, bias)`` whose backward adds sum_b (dL_b/dweight)^2 into ``acc`` and
    returns a gradient for ``x`` only. ``x`` is ``[B, ..., in]``: dim 0 is the image."""

    @staticmethod
    def forward(ctx, x, weight, bias, acc):
        ctx.save_for_backward(x, weight)
        ctx.acc = acc
        return nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        acc = ctx.acc
        xs = x.reshape(x.shape[0], -1, x.shape[-1])
        gs = grad_y.reshape(grad_y.shape[0], -1, grad_y.shape[-1])
        chunk = max(1, _CHUNK_BYTES // (4 * weight.numel()))
        with torch.autocast(x.device.type, enabled=False):
            for i in range(0, xs.shape[0], chunk):
                per_sample = torch.bmm(gs[i:i + chunk].transpose(1, 2).float(), xs[i:i + chunk].float())
                acc.add_(per_sample.square_().sum(0))
            grad_x = None
            if ctx.needs_input_grad[0]:
                grad_x = (grad_y.to(weight.dtype) @ weight).to(x.dtype)
        return grad_x, None, None, None


class _CaptureLinear(nn.Module):
    def __init__(self, linear: nn.Linear, acc: torch.Tensor):
        super().__init__()
        self.weight, self.bias, self.acc = linear.weight, linear.bias, acc

    def forward(self, x):
        return _SquaredGradLinear.apply(x, self.weight, self.bias, self.acc)


class _CaptureAttention(SparseAttention):
    """A MultiheadAttention whose in- and/or out-projection accumulate squared per-sample gradients."""

    def __init__(self, mha: nn.MultiheadAttention, in_acc: torch.Tensor | None, out_acc: torch.Tensor | None):
        super().__init__(mha)
        self.in_acc = in_acc
        if out_acc is not None:
            self.out_proj = _CaptureLinear(mha.out_proj, out_acc)

    def _in_proj(self, x):
        if self.in_acc is None:
            return super()._in_proj(x)
        return _SquaredGradLinear.apply(x, self.in_proj_weight, self.in_proj_bias, self.in_acc)


@contextmanager
def _capturing(backbone: Backbone, params: dict[str, nn.Parameter]):
    """Swap the modules that use ``params`` for capturing ones; yields {name: fp32 accumulator}.
    The original modules are back in place afterwards, whatever happens."""
    if not getattr(backbone.visual.transformer, "batch_first", True):
        raise ConfigError(f"backbone {backbone.name}: sensitivity needs a batch-first transformer")
    acc = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}
    swapped = []
    for i, block in enumerate(backbone.blocks):
        prefix = f"transformer.resblocks.{i}."
        in_acc, out_acc = acc.get(prefix + "attn.in_proj_weight"), acc.get(prefix + "attn.out_proj.weight")
        if in_acc is not None or out_acc is not None:
            swapped.append((block, "attn", block.attn))
            block.attn = _CaptureAttention(block.attn, in_acc, out_acc)
        for fc in ("c_fc", "c_proj"):
            if prefix + f"mlp.{fc}.weight" in acc:
                swapped.append((block.mlp, fc, getattr(block.mlp, fc)))
                setattr(block.mlp, fc, _CaptureLinear(getattr(block.mlp, fc), acc[prefix + f"mlp.{fc}.weight"]))
    for p in params.values():
        p.requires_grad_(True)  # so that autograd runs through the swapped modules; no .grad is made
    try:
        yield acc
    finally:
        for owner, attr, module in reversed(swapped):
            setattr(owner, attr, module)
        for p in params.values():
            p.requires_grad_(False)
            p.grad = None


def _squared_grad_pass(backbone: Backbone, params: dict[str, nn.Parameter], batches: Iterable,
                       objective, description: str, total: int) -> dict[str, torch.Tensor]:
    """Mean over images of the squared per-image gradient of ``objective(batch, start)`` (a sum
    over the batch's images of one scalar each; ``start`` is the batch's first image position)."""
    seen = 0
    with _capturing(backbone, params) as acc, progress(total, description) as bar:
        for batch in batches:
            n = objective(batch, seen)
            seen += n
            bar.advance(n)
    if seen == 0:
        raise InputError("no decodable images to estimate sensitivity from")
    return {n: s.div_(seen) for n, s in acc.items()}


def projection(seed: int, position: int, dim: int, draw: int = 0) -> torch.Tensor:
    """The random unit vector v of the image at ``position`` in the sensitivity sample (its
    ``draw``-th, when several are averaged)."""
    key = seed * 1_000_003 + position + draw * 104_729  # torch's CPU generator keeps 32 bits of its seed
    v = torch.randn(dim, generator=torch.Generator().manual_seed(key), dtype=torch.float64)
    return (v / v.norm()).float()


def target_output(backbone, images, target: str, layers, view: str) -> torch.Tensor:
    """What sensitivity measures the change of: CLIP's projected image embedding, or the tapped
    features of ``layers`` side by side (``target`` "taps")."""
    if target == "embedding":
        return backbone.embed(images)
    taps = backbone.taps(images, layers, view)
    return torch.cat([taps[b] for b in layers], dim=1)


def intrinsic_sensitivity(backbone: Backbone, params: dict[str, nn.Parameter], batches: Iterable[torch.Tensor],
                          total: int, target: str = "embedding", layers: list[int] | None = None,
                          seed: int = 0, view: str = "cls", projections: int = 1) -> dict[str, torch.Tensor]:
    """s_i for every weight in ``params``: how much the pretrained representation moves with it.

    ``target``: ``embedding`` (the projected CLIP image embedding; needs the untruncated backbone)
    or ``taps`` (the concatenated features of ``layers``). ``projections``: random unit vectors v
    per image, averaged (one backward pass each; the estimate's variance over v falls as 1 / k).
    Raises I2PError for a target that does not depend on every tensor in ``params`` (``taps``
    shallower than a tuned block).
    """
    if projections < 1:
        raise ConfigError("`sensitivity_projections` must be at least 1")
    if target not in ("embedding", "taps"):
        raise ConfigError(f"sensitivity target must be embedding or taps, not {target!r}")
    if target == "taps":
        if not layers:
            raise ConfigError("sensitivity target taps needs the critical layers")
        beyond = [n for n in params if block_of(n) > max(layers)]
        if beyond:
            raise ConfigError(f"sensitivity target taps (blocks {sorted(layers)}) does not reach {beyond[0]}: "
                              f"use `sensitivity_target` embedding")
    device = backbone.device

    def objective(images, start):
        with autocast(device):
            g = target_output(backbone, images, target, layers, view)
        for draw in range(projections):
            v = torch.stack([projection(seed, start + i, g.shape[1], draw) for i in range(len(g))]).to(device)
            (v * g.float()).sum().backward(retain_graph=draw + 1 < projections)
        return len(images)

    scores = _squared_grad_pass(backbone, params, batches, objective, "sensitivity", total)
    return {n: s.div_(projections) for n, s in scores.items()} if projections > 1 else scores


def task_saliency(backbone: Backbone, head: nn.Module, params: dict[str, nn.Parameter], batches, total: int,
                  view: str = "cls", seed: int = 0) -> dict[str, torch.Tensor]:
    """t_i: empirical Fisher of the per-image detection loss under ``head`` (anything with
    ``layers`` that maps {block: taps} to (logits, _): the saliency probe, or a warmed-up head);
    ``batches`` yields (images, labels). Deterministic (``seed`` is accepted for symmetry and unused)."""
    device = backbone.device
    layers = list(head.layers)

    def objective(batch, start):
        images, labels = batch
        labels = labels.to(device).float()
        with autocast(device):
            logits, _ = head(backbone.taps(images, layers, view))
        nn.functional.binary_cross_entropy_with_logits(logits.float(), labels, reduction="sum").backward()
        return len(images)

    head_grad = [p.requires_grad for p in head.parameters()]
    for p in head.parameters():
        p.requires_grad_(False)
    try:
        return _squared_grad_pass(backbone, params, batches, objective, "task saliency", total)
    finally:
        for p, g in zip(head.parameters(), head_grad):
            p.requires_grad_(g)


@dataclass
class Mask:
    """Which entries of each eligible tensor are tuned: flat indices, ``None`` for all of it.

    Tensors absent from ``indices`` are not tuned at all. ``normalisation``: how sensitivity was
    put on one scale before ranking (NORMALISATIONS).
    """

    strategy: str
    indices: dict[str, torch.Tensor | None]
    numels: dict[str, int]  # every eligible tensor and its size
    rho: float
    q: float
    normalisation: str = "none"

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


def groups(name: str, shape) -> list[tuple[str, int, int]]:
    """The groups whose sensitivities are put on one scale: (label, first, end) flat ranges of a
    tensor. An attention in-projection is three groups (its q, k and v rows: their scales differ
    about 30x); every other matrix is one. Blocks are never pooled: each tensor is its block's."""
    numel = math.prod(shape)
    if name.endswith("attn.in_proj_weight") and shape[0] % 3 == 0:
        third = numel // 3
        return [(f"{name}[{part}]", i * third, (i + 1) * third) for i, part in enumerate("qkv")]
    return [(name, 0, numel)]


def normalise(scores: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    """Sensitivities on one scale across tensors: ``none`` as measured; ``tensor`` or ``group``
    (the q, k, v rows of an in-projection apart) as the within-group rank, (rank + 1) / size in
    (0, 1], so that the fraction q with the lowest normalised value is the fraction q of every
    group. Ties keep the order of the flat index."""
    if how not in NORMALISATIONS:
        raise ConfigError(f"`sensitivity_norm` must be one of {', '.join(NORMALISATIONS)}")
    if how == "none":
        return scores
    out = {}
    for name, s in scores.items():
        flat = s.reshape(-1).float().cpu()
        ranked = torch.empty_like(flat)
        spans = groups(name, s.shape) if how == "group" else [(name, 0, flat.numel())]
        for _, lo, hi in spans:
            order = torch.sort(flat[lo:hi], stable=True).indices
            ranks = torch.empty(hi - lo, dtype=torch.float32)
            ranks[order] = torch.arange(1, hi - lo + 1, dtype=torch.float32) / (hi - lo)
            ranked[lo:hi] = ranks
        out[name] = ranked.reshape(s.shape)
    return out


def build_mask(strategy: str, params: dict[str, nn.Parameter], rho: float, q: float,
               sensitivity: dict[str, torch.Tensor] | None = None, saliency: dict[str, torch.Tensor] | None = None,
               seed: int = 0, normalisation: str = "none", select_by: str = "saliency") -> Mask:
    """Choose the tuned weights, ranking all eligible weights together (not per tensor).

    ``i2p``: among the fraction ``q`` with the lowest sensitivity, the ``rho`` (of all eligible
    weights) with the highest task saliency. ``low-sensitivity``: the ``rho`` lowest by
    sensitivity. ``task-fisher``: the ``rho`` highest by saliency. ``random``: ``rho`` at random.
    ``head-only``: none. ``full``: all. Sensitivity is first put on one scale across tensors
    (``normalisation``, see :func:`normalise`). ``select_by`` ``ratio`` ranks i2p's candidates by
    saliency per unit of (raw) sensitivity, t_i / s_i, instead of by saliency.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if not 0 < rho <= 1:
        raise ConfigError("`rho` must be in (0, 1]")
    if not 0 < q <= 1:
        raise ConfigError("`q` must be in (0, 1]")
    names = list(params)
    numels = {n: params[n].numel() for n in names}
    total = sum(numels.values())
    k = max(1, int(round(rho * total)))
    if strategy == "head-only":
        return Mask(strategy, {}, numels, rho, q, normalisation)
    if strategy == "full":
        return Mask(strategy, {n: None for n in names}, numels, rho, q, normalisation)
    need_s, need_t = needs_scores(strategy)
    if (need_s and sensitivity is None) or (need_t and saliency is None):
        missing = "sensitivity" if need_s and sensitivity is None else "saliency"
        raise ValueError(f"strategy {strategy} needs {missing} scores")
    raw = sensitivity
    if need_s:
        sensitivity = normalise(sensitivity, normalisation)

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
        if select_by == "ratio":
            t = t / flat(raw).clamp(min=torch.finfo(torch.float32).tiny)
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
    return Mask(strategy, indices, numels, rho, q, normalisation)
