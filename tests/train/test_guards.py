"""The method's claims, measured on the tiny backbone (issue 18): the default mask moves the
representation far less than a random mask of the same size, and it does not hinge on the seed.
The tiny backbone's weights are random: these guard the mechanism, not CLIP's numbers."""

import itertools

import numpy as np
import pytest

from i2pscan.model.backbone import load_backbone
from i2pscan.model.detector import Detector
from i2pscan.train.augment import Augment
from i2pscan.train.calibrate import CalibrateConfig, calibrate
from i2pscan.train.finetune import FinetuneConfig, finetune, plan_mask
from i2pscan.train.samples import load_labelled
from i2pscan.train.toydata import make_toy_dataset

LIGHT = Augment(blur_p=0.1, jpeg_p=0.1, jpeg_quality=(80, 100), blur_sigma=(0.0, 1.0))


def _jaccard(a, b) -> float:
    inter = union = 0
    for name in a.numels:
        x = set(a.indices[name].tolist()) if name in a.indices else set()
        y = set(b.indices[name].tolist()) if name in b.indices else set()
        inter += len(x & y)
        union += len(x | y)
    return inter / union


@pytest.mark.slow
@pytest.mark.parametrize("generator", ["tconv", "pixelshuffle"])
def test_the_default_mask_drifts_at_most_a_third_of_a_random_one(tmp_path, toy_dir, generator):
    """Equal rho, steps and learning rate (1e-3, where drift is well above float noise), two seeds;
    the mask alone (no drift penalty on either side), then the full default against the random
    mask. Measured: mask / random 0.19 (tconv) and 0.12 (pixelshuffle); default 0.11 and 0.06."""
    train = load_labelled(toy_dir / generator / "train")
    cal = calibrate(load_backbone("i2p-tiny"), train, CalibrateConfig(top_k=2, folds=3, bootstrap=0))
    drift, steps = {}, set()
    for (name, kw), seed in itertools.product((("random", dict(strategy="random", drift_penalty=0.0)),
                                               ("mask", dict(drift_penalty=0.0)), ("default", {})), (0, 1)):
        config = FinetuneConfig(**{**dict(epochs=2, batch_size=16, lr_backbone=1e-3, augment=LIGHT, workers=0,
                                          crop_policies=(), seed=seed), **kw})
        result = finetune(load_backbone("i2p-tiny"), cal, train, tmp_path / f"{name}{seed}.safetensors", config)
        last = result.log[-1]
        drift[name] = drift.get(name, 0.0) + last["drift_mean"]  # summed over two seeds
        steps.add(last["step"])
        assert 0 <= last["drift_mean"] <= last["drift_max"]
        assert result.meta["training"]["retention"]["drift_images"] == 10  # the validation split's reals
    assert len(steps) == 1  # equal steps
    assert 0 < drift["mask"] <= drift["random"] / 3, drift
    assert drift["default"] <= drift["mask"] and drift["default"] <= drift["random"] / 3, drift


@pytest.fixture(scope="module")
def larger(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy96")
    make_toy_dataset(root, train_per_class=96, val_per_class=8, tile=80, generators=("tconv",), seed=1)
    return root


@pytest.mark.slow
def test_the_default_mask_is_the_same_whatever_the_seed(larger):
    """At batch 64, masks of seeds 0, 1, 2 overlap >= 0.8 (Jaccard) on the same data (the seed still
    draws the sensitivity's projections and the head; it no longer decides the mask: 0.35-0.44
    before, with saliency through a randomly initialised head)."""
    train = load_labelled(larger / "tconv" / "train")
    val = load_labelled(larger / "tconv" / "val")
    cal = calibrate(load_backbone("i2p-tiny"), train, CalibrateConfig(bootstrap=0))
    masks = [plan_mask(load_backbone("i2p-tiny"), cal, train, FinetuneConfig(batch_size=64, seed=s, workers=0),
                       val=val) for s in (0, 1, 2)]
    overlaps = [_jaccard(a, b) for a, b in itertools.combinations(masks, 2)]
    assert np.mean(overlaps) >= 0.8, overlaps
    assert masks[0].trainable == masks[1].trainable == round(0.01 * masks[0].eligible)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rine", "univfd"])
def test_rine_and_univfd_style_heads_train_save_and_scan(tmp_path, toy_dir, kind):
    train = load_labelled(toy_dir / "tconv" / "train")
    cal = calibrate(load_backbone("i2p-tiny"), train, CalibrateConfig(top_k=2, folds=3, bootstrap=0))
    config = FinetuneConfig(head=kind, head_dropout=0.5 if kind == "rine" else 0.0, strategy="head-only", epochs=1,
                            batch_size=16, augment=LIGHT, workers=0, crop_policies=())
    result = finetune(load_backbone("i2p-tiny"), cal, train, tmp_path / "d.safetensors", config)
    layers = [1, 2, 3, 4, 5, 6] if kind == "rine" else [6]
    assert result.meta["head"]["layers"] == layers and result.meta["last_block"] == 6
    assert result.meta["head"]["config"]["kind"] == kind
    detector = Detector.load(tmp_path / "d.safetensors")
    from i2pscan.model.inference import file_logits

    z, _ = file_logits(detector.model, result.validation["paths"], detector.preprocess, batch_size=16)
    np.testing.assert_array_equal(z["1:mean"], result.validation["logits"]["1:mean"])
