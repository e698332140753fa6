import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from i2pscan.model.backbone import load_backbone
from i2pscan.train.calibrate import CalibrateConfig, calibrate
from i2pscan.train.augment import Augment
from i2pscan.train.samples import load_labelled
from i2pscan.model.detector import Detector
from i2pscan.errors import I2PError
from i2pscan.train.finetune import FinetuneConfig, finetune, plan_mask
from i2pscan.train.thresholds import fit_temperature, threshold_at_fpr
from i2pscan.train.checkpoint import log_path
from i2pscan.train.sensitivity import STRATEGIES, build_mask, intrinsic_sensitivity

LIGHT = Augment(blur_p=0.1, jpeg_p=0.1, jpeg_quality=(80, 100), blur_sigma=(0.0, 1.0))


@pytest.fixture(scope="module")
def cal(toy_dir):
    return calibrate(load_backbone("i2p-tiny"), load_labelled(toy_dir / "tconv" / "train"),
                     CalibrateConfig(top_k=2, folds=3))


@pytest.fixture(scope="module")
def sample(toy_dir):
    return load_labelled(toy_dir / "tconv" / "train")


def _config(**kw):
    base = dict(epochs=2, batch_size=16, sensitivity_samples=32, saliency_samples=32,
                augment=LIGHT, lr_backbone=1e-3, seed=0)
    return FinetuneConfig(**{**base, **kw})


@pytest.mark.slow
def test_finetune_end_to_end_learns_the_toy_task(tmp_path, cal, sample, toy_dir):
    out = tmp_path / "det.safetensors"
    result = finetune(load_backbone("i2p-tiny"), cal, sample, out, _config(epochs=3))
    assert result.meta["training"]["validation"]["val_auc"] > 0.85
    assert not (tmp_path / "det.checkpoint.safetensors").exists()
    log = [json.loads(line) for line in open(log_path(out))]
    assert [e["epoch"] for e in log] == [1, 2, 3]
    det = Detector.load(out)
    held_out = load_labelled(toy_dir / "tconv" / "val")
    scores = det.score(held_out.paths)
    assert scores.dtype == np.float32 and np.all((scores >= 0) & (scores <= 1))
    from sklearn.metrics import roc_auc_score
    assert roc_auc_score(held_out.labels, scores) > 0.85
    assert len(det.backbone.blocks) == cal.last_block


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_tunes_the_count_it_claims(strategy):
    backbone = load_backbone("i2p-tiny")
    params = backbone.tunable_parameters(4)
    eligible = sum(p.numel() for p in params.values())
    assert eligible == 4 * 12 * 64 * 64
    g = torch.Generator().manual_seed(0)
    s = {n: torch.rand(p.shape, generator=g) for n, p in params.items()}
    t = {n: torch.rand(p.shape, generator=g) for n, p in params.items()}
    mask = build_mask(strategy, params, rho=0.02, q=0.5, sensitivity=s, saliency=t)
    expected = {"head-only": 0, "full": eligible}.get(strategy, round(0.02 * eligible))
    assert mask.trainable == expected
    assert sum(t for t, _ in mask.per_block().values()) == expected
    if strategy == "i2p":
        flat_s = torch.cat([s[n].reshape(-1) for n in params])
        median = torch.kthvalue(flat_s, eligible // 2).values
        for n, idx in mask.indices.items():
            assert torch.all(s[n].reshape(-1)[idx] <= median)  # only low-sensitivity candidates
    if strategy == "low-sensitivity":
        chosen = torch.cat([s[n].reshape(-1)[idx] for n, idx in mask.indices.items()])
        assert chosen.max() <= torch.kthvalue(torch.cat([s[n].reshape(-1) for n in params]), expected).values


@pytest.mark.slow
def test_weights_outside_the_mask_are_bitwise_unchanged(tmp_path, cal, sample):
    out = tmp_path / "det.safetensors"
    finetune(load_backbone("i2p-tiny"), cal, sample, out, _config(strategy="random", rho=0.05, epochs=1))
    pretrained = load_backbone("i2p-tiny")
    pretrained.truncate(cal.last_block)
    tuned = Detector.load(out).backbone
    before, after = pretrained.visual.state_dict(), tuned.visual.state_dict()
    assert set(before) <= set(after) and all("delta." in k for k in set(after) - set(before))
    for name in before:  # W0 is never modified: the delta is a separate term (one numeric path)
        assert torch.equal(before[name], after[name]), name
    moved = inside = 0
    with safe_open(str(out), "pt") as f:
        for key in f.keys():
            if not key.startswith("delta.") or not key.endswith(".values"):
                continue
            name = key[len("delta."):-len(".values")]
            owner = name.rsplit(".", 1)[0]
            prefix = owner + (".delta." if owner.endswith(("out_proj", "c_fc", "c_proj")) else ".in_proj_delta.")
            values, idx = f.get_tensor(key), f.get_tensor(f"delta.{name}.indices").long()
            assert torch.equal(after[prefix + "indices"], idx) and torch.equal(after[prefix + "values"], values)
            moved += int((values != 0).sum())
            inside += len(idx)
    assert moved > 0.9 * inside


@pytest.mark.slow
def test_resume_after_interrupt_gives_the_same_detector(tmp_path, cal, sample):
    config = _config(epochs=3)
    straight = tmp_path / "straight.safetensors"
    finetune(load_backbone("i2p-tiny"), cal, sample, straight, config)

    resumed = tmp_path / "resumed.safetensors"

    def interrupt(epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(load_backbone("i2p-tiny"), cal, sample, resumed, config, on_epoch_end=interrupt)
    assert not resumed.exists() and (tmp_path / "resumed.checkpoint.safetensors").exists()
    with pytest.raises(I2PError, match="pass `resume`"):
        finetune(load_backbone("i2p-tiny"), cal, sample, resumed, config)
    with pytest.raises(I2PError, match="differ from the interrupted run"):
        finetune(load_backbone("i2p-tiny"), cal, sample, resumed, _config(epochs=3, rho=0.5), resume=True)
    finetune(load_backbone("i2p-tiny"), cal, sample, resumed, config, resume=True)
    with safe_open(str(straight), "pt") as a, safe_open(str(resumed), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
        ma, mb = json.loads(a.metadata()["i2pscan.meta"]), json.loads(b.metadata()["i2pscan.meta"])
    for m in (ma, mb):
        m.pop("created")
    assert ma == mb
    assert [json.loads(x)["epoch"] for x in open(log_path(resumed))] == [1, 2, 3]


def test_resume_without_checkpoint_is_an_error(tmp_path, cal, sample):
    with pytest.raises(I2PError, match="nothing to resume"):
        finetune(load_backbone("i2p-tiny"), cal, sample, tmp_path / "d.safetensors", _config(), resume=True)


def test_calibration_of_other_weights_is_refused(tmp_path, cal, sample):
    with pytest.raises(I2PError, match="calibrate again"):
        finetune(load_backbone("i2p-tiny", None), cal, sample, tmp_path / "d.safetensors", _config())


@pytest.mark.slow
def test_head_only_and_contrastive_run(tmp_path, cal, sample):
    out = tmp_path / "h.safetensors"
    result = finetune(load_backbone("i2p-tiny"), cal, sample, out, _config(strategy="head-only", epochs=1,
                                                                            contrastive_weight=0.5))
    assert result.mask.trainable == 0
    with safe_open(str(out), "pt") as f:
        assert not [k for k in f.keys() if k.startswith("delta.")]


@pytest.mark.slow
def test_dry_run_returns_the_mask_and_writes_nothing(tmp_path, cal, sample):
    backbone = load_backbone("i2p-tiny")
    mask = plan_mask(backbone, cal, sample, _config())
    assert mask.trainable == round(0.01 * mask.eligible)
    assert list(tmp_path.iterdir()) == []
    assert backbone.run_blocks == 6 and not any(p.requires_grad for p in backbone.visual.parameters())


@pytest.mark.slow
def test_batched_sensitivity_matches_per_sample_estimate(toy_dir):
    backbone = load_backbone("i2p-tiny")
    params = backbone.tunable_parameters(2)
    paths = load_labelled(toy_dir / "pixelshuffle" / "train", max_per_class=8).paths
    from i2pscan.io.preprocess import CropTransform, Preprocess
    from i2pscan.io.pool import collate
    from i2pscan.io.loader import ImageFiles

    pp = Preprocess.from_dict(backbone.preprocessing())
    ds = ImageFiles(paths, CropTransform(pp, 1))
    pixels = collate([ds[i] for i in range(len(ds))]).pixels
    batched = [intrinsic_sensitivity(backbone, params, [pixels], len(pixels), seed=s) for s in range(30)]
    single = [intrinsic_sensitivity(backbone, params, list(pixels.split(1)), len(pixels), seed=s) for s in range(30)]
    a = torch.cat([torch.stack([b[n] for b in batched]).mean(0).reshape(-1) for n in params])
    b = torch.cat([torch.stack([b[n] for b in single]).mean(0).reshape(-1) for n in params])
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9
    assert a.sum() / b.sum() == pytest.approx(1.0, rel=0.15)


def test_temperature_and_threshold():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 500)
    true_logits = np.where(labels == 1, 1.0, -1.0) + rng.normal(size=1000)
    assert fit_temperature(true_logits * 3, labels) == pytest.approx(3.0 * 0.5, rel=0.25)  # logits scaled by 3
    real = rng.normal(size=1000).astype(np.float32)
    t = threshold_at_fpr(real, 0.05)
    # conformal: m = floor(0.05 * 1001) = 50, flag above the 50th largest (49 flagged); any lower cut
    # flags 50, whose expected rate on a new real image, 51 / 1001, is above the target
    assert np.sum(real >= t) == 49 and (np.sum(real >= np.nextafter(t, -np.inf) - 0.01) + 1) / 1001 > 0.05
    assert threshold_at_fpr(np.array([0.5, 0.5, 0.5], np.float32), 0.4) > 0.5


@pytest.mark.slow
def test_gradient_accumulation_and_max_steps(tmp_path, cal, sample):
    one = finetune(load_backbone("i2p-tiny"), cal, sample, tmp_path / "a.safetensors", _config(epochs=1))
    two = finetune(load_backbone("i2p-tiny"), cal, sample, tmp_path / "b.safetensors", _config(epochs=1, accumulate=2))
    assert two.log[-1]["step"] == (one.log[-1]["step"] + 1) // 2
    capped = finetune(load_backbone("i2p-tiny"), cal, sample, tmp_path / "c.safetensors",
                      _config(epochs=3, max_steps=2))
    assert capped.log[-1]["step"] == 2 and len(capped.log) == 1
