"""Sensitivity, saliency and masks against brute-force oracles (one image at a time, autograd)."""


import re

import numpy as np
import pytest
import torch
from torch import nn

from i2pscan.train import sensitivity
from i2pscan.model.backbone import load_backbone
from i2pscan.errors import I2PError
from i2pscan.model.head import DetectorHead, HeadConfig
from i2pscan.train.sensitivity import (STRATEGIES, Mask, build_mask, intrinsic_sensitivity, needs_scores, projection, task_saliency)


@pytest.fixture(scope="module")
def two_blocks():
    """i2p-tiny cut to a 2-block model, its eligible tensors, and 6 random images."""
    backbone = load_backbone("i2p-tiny")
    params = backbone.tunable_parameters(2)
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
                                       r"transformer\.resblocks\.1\.attn\.in_proj_weight: use `sensitivity_target`"):
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
              "transformer.resblocks.1.mlp.c_fc.weight": nn.Parameter(torch.zeros(4, 5)),
              "transformer.resblocks.1.mlp.c_proj.weight": nn.Parameter(torch.zeros(3, 4))}
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
    total = 62
    k = max(1, round(rho * total))
    by_s = sorted(_entries(params, s), key=lambda e: e[1])
    by_t = sorted(_entries(params, t), key=lambda e: -e[1])
    low_s = {key for key, _ in by_s[:k]}
    high_t = {key for key, _ in by_t[:k]}
    candidates = {key for key, _ in by_s[:max(k, int(np.ceil(q * total)))]}
    tdict = dict(_entries(params, t))
    i2p = set(sorted(candidates, key=lambda key: -tdict[key])[:k])
    low = build_mask("low-sensitivity", params, rho, q, s, t)
    assert _chosen(low) == low_s and low.trainable == k and low.eligible == total
    assert low.per_block() == {1: (sum(n.startswith("transformer.resblocks.0.") for n, _ in low_s), 30),
                               2: (sum(n.startswith("transformer.resblocks.1.") for n, _ in low_s), 32)}
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


def _exact(message):
    return "^" + re.escape(message) + "$"


def test_mask_refusals_and_the_fixed_strategies():
    params, s, t = _toy_scores()
    numels = {"transformer.resblocks.0.mlp.c_fc.weight": 30, "transformer.resblocks.1.mlp.c_fc.weight": 20,
              "transformer.resblocks.1.mlp.c_proj.weight": 12}
    with pytest.raises(I2PError, match=_exact("unknown strategy 'bogus'; choose from "
                                              "i2p, low-sensitivity, task-fisher, random, head-only, full")):
        build_mask("bogus", params, 0.1, 0.5, s, t)
    for rho in (0, -0.1, 1.01, 1.5):
        with pytest.raises(I2PError, match=_exact("`rho` must be in (0, 1]")):
            build_mask("random", params, rho, 0.5)
    for q in (0, -0.1, 1.01, 1.5):
        with pytest.raises(I2PError, match=_exact("`q` must be in (0, 1]")):
            build_mask("random", params, 0.1, q)
    head_only = build_mask("head-only", params, 0.1, 0.5)
    assert head_only == Mask("head-only", {}, numels, 0.1, 0.5) and head_only.trainable == 0
    assert head_only.per_block() == {1: (0, 30), 2: (0, 32)}
    full = build_mask("full", params, 0.1, 0.5)
    assert full == Mask("full", {n: None for n in params}, numels, 0.1, 0.5)
    assert (full.trainable, full.eligible) == (62, 62)
    # rho = 1 is allowed and takes everything; the smallest rho still tunes one weight, the lowest
    everything = build_mask("low-sensitivity", params, 1.0, 1.0, s, t)
    assert (everything.trainable, everything.strategy, everything.numels, everything.rho, everything.q) == (
        62, "low-sensitivity", numels, 1.0, 1.0)
    lowest = min(_entries(params, s), key=lambda e: e[1])[0]
    assert _chosen(build_mask("low-sensitivity", params, 0.001, 1.0, s, t)) == {lowest}


def test_every_mask_records_the_normalisation_it_was_built_with():
    """The detector file reports how sensitivity was scaled: masks that rank nothing (head-only,
    full) record it too (mutmut: dropping the argument survived)."""
    params, s, t = _toy_scores()
    for strategy in ("head-only", "full", "random", "i2p"):
        for norm in ("tensor", "group"):
            assert build_mask(strategy, params, 0.1, 0.5, s, t, normalisation=norm).normalisation == norm


def test_strategies_ask_for_exactly_the_scores_they_rank_by():
    assert {st: needs_scores(st) for st in STRATEGIES} == {
        "i2p": (True, True), "low-sensitivity": (True, False), "task-fisher": (False, True),
        "random": (False, False), "head-only": (False, False), "full": (False, False)}
    params, s, t = _toy_scores()
    cases = [("i2p", None, t, "sensitivity"), ("i2p", s, None, "saliency"),
             ("low-sensitivity", None, t, "sensitivity"), ("task-fisher", s, None, "saliency")]
    for strategy, sens, sal, missing in cases:
        with pytest.raises(ValueError, match=_exact(f"strategy {strategy} needs {missing} scores")):
            build_mask(strategy, params, 0.1, 0.5, sens, sal)


def test_eligible_parameters_names_the_first_missing_weight(two_blocks):
    backbone = two_blocks[0]
    n = len(backbone.blocks)
    with pytest.raises(I2PError, match=_exact(
            f"backbone {backbone.name} lacks the expected weight transformer.resblocks.{n}.attn.in_proj_weight; "
            "i2pscan supports open_clip ViTs with standard residual blocks")):
        backbone.tunable_parameters(n + 2)


def test_estimator_refusals_and_a_single_image(two_blocks):
    backbone, params, pixels = two_blocks
    with pytest.raises(I2PError, match=_exact("sensitivity target must be embedding or taps, not 'logits'")):
        intrinsic_sensitivity(backbone, params, [pixels], 6, target="logits")
    for layers in (None, []):
        with pytest.raises(I2PError, match=_exact("sensitivity target taps needs the critical layers")):
            intrinsic_sensitivity(backbone, params, [pixels], 6, target="taps", layers=layers)
    with pytest.raises(I2PError, match=_exact("no decodable images to estimate sensitivity from")):
        intrinsic_sensitivity(backbone, params, [], 6)

    def objective():
        g = backbone.embed(pixels[:1])[0]
        return (projection(0, 0, g.shape[0]) * g).sum()

    _close(intrinsic_sensitivity(backbone, params, [pixels[:1]], 1), _oracle(params, [objective]))


def test_progress_reporting_does_not_disturb_the_estimate(two_blocks, monkeypatch):
    """With progress shown, the ticker counts images (a wrong count would crash it)."""
    from i2pscan import render
    from i2pscan.progress import showing

    backbone, params, pixels = two_blocks
    monkeypatch.setattr(render.time, "monotonic", iter(range(0, 10_000, 100)).__next__)
    with showing(render.progress_sink):
        got = intrinsic_sensitivity(backbone, params, list(pixels.split(3)), 6)
    _close(got, intrinsic_sensitivity(backbone, params, [pixels], 6))


@pytest.fixture(scope="module")
def biased():
    """A 2-block i2p-tiny whose biases are not zero (in_proj_bias starts at zero in open_clip)."""
    backbone = load_backbone("i2p-tiny")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in backbone.visual.named_parameters():
            if name.endswith("bias"):
                p.add_(0.5 * torch.randn(p.shape, generator=g))
    return backbone, backbone.tunable_parameters(2)


@pytest.mark.parametrize("view", ["cls", "cls+patchmean"])
def test_estimates_follow_the_view_the_biases_and_a_partial_set_of_tensors(biased, view):
    backbone, params = biased
    pixels = torch.randn(4, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(1))
    # only out_proj and c_proj: attention's own in-projection runs uncaptured
    part = {n: p for n, p in params.items() if n.endswith(("out_proj.weight", "c_proj.weight"))}
    for chosen in (params, part):
        def one(i):
            def objective():
                g = backbone.taps(pixels[i:i + 1], [1, 2], view)
                g = torch.cat([g[1], g[2]], dim=1)[0]
                return (projection(3, i, g.shape[0]) * g).sum()
            return objective

        got = intrinsic_sensitivity(backbone, chosen, [pixels], 4, target="taps", layers=[1, 2], seed=3, view=view)
        _close(got, _oracle(chosen, [one(i) for i in range(4)]))
    torch.manual_seed(0)
    width = backbone.width * (2 if view == "cls+patchmean" else 1)
    head = DetectorHead(HeadConfig.for_layers([1, 2], [0.5, 0.5], width, 8))
    labels = torch.tensor([0, 1, 1, 0])

    def fisher(i):
        def objective():
            logits, _ = head(backbone.taps(pixels[i:i + 1], [1, 2], view))
            return nn.functional.binary_cross_entropy_with_logits(logits, labels[i:i + 1].float())
        return objective

    oracle = _oracle(part, [fisher(i) for i in range(4)])
    for p in head.parameters():
        p.grad = None
    _close(task_saliency(backbone, head, part, [(pixels, labels)], 4, view=view), oracle)
    assert all(p.requires_grad and p.grad is None for p in head.parameters())  # the head is left as it was


def test_chunks_of_per_sample_gradients_change_nothing(biased, monkeypatch):
    """More images than tokens, one image per chunk: the same estimate as one chunk for all."""
    backbone, params = biased
    n = 70  # > 65 tokens of i2p-tiny, so a loop over the wrong axis would drop images
    pixels = torch.randn(n, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(2))
    whole = intrinsic_sensitivity(backbone, params, [pixels], n, target="taps", layers=[1, 2])
    monkeypatch.setattr(sensitivity, "_CHUNK_BYTES", 1)
    _close(intrinsic_sensitivity(backbone, params, [pixels], n, target="taps", layers=[1, 2]), whole)


# -- issue 18: several projections per image, sensitivity on one scale, the ratio rule ----------------


def test_several_projections_average_their_per_image_oracles(two_blocks):
    backbone, params, pixels = two_blocks

    def one(i, draw):
        def objective():
            g = backbone.embed(pixels[i:i + 1])[0]
            return (projection(7, i, g.shape[0], draw) * g).sum()
        return objective

    oracle = _oracle(params, [one(i, d) for i in range(6) for d in range(3)])
    got = intrinsic_sensitivity(backbone, params, list(pixels.split([4, 2])), 6, seed=7, projections=3)
    _close(got, oracle)
    draws = [projection(7, 2, 16, d) for d in range(3)]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    assert torch.equal(draws[0], projection(7, 2, 16))  # draw 0 is the single projection of before
    with pytest.raises(I2PError, match="^`sensitivity_projections` must be at least 1$"):
        intrinsic_sensitivity(backbone, params, [pixels], 6, projections=0)


def test_normalisation_ranks_within_each_group():
    torch.manual_seed(0)
    scores = {"transformer.resblocks.0.attn.in_proj_weight": torch.rand(6, 4) * torch.tensor([[1.0], [1], [30],
                                                                                               [30], [900], [900]]),
              "transformer.resblocks.0.mlp.c_fc.weight": torch.rand(3, 4) * 100}
    assert sensitivity.normalise(scores, "none") is scores
    for how, spans in (("group", {"transformer.resblocks.0.attn.in_proj_weight": [(0, 8), (8, 16), (16, 24)],
                                  "transformer.resblocks.0.mlp.c_fc.weight": [(0, 12)]}),
                       ("tensor", {"transformer.resblocks.0.attn.in_proj_weight": [(0, 24)],
                                   "transformer.resblocks.0.mlp.c_fc.weight": [(0, 12)]})):
        ranked = sensitivity.normalise(scores, how)
        for name, parts in spans.items():
            flat, got = scores[name].reshape(-1), ranked[name].reshape(-1)
            for lo, hi in parts:
                expect = (torch.argsort(torch.argsort(flat[lo:hi])) + 1).float() / (hi - lo)
                torch.testing.assert_close(got[lo:hi], expect)
    assert [g[0] for g in sensitivity.groups("transformer.resblocks.3.attn.in_proj_weight", (12, 4))] == [
        "transformer.resblocks.3.attn.in_proj_weight[q]", "transformer.resblocks.3.attn.in_proj_weight[k]",
        "transformer.resblocks.3.attn.in_proj_weight[v]"]
    with pytest.raises(I2PError, match="^`sensitivity_norm` must be one of none, tensor, group$"):
        sensitivity.normalise(scores, "rank")


def test_group_normalised_i2p_takes_its_candidates_from_every_group_alike():
    params, s, t = _toy_scores()
    s["transformer.resblocks.1.mlp.c_fc.weight"] *= 1000  # one tensor type far more sensitive
    raw = build_mask("i2p", params, 0.1, 0.25, s, t)
    assert raw.tuned("transformer.resblocks.1.mlp.c_fc.weight") == 0 and raw.normalisation == "none"
    fair = build_mask("i2p", params, 0.1, 0.25, s, t, normalisation="tensor")
    assert fair.normalisation == "tensor" and fair.trainable == raw.trainable
    ranked = sensitivity.normalise(s, "tensor")
    cut = sorted(float(v) for n in params for v in ranked[n].reshape(-1))[int(np.ceil(0.25 * 62)) - 1]
    candidates = {(n, i) for n in params for i, v in enumerate(ranked[n].reshape(-1)) if v <= cut}
    assert {n for n, _ in candidates} == set(params)  # every tensor offers candidates
    by_t = sorted(candidates, key=lambda key: -float(t[key[0]].reshape(-1)[key[1]]))
    assert _chosen(fair) == set(by_t[:fair.trainable])


def test_ratio_ranks_candidates_by_saliency_per_unit_of_sensitivity():
    params, s, t = _toy_scores()
    total, k = 62, 6
    entries = [((n, i), float(s[n].reshape(-1)[i]), float(t[n].reshape(-1)[i])) for n in params
               for i in range(params[n].numel())]
    candidates = sorted(entries, key=lambda e: e[1])[:31]  # q 0.5
    expect = {e[0] for e in sorted(candidates, key=lambda e: -e[2] / e[1])[:k]}
    assert _chosen(build_mask("i2p", params, k / total, 0.5, s, t, select_by="ratio")) == expect
