"""Tests that pin the method where a mutation used to survive every test (issue 18, item 8): the
combination of crops, the sensitivity target reaching the estimator, the gate's initialisation
from importance; and the retention numbers (drift, |delta|/|W0|) and the drift penalty's weights."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from i2pscan.errors import FileRefused
from i2pscan.model import inference
from i2pscan.model.backbone import load_backbone
from i2pscan.model.head import DetectorHead, HeadConfig
from i2pscan.model.sparse import attach
from i2pscan.train import finetune as ft
from i2pscan.train import plan as plan_module
from i2pscan.train.finetune import FinetuneConfig
from i2pscan.train.retention import delta_size, drift, make_drift_set
from i2pscan.train.samples import load_labelled
from i2pscan.train.sensitivity import Mask


def test_combine_takes_each_images_mean_or_max_of_its_crops():
    z = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0, -1.0])  # two images, three crops each, image-major
    assert inference.combine(z, 3, "mean").tolist() == pytest.approx([2 / 3, 3.5 / 3])
    assert inference.combine(z, 3, "max").tolist() == [3.0, 4.0]
    assert inference.combine(z, 1, "max").tolist() == z.tolist()


def test_score_batch_combines_as_asked_and_divides_by_the_temperature(monkeypatch):
    """What scan computes per batch: the policy's combination, then sigmoid(logit / T)."""
    z = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0, -1.0])
    monkeypatch.setattr(inference, "logits", lambda model, pixels, *extents: z)  # main adds `extents`
    for how, combined in (("mean", [2 / 3, 3.5 / 3]), ("max", [3.0, 4.0])):
        got, scores = inference.score_batch(None, None, 3, how, 4.0)
        assert got == pytest.approx(combined)
        assert scores == pytest.approx([1 / (1 + math.exp(-c / 4.0)) for c in combined])


def test_file_logits_combine_each_policy_its_own_way(toy_dir, monkeypatch):
    """Two policies of one crop count come from one pass, each combined its way (a max computed as a
    mean, or the other way round, is caught here)."""
    paths = sorted(str(p) for p in (toy_dir / "tconv" / "val" / "ai").iterdir())[:3]
    backbone = load_backbone("i2p-tiny")
    head = DetectorHead(HeadConfig.for_layers([2], [1 / 6] * 6, backbone.width, 8))
    model = inference.Model(backbone, head)
    seen = []
    real_logits = inference.logits

    def spy(m, pixels, *extents):  # main's decode branch passes `extents` along
        out = real_logits(m, pixels, *extents)
        seen.append(out.clone())
        return out

    monkeypatch.setattr(inference, "logits", spy)
    from i2pscan.io.preprocess import Preprocess

    got, kept = inference.file_logits(model, paths, Preprocess.from_dict(backbone.preprocessing()),
                                      ("5:mean", "5:max"), batch_size=8)
    crops = torch.cat(seen).view(-1, 5)
    assert kept == [0, 1, 2]
    np.testing.assert_allclose(got["5:max"], crops.max(dim=1).values.numpy())
    np.testing.assert_allclose(got["5:mean"], crops.mean(dim=1).numpy(), rtol=1e-6)
    assert np.all(got["5:max"] > got["5:mean"])


@pytest.mark.parametrize("target", ["embedding", "taps"])
def test_the_sensitivity_target_reaches_the_estimator(toy_dir, monkeypatch, target):
    seen = {}

    def estimator(backbone, params, batches, total, **kw):
        seen.update(kw)
        return {n: torch.rand(p.shape, generator=torch.Generator().manual_seed(0)) for n, p in params.items()}

    monkeypatch.setattr(plan_module, "intrinsic_sensitivity", estimator)
    backbone = load_backbone("i2p-tiny")
    train = load_labelled(toy_dir / "tconv" / "train", max_per_class=6)
    head = DetectorHead(HeadConfig.for_layers([2, 3], [1 / 6] * 6, backbone.width, 8))
    config = FinetuneConfig(strategy="low-sensitivity", sensitivity_target=target, sensitivity_projections=3, seed=5,
                            warmup_steps=0, drift_penalty=0.0, batch_size=8)
    plan_module.plan(backbone, head, backbone.tunable_parameters(3), train, "cls", config)
    assert seen == {"target": target, "layers": [2, 3], "seed": 5, "view": "cls", "projections": 3}


def test_the_gate_starts_at_the_calibrations_importance():
    importance = np.array([0.05, 0.1, 0.15, 0.2, 0.3, 0.2])
    config = HeadConfig.for_layers([2, 5], importance, 64, 16)
    assert config.gate_init == pytest.approx((0.25, 0.75))
    head = DetectorHead(config)
    torch.testing.assert_close(head.layer_weights(), torch.tensor([0.25, 0.75]))
    rine = DetectorHead(HeadConfig.for_layers(range(1, 7), importance, 64, 16, kind="rine"))
    assert rine.gate.shape == (6, 16)
    torch.testing.assert_close(torch.softmax(rine.gate, 0), torch.tensor(importance, dtype=torch.float32)[:, None]
                               .expand(6, 16))
    univfd = DetectorHead(HeadConfig.for_layers([6], importance, 64, 16, kind="univfd"))
    assert univfd.layer_weights().tolist() == [1.0] and sorted(univfd.state_dict()) == [
        "classifier.bias", "classifier.weight", "norms.0.bias", "norms.0.weight"]


def test_each_head_kind_computes_its_own_forward():
    """Fast, so that mutation testing (which runs no slow test) sees each kind's forward pass: the
    univfd head is LayerNorm + linear on the last block's class token, its embedding the normed
    token; i2p and rine gate the projected, normed taps (rine per dimension)."""
    torch.manual_seed(0)
    importance = np.array([0.05, 0.1, 0.15, 0.2, 0.3, 0.2])
    taps = {b: torch.randn(3, 64, dtype=torch.float64) for b in range(1, 7)}  # float64: the head casts
    univfd = DetectorHead(HeadConfig.for_layers([6], importance, 64, 16, kind="univfd")).eval()
    with torch.no_grad():
        univfd.norms[0].weight.uniform_(0.5, 1.5)
        logits, embedding = univfd(taps)
        z = univfd.norms[0](taps[6].float())
        assert logits.shape == (3,) and embedding.shape == (3, 64)
        torch.testing.assert_close(embedding, z)
        torch.testing.assert_close(logits, univfd.classifier(z)[:, 0])
    for kind, layers in (("i2p", [2, 5]), ("rine", [1, 2, 3, 4, 5, 6])):
        head = DetectorHead(HeadConfig.for_layers(layers, importance, 64, 16, kind=kind)).eval()
        with torch.no_grad():
            logits, embedding = head(taps)
            z = torch.stack([head.proj(n(taps[b].float())) for n, b in zip(head.norms, layers)], dim=1)
            w = torch.softmax(head.gate, dim=0)
            expect = ((w[None] if w.dim() == 2 else w[None, :, None]) * z).sum(dim=1)
        assert logits.shape == (3,) and embedding.shape == (3, 16)
        torch.testing.assert_close(embedding, expect)
        torch.testing.assert_close(logits, head.classifier(expect)[:, 0])


@pytest.mark.parametrize("kind, layers", [("i2p", [2, 5]), ("rine", [1, 2, 3, 4, 5, 6]), ("univfd", [6])])
def test_finetune_builds_its_head_from_the_calibration(kind, layers):
    backbone = load_backbone("i2p-tiny")
    importance = np.array([0.05, 0.1, 0.15, 0.2, 0.3, 0.2])
    cal = SimpleNamespace(view="cls", critical=[2, 5], importance=importance, num_blocks=6)
    head = ft._new_head(backbone, cal, FinetuneConfig(head=kind, seed=3))
    assert list(head.layers) == layers and head.config.kind == kind
    expect = importance[[b - 1 for b in layers]] / importance[[b - 1 for b in layers]].sum()
    torch.testing.assert_close(head.layer_weights(), torch.tensor(expect, dtype=torch.float32))
    again = ft._new_head(backbone, cal, FinetuneConfig(head=kind, seed=3))
    assert all(torch.equal(a, b) for a, b in zip(head.state_dict().values(), again.state_dict().values()))


def test_old_head_configs_are_i2p_heads():
    old = {"layers": [2, 5], "in_dim": 64, "proj_dim": 16, "hidden_dim": 16, "gate_init": [0.5, 0.5]}
    config = HeadConfig.from_dict(old)
    assert (config.kind, config.dropout) == ("i2p", 0.0)
    with pytest.raises(ValueError, match="head kind must be one of i2p, rine, univfd"):
        HeadConfig.from_dict({**old, "kind": "mlp"})
    with pytest.raises(FileRefused, match="head config has unknown key\\(s\\) alpha, beta: written by a newer i2pscan"):
        HeadConfig.from_dict({**old, "beta": 1, "alpha": 2})
    rine = HeadConfig.for_layers(range(1, 7), np.full(6, 1 / 6), 64, kind="rine", dropout=0.5)
    assert HeadConfig.from_dict(rine.to_dict()) == rine and (rine.kind, rine.dropout) == ("rine", 0.5)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"^head dropout must be in \[0, 1\)$"):
            HeadConfig.from_dict({**old, "dropout": bad})
    assert HeadConfig.from_dict({**old, "dropout": 0.0}).dropout == 0.0


def test_the_rine_heads_dropout_reaches_the_module():
    """--head-dropout is RINE's regularisation: it must reach the head finetune builds."""
    cal = SimpleNamespace(view="cls", critical=[2, 5], importance=np.full(6, 1 / 6), num_blocks=6)
    head = ft._new_head(load_backbone("i2p-tiny"), cal, FinetuneConfig(head="rine", head_dropout=0.5))
    assert head.config.dropout == 0.5 and head.drop.p == 0.5
    wide = HeadConfig.for_layers([1], np.ones(1), 1024)  # proj_dim defaults to min(256, width)
    assert (wide.proj_dim, wide.hidden_dim) == (256, 256)


# -- retention -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def attached(toy_dir):
    backbone = load_backbone("i2p-tiny")
    params = backbone.tunable_parameters(6)
    name = "transformer.resblocks.2.mlp.c_fc.weight"
    deltas = attach(backbone, params, {name: torch.arange(0, 2000, 7)})
    reals = sorted(str(p) for p in (toy_dir / "tconv" / "val" / "nature").iterdir())[:10]
    return backbone, params, deltas, name, make_drift_set(backbone, reals, batch_size=4)


def test_a_zero_delta_does_not_drift_and_a_delta_does(attached):
    backbone, params, deltas, name, drift_set = attached
    assert len(drift_set.paths) == 10 and drift_set.reference.shape == (10, backbone.visual.proj.shape[1])
    with torch.no_grad():
        deltas[name].values.zero_()
    assert drift(backbone, drift_set) == {"drift_mean": 0.0, "drift_max": 0.0}
    with torch.no_grad():
        deltas[name].values.copy_(0.05 * torch.randn(len(deltas[name].values), generator=torch.Generator().manual_seed(0)))
    moved = drift(backbone, drift_set)
    assert 0 < moved["drift_mean"] <= moved["drift_max"] < 0.1
    with torch.no_grad():
        deltas[name].values.mul_(2.0)
    assert drift(backbone, drift_set)["drift_mean"] > 2 * moved["drift_mean"]  # about 4x: second order


def test_delta_size_by_hand():
    w0 = torch.nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]]))  # RMS 2.5
    d = SimpleNamespace(values=torch.tensor([0.3, -0.8]), indices=torch.tensor([0, 3]))
    got = delta_size({"w": d}, {"w": w0})
    assert got["delta_rel"] == pytest.approx(math.hypot(0.3, 0.8) / 5.0)
    assert got["delta_max"] == pytest.approx(0.8) and got["delta_max_rel"] == pytest.approx(0.8 / 2.5)
    assert delta_size({}, {}) == {"delta_rel": 0.0, "delta_max": 0.0, "delta_max_rel": 0.0}


def test_penalty_weights_predict_drift_in_its_own_units():
    s = {"a": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([[5.0, 6.0]])}
    mask = Mask("i2p", {"a": torch.tensor([1, 3]), "b": torch.tensor([], dtype=torch.long)}, {"a": 4, "b": 2}, 0.5, 0.1)
    reference = torch.full((3, 8), 0.5)  # ||g||^2 = 2, D = 8: scale = mu * 8 / 4
    w = plan_module.penalty_weights(mask, s, reference, 10.0)
    assert list(w) == ["a"] and w["a"].tolist() == [2 * 20.0, 4 * 20.0]
    assert plan_module.penalty_weights(mask, s, reference, 0.0) == {}
    assert plan_module.penalty_weights(mask, None, reference, 1.0) == {}
