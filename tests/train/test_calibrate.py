import os
import re

import numpy as np
import pytest
import torch
from helpers import write_corrupt_files

from i2pscan import __version__
from i2pscan.model import tensorfile
from i2pscan.model.backbone import load_backbone
from i2pscan.train.calibrate import (KIND, CalibrateConfig, Calibration, _fisher_ratio, calibrate, critical_layers, importance_weights, score_layers)
from i2pscan.errors import I2PError
from i2pscan.train.samples import load_labelled


def test_probe_finds_the_layers_that_carry_the_signal():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 150)
    feats = []
    for layer in range(8):
        x = rng.normal(size=(300, 16))
        if layer in (2, 5):  # blocks 3 and 6 carry the class, the others are noise
            x[:, 0] += 2.0 * labels
        feats.append(x)
    scores = score_layers(feats, labels, folds=5, seed=0)
    assert all(scores.auc[[2, 5]] > 0.9)
    others = np.delete(scores.auc, [2, 5])
    assert np.all(np.abs(others - 0.5) < 0.12)
    assert critical_layers(scores.auc, 2) == [3, 6]
    w = importance_weights(scores.auc, 4.0)
    assert w.sum() == pytest.approx(1.0) and w[[2, 5]].sum() > 0.95
    assert scores.fisher[2] > 10 * np.delete(scores.fisher, [2, 5]).max()


def test_importance_is_uniform_when_nothing_separates():
    assert np.allclose(importance_weights(np.array([0.4, 0.5, 0.45]), 4.0), 1 / 3)


def test_critical_layers_ties_go_shallow():
    assert critical_layers(np.array([0.9, 0.9, 0.7, 0.9]), 2) == [1, 2]


def _silence_blocks(backbone, blocks):
    """Make blocks pass the residual stream through unchanged, so their class token carries nothing new."""
    for b in blocks:
        blk = backbone.blocks[b - 1]
        for p in (blk.attn.out_proj.weight, blk.attn.out_proj.bias, blk.mlp.c_proj.weight, blk.mlp.c_proj.bias):
            p.data.zero_()


def test_calibrate_finds_the_informative_blocks_of_a_real_forward(toy_dir):
    backbone = load_backbone("i2p-tiny")
    # blocks 1-2 become identities: their class token is the constant class embedding; the
    # upsampling trace of the fakes first reaches the class token through block 3's attention
    _silence_blocks(backbone, [1, 2])
    sample = load_labelled(toy_dir / "tconv" / "train")
    cal = calibrate(backbone, sample, CalibrateConfig(top_k=4, seed=0))
    assert cal.critical == [3, 4, 5, 6]
    assert np.allclose(cal.scores.auc[:2], 0.5)
    assert np.all(cal.scores.auc[2:] > 0.9)
    assert cal.importance[:2].sum() == 0


def test_calibration_round_trip_and_determinism(tmp_path, toy_dir, tiny_backbone):
    sample = load_labelled(toy_dir / "pixelshuffle" / "train", max_per_class=30, seed=2)
    a = calibrate(tiny_backbone, sample, CalibrateConfig(seed=1))
    b = calibrate(tiny_backbone, sample, CalibrateConfig(seed=1))
    np.testing.assert_array_equal(a.scores.auc, b.scores.auc)
    assert torch.equal(a.feature_mean, b.feature_mean)
    a.save(tmp_path / "cal.safetensors")
    c = Calibration.load(tmp_path / "cal.safetensors")
    np.testing.assert_array_equal(c.importance, a.importance)
    assert c.critical == a.critical and c.last_block == max(a.critical)
    assert c.backbone["sha256"] == tiny_backbone.sha256
    assert c.sample["fingerprint"] == sample.fingerprint()
    assert c.feature_std.shape == (6, 64)
    # every field comes back, and the file says what it holds
    assert (c.preprocessing, c.view, c.config, c.sample) == (a.preprocessing, a.view, a.config, a.sample)
    assert c.created == a.created != ""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", a.created)
    assert a.preprocessing == tiny_backbone.preprocessing() and a.view == "cls"
    assert a.config["folds_used"] == 5 and a.config["seed"] == 1
    assert a.sample["source"] == os.path.abspath(sample.source)
    kept = sorted(os.path.realpath(p) for p in sample.paths)
    assert [e[0] for e in a.sample["files"]] == kept
    assert all(re.fullmatch(r"[0-9a-f]{64}", e[2]) for e in a.sample["files"])  # content hashes, not sizes only
    assert a.feature_mean.shape == (6, 64)
    for name in ("auc", "accuracy", "fisher"):
        np.testing.assert_array_equal(getattr(c.scores, name), getattr(a.scores, name))
    assert torch.equal(c.feature_mean, a.feature_mean) and torch.equal(c.feature_std, a.feature_std)
    _, meta, tensors = tensorfile.read(tmp_path / "cal.safetensors", (KIND,))
    assert all(tensors[n].dtype == torch.float64 for n in ("auc", "accuracy", "fisher", "importance"))
    assert (meta["i2pscan_version"], meta["last_block"], meta["created"]) == (__version__, max(a.critical), a.created)
    r = a.resampling
    assert meta["per_layer"] == [
        {"block": i + 1, "auc": float(a.scores.auc[i]), "accuracy": float(a.scores.accuracy[i]),
         "fisher": float(a.scores.fisher[i]), "importance": float(a.importance[i]),
         "auc_lo": float(r.auc_lo[i]), "auc_hi": float(r.auc_hi[i]), "auc_se": float(r.auc_se[i]),
         "logo_auc": None} for i in range(6)]  # one generator: no leave-one-generator-out AUC
    assert meta["selection"] == {"ranked_by": "out-of-fold", "stability": r.stability, "resamples": 200}
    for name in ("auc_lo", "auc_hi", "auc_se", "logo_auc"):
        np.testing.assert_array_equal(getattr(c.resampling, name), getattr(r, name))
    assert (c.resampling.stability, c.resampling.ranked_by) == (r.stability, r.ranked_by)
    # a file written before "created" and the resampling were recorded loads with neither
    del meta["created"], meta["selection"]
    for name in ("auc_lo", "auc_hi", "auc_se", "logo_auc"):
        del tensors[name]
    tensorfile.write(tmp_path / "old.safetensors", KIND, tensors, meta)
    old = Calibration.load(tmp_path / "old.safetensors")
    assert old.created == "" and old.resampling is None


def test_calibrate_skips_corrupt_files(tmp_path, toy_dir, tiny_backbone):
    sample = load_labelled(toy_dir / "tconv" / "train", max_per_class=20)
    bad = write_corrupt_files(tmp_path / "fake")
    from i2pscan.train.samples import LabelledImage, LabelledSample

    mixed = LabelledSample(sample.items + [LabelledImage(str(p), 1, "train") for p in bad], sample.source)
    cal = calibrate(tiny_backbone, mixed, CalibrateConfig(folds=3))
    assert sorted(s["path"] for s in cal.sample["skipped"]) == sorted(str(p) for p in bad)
    assert all(isinstance(s["error"], str) and s["error"] for s in cal.sample["skipped"])
    assert cal.sample["counts"]["fake"] == 20


def test_too_few_decodable_images_is_an_error(tmp_path, tiny_backbone):
    bad = write_corrupt_files(tmp_path / "fake")
    from i2pscan.train.samples import LabelledImage, LabelledSample

    sample = LabelledSample([LabelledImage(str(p), 1, "x") for p in bad] + [LabelledImage(str(bad[0]), 0, "x")],
                            str(tmp_path))
    with pytest.raises(I2PError, match="could be decoded"):
        calibrate(tiny_backbone, sample)


def test_two_decodable_images_of_each_class_are_the_floor(toy_dir, tiny_backbone):
    from i2pscan.train.samples import LabelledSample

    sample = load_labelled(toy_dir / "tconv" / "train", max_per_class=3, seed=0)
    real = [i for i in sample.items if i.label == 0]
    fake = [i for i in sample.items if i.label == 1]
    two_each = calibrate(tiny_backbone, LabelledSample(real[:2] + fake[:2], sample.source), CalibrateConfig(folds=5))
    counts = two_each.sample["counts"]
    assert two_each.config["folds_used"] == 2 and (counts["real"], counts["fake"]) == (2, 2)
    with pytest.raises(I2PError, match=r"^only 3 real and 1 fake images could be decoded; "
                                       r"calibration needs at least 2 of each \(more: hundreds\)$"):
        calibrate(tiny_backbone, LabelledSample(real[:3] + fake[:1], sample.source))


def test_config_boundaries_and_messages():
    for ok in ({"top_k": 1}, {"folds": 2}, {"gamma": 0.5}, {"view": "cls+patchmean"}):
        CalibrateConfig(**ok)
    for bad, message in (({"top_k": 0}, "`top_k` must be at least 1"), ({"folds": 1}, "`folds` must be at least 2"),
                         ({"view": "patch"}, "`view` must be one of cls, cls+patchmean"),
                         ({"gamma": 0}, "`gamma` must be positive"), ({"gamma": -1.0}, "`gamma` must be positive")):
        with pytest.raises(I2PError, match="^" + re.escape(message) + "$"):
            CalibrateConfig(**bad)


def test_fisher_ratio_values():
    labels = np.array([0, 0, 1, 1])
    assert _fisher_ratio(np.array([0.0, 0.2, 1.0, 1.2]), labels) == pytest.approx(1.0 / 0.02)
    assert _fisher_ratio(np.array([0.0, 4.0, 2.0, 6.0]), labels) == pytest.approx(4.0 / 8.0)
    assert _fisher_ratio(np.array([0.0, 0.0, 1.0, 1.0]), labels) == 0.0  # no spread: no ratio, not infinity
    assert _fisher_ratio(np.array([3.0, 3.0, 3.0, 3.0]), labels) == 0.0


def test_score_layers_folds_seed_and_constant_layers():
    rng = np.random.default_rng(3)
    labels = np.array([0] * 9 + [1] * 3)
    noise = rng.normal(size=(12, 4))
    separable = rng.normal(size=(12, 4))
    separable[:, 0] += 10.0 * labels
    constant = np.ones((12, 4))
    scores = score_layers([noise, separable, constant], labels, folds=3, seed=0)  # 5 folds cannot split 3 fakes
    assert scores.accuracy[1] == 1.0 and scores.auc[1] == 1.0
    # a constant layer: chance AUC, the accuracy of calling everything real, no Fisher ratio
    assert (scores.auc[2], scores.accuracy[2], scores.fisher[2]) == (0.5, 0.75, 0.0)
    again = score_layers([noise], labels, folds=3, seed=0)
    assert again.auc[0] == scores.auc[0]
    others = {float(score_layers([noise], labels, folds=3, seed=s).auc[0]) for s in range(1, 6)}
    assert others - {float(scores.auc[0])}  # the seed picks the folds


def test_calibrate_passes_its_seed_and_probe_c_to_the_probe(toy_dir, tiny_backbone):
    sample = load_labelled(toy_dir / "pixelshuffle" / "train", max_per_class=10, seed=2)
    runs = [calibrate(tiny_backbone, sample, CalibrateConfig(seed=s, folds=3, probe_c=c)).scores.fisher
            for s, c in ((0, 1.0), (1, 1.0), (0, 1.0), (0, 1e-4))]
    np.testing.assert_array_equal(runs[0], runs[2])
    assert not np.array_equal(runs[0], runs[1]) and not np.array_equal(runs[0], runs[3])


def test_the_probe_standardises_and_follows_c():
    """An informative feature a thousand times smaller than the noise still wins after scaling."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 40)
    x = rng.normal(size=(80, 8))
    x[:, 0] = 1e-3 * (rng.normal(size=80) + 3 * labels)
    assert score_layers([x], labels, folds=4).auc[0] > 0.9
    assert score_layers([x], labels, folds=4, c=1e-4).fisher[0] != score_layers([x], labels, folds=4).fisher[0]


def test_config_validation():
    with pytest.raises(I2PError):
        CalibrateConfig(top_k=0)
    with pytest.raises(I2PError):
        CalibrateConfig(view="mean")


def test_fisher_ratio_is_out_of_fold_so_memorised_noise_scores_near_zero():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 30)
    noise = rng.normal(size=(60, 50))  # separable in-sample by a 50-dimensional probe, meaningless out of fold
    scores = score_layers([noise], labels, folds=5, seed=0)
    assert scores.fisher[0] < 0.3
