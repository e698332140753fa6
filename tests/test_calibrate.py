import numpy as np
import pytest
import torch

from conftest import write_corrupt_files
from i2pscan.backbone import load_backbone
from i2pscan.calibrate import (
    CalibrateConfig,
    Calibration,
    calibrate,
    critical_layers,
    importance_weights,
    score_layers,
)
from i2pscan.samples import load_labelled
from i2pscan.errors import I2PError


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


def test_calibrate_skips_corrupt_files(tmp_path, toy_dir, tiny_backbone):
    sample = load_labelled(toy_dir / "tconv" / "train", max_per_class=20)
    bad = write_corrupt_files(tmp_path / "fake")
    from i2pscan.samples import LabelledImage, LabelledSample

    mixed = LabelledSample(sample.items + [LabelledImage(str(p), 1, "train") for p in bad], sample.source)
    cal = calibrate(tiny_backbone, mixed, CalibrateConfig(folds=3))
    assert sorted(s["path"] for s in cal.sample["skipped"]) == sorted(str(p) for p in bad)
    assert cal.sample["counts"]["fake"] == 20


def test_too_few_decodable_images_is_an_error(tmp_path, tiny_backbone):
    bad = write_corrupt_files(tmp_path / "fake")
    from i2pscan.samples import LabelledImage, LabelledSample

    sample = LabelledSample([LabelledImage(str(p), 1, "x") for p in bad] + [LabelledImage(str(bad[0]), 0, "x")],
                            str(tmp_path))
    with pytest.raises(I2PError, match="could be decoded"):
        calibrate(tiny_backbone, sample)


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
