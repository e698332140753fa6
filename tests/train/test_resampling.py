"""Layer choice that survives resampling: bootstrap intervals, selection stability, leave-one-
generator-out AUC, and the warning when the layers cannot be told apart (issue 18, item 4)."""

from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from i2pscan.model.backbone import load_backbone
from i2pscan.train.calibrate import CalibrateConfig, _probe, calibrate, critical_layers, score_layers
from i2pscan.train.resampling import aucs, resample_layers, top_k, warn_if_noise
from i2pscan.train.samples import load_labelled


def test_aucs_are_sklearns_row_by_row_ties_included():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 50)
    values = np.round(rng.normal(size=(4, 50)) + labels, 1)  # rounding makes ties
    assert np.allclose(aucs(values, labels), [roc_auc_score(labels, v) for v in values])
    assert np.all(np.isnan(aucs(values, np.zeros(50))))


def test_top_k_is_calibrates_critical_set():
    rng = np.random.default_rng(1)
    for _ in range(20):
        auc = np.round(rng.uniform(0.4, 1.0, 8), 1)
        assert list(top_k(auc, 3)) == critical_layers(auc, 3)


def _generators(n=120, seed=0):
    """Two generators. Layer 1 carries the class the same way in both (it generalises); layer 2
    carries it on one feature in generator a and on another in generator b (in-distribution it
    separates as well; on a generator it never saw, not at all)."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.repeat([0, 1], n // 2), 2)
    subsets = np.repeat(["a", "b"], n)
    general = rng.normal(size=(2 * n, 4))
    general[:, 0] += 2.0 * labels
    specific = rng.normal(size=(2 * n, 4))
    specific[:, 0] += 3.0 * labels * (subsets == "a")
    specific[:, 1] += 3.0 * labels * (subsets == "b")
    return [general, specific], labels, subsets


def _config(**kw):
    return SimpleNamespace(**{**dict(top_k=1, probe_c=1.0, seed=0, bootstrap=100, logo=True), **kw})


def test_leave_one_generator_out_ranks_the_layer_that_generalises():
    features, labels, subsets = _generators()
    scores = score_layers(features, labels, folds=5, seed=0)
    assert scores.auc[1] > 0.9 and scores.auc[1] >= scores.auc[0] - 0.05  # in-distribution: no better than B
    r = resample_layers(features, scores, labels, subsets, _config(), _probe)
    assert r.ranked_by == "leave-one-generator-out" and r.resamples == 100
    assert r.logo_auc[0] > 0.85 and abs(r.logo_auc[1] - 0.5) < 0.15
    assert top_k(r.logo_auc, 1) == (1,) and r.stability > 0.95
    assert np.all(r.auc_lo <= r.logo_auc) and np.all(r.logo_auc <= r.auc_hi) and np.all(r.auc_se > 0)
    one = resample_layers(features, scores, labels, subsets, _config(logo=False), _probe)
    assert one.ranked_by == "out-of-fold" and np.all(np.isnan(one.logo_auc))
    np.testing.assert_allclose(np.nanmean([one.auc_lo, one.auc_hi], axis=0), scores.auc, atol=0.05)


def test_a_generator_without_its_own_reals_falls_back_to_out_of_fold():
    features, labels, subsets = _generators()
    only_fakes = np.where((subsets == "b") & (labels == 0), "a", subsets)  # b's reals counted under a
    r = resample_layers(features, score_layers(features, labels, folds=5, seed=0), labels, only_fakes, _config(),
                        _probe)
    assert r.ranked_by == "out-of-fold"


def test_noise_is_warned_about_and_a_clear_choice_is_not(caplog):
    caplog.set_level("WARNING", logger="i2pscan")
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 100)
    saturated = [rng.normal(size=(200, 3)) + 4.0 * labels[:, None] for _ in range(4)]  # every layer separates
    scores = score_layers(saturated, labels, folds=5, seed=0)
    r = resample_layers(saturated, scores, labels, np.repeat("g", 200), _config(top_k=2), _probe)
    warn_if_noise(scores.auc, r, [1, 2])
    assert len(caplog.records) == 1
    assert caplog.records[0].getMessage().startswith("the layers' out-of-fold AUCs (")
    assert "do not tell the layers apart" in caplog.records[0].getMessage()
    caplog.clear()
    clear = [rng.normal(size=(200, 3)) + 2.0 * labels[:, None] * (i == 2) for i in range(4)]
    scores = score_layers(clear, labels, folds=5, seed=0)
    r = resample_layers(clear, scores, labels, np.repeat("g", 200), _config(), _probe)
    warn_if_noise(scores.auc, r, [3])
    assert not caplog.records and r.stability == 1.0
    warn_if_noise(scores.auc, resample_layers(clear, scores, labels, np.repeat("g", 200), _config(bootstrap=0),
                                              _probe), [3])
    assert not caplog.records  # no resamples: nothing to judge by


def test_calibrate_ranks_by_leave_one_generator_out_on_several_generators(toy_dir, tiny_backbone):
    sample = load_labelled(toy_dir, split="train", max_per_class=40, seed=0)
    assert len(sample.counts()["subsets"]) == 2
    cal = calibrate(tiny_backbone, sample, CalibrateConfig(top_k=2, folds=3, bootstrap=50))
    r = cal.resampling
    assert r.ranked_by == "leave-one-generator-out" and not np.any(np.isnan(r.logo_auc))
    assert cal.critical == critical_layers(r.logo_auc, 2)  # the ranking S comes from
    assert np.argmax(cal.importance) == np.argmax(r.logo_auc)
    one = calibrate(tiny_backbone, load_labelled(toy_dir / "tconv" / "train", max_per_class=30),
                    CalibrateConfig(top_k=2, folds=3, bootstrap=0))
    assert one.resampling.ranked_by == "out-of-fold" and one.critical == critical_layers(one.scores.auc, 2)


@pytest.mark.parametrize("bootstrap", [-1])
def test_bootstrap_count_is_checked(bootstrap):
    from i2pscan.errors import I2PError

    with pytest.raises(I2PError, match="^`bootstrap` must be at least 0$"):
        CalibrateConfig(bootstrap=bootstrap)
