"""Sensitivity, saliency and masks against brute-force oracles (one image at a time, autograd)."""


import numpy as np
import pytest
import torch
from torch import nn

from i2pscan import console
from i2pscan.backbone import load_backbone
from i2pscan.errors import I2PError
from i2pscan.head import DetectorHead, HeadConfig
from i2pscan.sensitivity import (
    build_mask,
    eligible_parameters,
    intrinsic_sensitivity,
    projection,
    task_saliency,
)


@pytest.fixture(scope="module")
def two_blocks():
    """i2p-tiny cut to a 2-block model, its eligible tensors, and 6 random images."""
    backbone = load_backbone("i2p-tiny")
    params = eligible_parameters(backbone, 2)
    pixels = torch.randn(6, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(0))
    return backbone, params, pixels


def _oracle(params, per_image_objectives) -> dict[str, torch.Tensor]:
    """Mean over images of the squared gradient of each image's own objective."""
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    for objective in per_image_objectives:
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        objective().backward()
        for n, p in params.items():
            out[n] += p.grad.square()
        for p in params.values():
            p.requires_grad_(False)
            p.grad = None
    return {n: v / len(per_image_objectives) for n, v in out.items()}


def _close(a, b):
    for n in b:
        torch.testing.assert_close(a[n], b[n], rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("split", [[6], [4, 2], [1] * 6])
def test_intrinsic_sensitivity_equals_the_per_image_oracle_for_any_batching(two_blocks, split):
    backbone, params, pixels = two_blocks

    def one(i):
        def objective():
            g = backbone.embed(pixels[i:i + 1])[0]
            return (projection(7, i, g.shape[0]) * g).sum()
        return objective

    oracle = _oracle(params, [one(i) for i in range(6)])
    console.set_quiet(True)
    got = intrinsic_sensitivity(backbone, params, list(pixels.split(split)), 6, seed=7)
    _close(got, oracle)
    assert not any(p.requires_grad or p.grad is not None for p in backbone.visual.parameters())


def test_projection_is_a_unit_vector_per_seed_and_position():
    v = projection(1, 3, 16)
    assert float(v.norm()) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(v, projection(1, 3, 16))
    assert not torch.equal(v, projection(1, 4, 16)) and not torch.equal(v, projection(2, 3, 16))


def test_taps_target_equals_its_oracle_and_refuses_a_tensor_it_cannot_reach(two_blocks):
    backbone, params, pixels = two_blocks

    def one(i):
        def objective():
            g = backbone.taps(pixels[i:i + 1], [1, 2])
            g = torch.cat([g[1], g[2]], dim=1)[0]
            return (projection(0, i, g.shape[0]) * g).sum()
        return objective

    got = intrinsic_sensitivity(backbone, params, [pixels], 6, target="taps", layers=[1, 2])
    _close(got, _oracle(params, [one(i) for i in range(6)]))
    with pytest.raises(I2PError, match=r"^sensitivity target taps \(blocks \[1\]\) does not reach "
                                       r"transformer\.resblocks\.1\.attn\.in_proj_weight: use --sensitivity-target"):
        intrinsic_sensitivity(backbone, params, [pixels], 6, target="taps", layers=[1])


def test_task_saliency_equals_the_per_image_fisher_oracle(two_blocks):
    backbone, params, pixels = two_blocks
    torch.manual_seed(0)
    head = DetectorHead(HeadConfig.for_layers([1, 2], [0.5, 0.5], backbone.width, 8))
    labels = torch.tensor([0, 1, 1, 0, 1, 0])

    def one(i):
        def objective():
            logits, _ = head(backbone.taps(pixels[i:i + 1], [1, 2]))
            return nn.functional.binary_cross_entropy_with_logits(logits, labels[i:i + 1].float())
        return objective

    oracle = _oracle(params, [one(i) for i in range(6)])
    got = task_saliency(backbone, head, params, [(pixels[:4], labels[:4]), (pixels[4:], labels[4:])], 6)
    _close(got, oracle)
    flipped = task_saliency(backbone, head, params, [(pixels, 1 - labels)], 6)
    assert max(float((flipped[n] - oracle[n]).abs().max()) for n in params) > 1e-3 * max(
        float(oracle[n].max()) for n in params)
    assert all(p.requires_grad for p in head.parameters())


def _toy_scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = {"transformer.resblocks.0.mlp.c_fc.weight": nn.Parameter(torch.zeros(6, 5)),
              "transformer.resblocks.1.mlp.c_fc.weight": nn.Parameter(torch.zeros(4, 5))}
    s = {n: torch.rand(p.shape, generator=g) for n, p in params.items()}
    t = {n: torch.rand(p.shape, generator=g) for n, p in params.items()}
    return params, s, t


def _chosen(mask):
    return {(n, int(i)) for n, idx in mask.indices.items() for i in idx}


def _entries(params, scores):
    return [((n, i), float(v)) for n in params for i, v in enumerate(scores[n].reshape(-1))]


@pytest.mark.parametrize("rho,q", [(0.1, 0.5), (0.2, 0.3), (0.05, 1.0)])
def test_masks_equal_a_brute_force_ranking(rho, q):
    params, s, t = _toy_scores()
    total = 50
    k = max(1, round(rho * total))
    by_s = sorted(_entries(params, s), key=lambda e: e[1])
    by_t = sorted(_entries(params, t), key=lambda e: -e[1])
    low_s = {key for key, _ in by_s[:k]}
    high_t = {key for key, _ in by_t[:k]}
    candidates = {key for key, _ in by_s[:max(k, int(np.ceil(q * total)))]}
    tdict = dict(_entries(params, t))
    i2p = set(sorted(candidates, key=lambda key: -tdict[key])[:k])
    assert _chosen(build_mask("low-sensitivity", params, rho, q, s, t)) == low_s
    assert _chosen(build_mask("task-fisher", params, rho, q, s, t)) == high_t
    assert _chosen(build_mask("i2p", params, rho, q, s, t)) == i2p
    if q < 1:
        assert i2p != high_t  # the sensitivity filter matters in these cases
    rand = build_mask("random", params, rho, q, seed=3)
    assert len(_chosen(rand)) == k and _chosen(rand) == _chosen(build_mask("random", params, rho, q, seed=3))


def test_mask_of_the_end_to_end_estimates_matches_the_oracle_mask(two_blocks):
    """Sensitivity, saliency and the mask built from them, all against the per-image oracle."""
    backbone, params, pixels = two_blocks
    torch.manual_seed(1)
    head = DetectorHead(HeadConfig.for_layers([1, 2], [0.5, 0.5], backbone.width, 8))
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    s = intrinsic_sensitivity(backbone, params, [pixels], 6, seed=2)
    t = task_saliency(backbone, head, params, [(pixels, labels)], 6)
    s1 = intrinsic_sensitivity(backbone, params, list(pixels.split(1)), 6, seed=2)
    t1 = task_saliency(backbone, head, params, list(zip(pixels.split(1), labels.split(1))), 6)
    for strategy in ("i2p", "low-sensitivity", "task-fisher"):
        a = build_mask(strategy, params, 0.01, 0.5, s, t)
        b = build_mask(strategy, params, 0.01, 0.5, s1, t1)
        overlap = len(_chosen(a) & _chosen(b)) / len(_chosen(a) | _chosen(b))
        assert overlap > 0.95, strategy
