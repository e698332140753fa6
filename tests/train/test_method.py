"""The method's safeguards, end to end on the tiny backbone: one numeric path from validation to
scan, thresholds per crop policy, validation that cannot leak, best epoch and temperature."""

import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from i2pscan.train import finetune as finetune_module
from i2pscan.train.checkpoint import checkpoint_path
from i2pscan.train.augment import Augment
from i2pscan.model.backbone import load_backbone
from i2pscan.train.calibrate import CalibrateConfig, calibrate
from i2pscan.model.detector import Detector
from i2pscan.errors import I2PError
from i2pscan.train.finetune import FinetuneConfig, finetune
from i2pscan.train.thresholds import fit_temperature
from i2pscan.train.samples import FileSet, load_labelled
from i2pscan.scan.options import ScanOptions
from i2pscan.scan.session import report_metadata, run_scan

LIGHT = Augment(blur_p=0.1, jpeg_p=0.1, jpeg_quality=(80, 100), blur_sigma=(0.0, 1.0))
BATCH = 16


def _config(**kw):
    base = dict(epochs=2, batch_size=BATCH, sensitivity_samples=16, saliency_samples=16, warmup_steps=30,
                augment=LIGHT, lr_backbone=1e-3, seed=0, crop_policies=("4:max",))
    return FinetuneConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def sample(toy_dir):
    return load_labelled(toy_dir / "tconv" / "train")


@pytest.fixture(scope="module")
def cal(sample):
    """Calibrated on 12 images per class of the training folder, as a user would on a subset."""
    part = load_labelled(sample.source, max_per_class=12)
    return calibrate(load_backbone("i2p-tiny"), part, CalibrateConfig(top_k=2, folds=3))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cal, sample):
    out = tmp_path_factory.mktemp("method") / "d.safetensors"
    return finetune(load_backbone("i2p-tiny"), cal, sample, out, _config())


def _scan_logits(detector, paths, crops, combine, batch_size=BATCH):
    rows = []
    run_scan(paths, None, detector, ScanOptions(crops=crops, combine=combine, batch_size=batch_size), on_row=rows.append)
    assert [r["path"] for r in rows] == list(paths)
    return np.array([r["logit"] for r in rows], np.float32), np.array([r["verdict"] for r in rows])


@pytest.mark.parametrize("crops,combine", [(1, "mean"), (4, "max")])
def test_validation_logits_equal_scan_logits(trained, crops, combine):
    detector = Detector.load(trained.path)
    v = trained.validation
    key = f"{crops}:{combine}"
    scanned, _ = _scan_logits(detector, v["paths"], crops, combine)
    np.testing.assert_array_equal(scanned, v["logits"][key])
    other_batching, _ = _scan_logits(detector, v["paths"], crops, combine, batch_size=5)
    np.testing.assert_allclose(other_batching, v["logits"][key], rtol=0, atol=1e-5)
    if key == "1:mean":  # what the best epoch was chosen on is what the detector computes
        np.testing.assert_array_equal(v["best_epoch_logits"], v["logits"][key])


@pytest.mark.parametrize("crops,combine", [(1, "mean"), (4, "max")])
def test_validation_reals_above_the_threshold_are_at_most_the_target(trained, crops, combine):
    detector = Detector.load(trained.path)
    v = trained.validation
    real = [p for p, y in zip(v["paths"], v["labels"]) if y == 0]
    _, verdicts = _scan_logits(detector, real, crops, combine)
    target = trained.meta["target_fpr"]
    assert np.mean(verdicts == "synthetic") <= target
    record = trained.meta["thresholds"][f"{crops}:{combine}"]
    assert record["val_fpr"] <= target and record["val_real"] == len(real)
    cut = detector.cut(crops, combine)
    assert cut.fitted and cut.logit == record["threshold_logit"] and cut.temperature == record["temperature"]


def test_each_policy_has_its_own_threshold_and_the_report_records_the_one_used(trained):
    detector = Detector.load(trained.path)
    t = trained.meta["thresholds"]
    assert set(t) == {"1:mean", "4:max"}
    assert trained.meta["threshold_logit"] == t["1:mean"]["threshold_logit"]
    used = report_metadata(detector, ScanOptions(crops=4, combine="max"), ["x"])["threshold"]
    assert used == {"policy": "4:max", "threshold": t["4:max"]["threshold"],
                    "threshold_logit": t["4:max"]["threshold_logit"], "temperature": t["4:max"]["temperature"],
                    "fitted_for_policy": True, "source": "detector"}
    unfitted = report_metadata(detector, ScanOptions(crops=9, combine="max"), ["x"])["threshold"]
    assert unfitted["policy"] == "9:max" and unfitted["fitted_for_policy"] is False
    assert unfitted["threshold_logit"] == t["1:mean"]["threshold_logit"]
    given = report_metadata(detector, ScanOptions(crops=4, combine="max", threshold=0.5), ["x"])["threshold"]
    assert given["source"] == "--threshold" and given["threshold_logit"] == 0.0


def test_scan_refuses_a_policy_without_a_threshold_unless_forced(trained, caplog, run_cli):
    """The centre-crop threshold under 9 crops combined by max flagged 95 % of held-out toy reals at a
    5 % target: a scan with a policy the detector has no threshold for stops before any work."""
    detector = Detector.load(trained.path)
    paths = trained.validation["paths"][:2]
    caplog.set_level("WARNING", logger="i2pscan")
    run_scan(paths, None, detector, ScanOptions(crops=4, combine="max"))
    assert not caplog.records
    with pytest.raises(I2PError) as err:
        run_scan(paths, None, detector, ScanOptions(crops=9, combine="max"))
    assert str(err.value) == ("the detector has no threshold fitted for `crops` 9 `combine` max (it has 1:mean, "
                              "4:max); finetune with `crop_policies` 9:max to fit one, or pass `force_policy` to use "
                              "the centre-crop threshold, whose false-positive rate may differ")
    rows = []
    run_scan(paths, None, detector, ScanOptions(crops=9, combine="max", force_policy=True), on_row=rows.append)
    assert len(rows) == 2 and [r.getMessage() for r in caplog.records] == [
        "the detector has no threshold fitted for --crops 9 --combine max: using the centre-crop one, as forced; "
        "its false-positive rate may differ"]
    caplog.clear()
    run_scan(paths, None, detector, ScanOptions(crops=9, combine="max", threshold=0.5))  # a cut of the user's own
    assert not caplog.records
    r = run_cli("scan", *paths, "-d", trained.path, "--crops", "9", "--combine", "max", "--workers", "0")
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.strip() == ("Error: the detector has no threshold fitted for --crops 9 --combine max (it has "
                                "1:mean, 4:max); finetune with --crop-policies 9:max to fit one, or pass "
                                "--force-policy to use the centre-crop threshold, whose false-positive rate may differ")
    r = run_cli("scan", *paths, "-d", trained.path, "--crops", "9", "--combine", "max", "--workers", "0",
                "--force-policy", "--format", "jsonl")
    assert r.exit_code in (0, 1) and len(r.stdout.splitlines()) == 2


def test_temperature_is_fitted_on_the_saved_detectors_validation_logits_and_lowers_nll(trained):
    """Validated on its own generator, the temperature never sharpens (floored at 1): unfloored,
    it would have, which is what over-confidence on unseen generators is made of."""
    v = trained.validation
    selection = trained.meta["training"]["selection"]
    assert selection == {"validation": "in-distribution", "train_subsets": ["train"], "val_subsets": ["train"],
                         "temperature_floor": 1.0}
    for key, z in v["logits"].items():
        t = trained.meta["thresholds"][key]["temperature"]
        assert t == fit_temperature(z, v["labels"], (1.0, 20.0)) and t >= 1.0 - 1e-6
        y = torch.as_tensor(v["labels"], dtype=torch.float64)
        zz = torch.as_tensor(z, dtype=torch.float64)
        nll = [float(torch.nn.functional.binary_cross_entropy_with_logits(zz / s, y)) for s in (t, 1.0)]
        assert nll[0] <= nll[1] + 1e-12
    assert fit_temperature(v["logits"]["1:mean"], v["labels"]) < 0.9  # the floor bites on the toy run


def test_training_validation_and_calibration_are_disjoint(trained, cal, sample):
    v = set(trained.validation["paths"])
    training = set(sample.paths) - v
    assert v and training and not v & training
    assert trained.meta["training"]["counts"]["val"]["real"] + trained.meta["training"]["counts"]["train"]["real"] \
        == sample.counts()["real"]
    assert FileSet(cal.sample["files"]).find(sorted(v)) == []
    assert trained.meta["training"]["val_in_calibration"] == 0
    assert len(cal.sample["files"]) == 24 and all(len(e[2]) == 64 for e in cal.sample["files"])


@pytest.mark.slow
def test_best_epoch_is_the_argmax_of_the_logged_auc_and_is_what_is_saved(tmp_path, cal, sample, monkeypatch):
    scripted = iter([0.7, 0.9, 0.8])
    from i2pscan.train import loop

    real_metrics = loop.validation_metrics

    def metrics(logits, labels):
        return {**real_metrics(logits, labels), "val_auc": next(scripted)}

    monkeypatch.setattr(loop, "validation_metrics", metrics)
    out = tmp_path / "d.safetensors"
    states = {}

    def remember(epoch, entry):
        with safe_open(checkpoint_path(out), "pt") as f:
            states[epoch] = {k: f.get_tensor(k) for k in f.keys() if k.startswith(("delta.", "head."))}

    result = finetune(load_backbone("i2p-tiny"), cal, sample, out, _config(epochs=3, crop_policies=()),
                      on_epoch_end=remember)
    aucs = [e["val_auc"] for e in result.log]
    assert aucs == [0.7, 0.9, 0.8]
    assert result.meta["training"]["best_epoch"] == 1 + int(np.argmax(aucs)) == 2
    assert result.meta["training"]["validation"]["val_auc"] == 0.9
    with safe_open(out, "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    for key, value in states[2].items():
        name = key + ".values" if key.startswith("delta.") else key
        torch.testing.assert_close(saved[name].float(), value.float(), rtol=0, atol=0)
    assert any(not torch.equal(states[3][k], states[2][k]) for k in states[2])


def test_validation_that_is_training_data_is_refused(tmp_path, cal, sample, toy_dir):
    train_dir = toy_dir / "tconv" / "train"
    link = tmp_path / "link"
    link.symlink_to(train_dir, target_is_directory=True)
    copies = tmp_path / "copies"
    for label in ("nature", "ai"):
        (copies / label).mkdir(parents=True)
        for i, src in enumerate(sorted((train_dir / label).iterdir())[:3]):
            shutil.copy(src, copies / label / f"renamed{i}{src.suffix}")
    for val_dir, example in ((train_dir, None), (link, None), (copies, None)):
        with pytest.raises(I2PError, match=r"^\d+ training image\(s\) are also validation images \(the same file "
                                           r"or the same bytes, e\.g\. "):
            finetune(load_backbone("i2p-tiny"), cal, sample, tmp_path / "x.safetensors", _config(),
                     val=load_labelled(val_dir))
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_refuses_val_equal_to_train_with_exit_2(tmp_path, toy_dir, run_cli, cal):
    cal_file = tmp_path / "cal.safetensors"
    cal.save(cal_file)
    train = toy_dir / "tconv" / "train"
    r = run_cli("finetune", train, "--calibration", cal_file, "--out", tmp_path / "d.safetensors",
                "--val", f"{train}/", "--device", "cpu", "--workers", "0")
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: 96 training image(s) are also validation images (the same file or the same "
                               "bytes, e.g. ")
    r = run_cli("finetune", train, "--calibration", cal_file, "--out", tmp_path / "d.safetensors",
                "--crop-policies", "4:median", "--device", "cpu")
    assert r.exit_code == 2 and r.stderr.strip() == ("Error: crop policy '4:median' is not N:mean or N:max "
                                                     "(N crops per image, e.g. 9:max)")


def test_config_refusals():
    with pytest.raises(I2PError, match=r"^`strategy` i2p ranks weights by the task saliency of a warmed-up head: "
                                       r"`warmup_steps` must be at least 1 \(or `saliency_head` probe\)$"):
        FinetuneConfig(strategy="i2p", warmup_steps=0, saliency_head="warmup")
    with pytest.raises(I2PError, match="^`strategy` task-fisher ranks"):
        FinetuneConfig(strategy="task-fisher", warmup_steps=0, saliency_head="warmup")
    assert FinetuneConfig(strategy="low-sensitivity", warmup_steps=0).warmup_steps == 0
    assert FinetuneConfig(crop_policies=("9:max", "1:max", "4:mean")).crop_policies == ("1:mean", "4:mean", "9:max")
    # by default every policy scan documents (centre; centre and corners; the 3x3 grid) is fitted
    assert FinetuneConfig().crop_policies == ("1:mean", "5:max", "5:mean", "9:max", "9:mean")


def test_too_few_real_validation_images_and_calibration_overlap_are_warned(tmp_path, toy_dir, run_cli):
    train = toy_dir / "tconv" / "train"
    cal_file = tmp_path / "cal.safetensors"
    r = run_cli("calibrate", train, "--backbone", "i2p-tiny", "--out", cal_file, "--top-k", "1", "--folds", "2",
                "--device", "cpu", "--workers", "0", "-q")
    assert r.exit_code == 0, r.stderr
    r = run_cli("finetune", train, "--calibration", cal_file, "--out", tmp_path / "d.safetensors", "--dry-run",
                "--target-fpr", "0.01", "--warmup-steps", "2", "--sensitivity-samples", "4", "--saliency-samples",
                "4", "--device", "cpu", "--workers", "0")
    assert r.exit_code == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning")]
    assert warnings == [
        "warning: 20 of 20 validation image(s) were in the calibration sample (they chose the critical layers): "
        "calibrate on images that do not validate",
        "warning: only 10 real validation image(s): a threshold at --target-fpr 0.01 needs at least 99 to hold it "
        "(here a new real image is flagged with probability 0.0909 at best)",
    ]


def test_split_keeps_calibration_images_out_of_validation_where_it_can(sample, tmp_path):
    """Fast (no training): the split itself, with a calibration sample of 12 images per class."""
    from types import SimpleNamespace

    part = load_labelled(sample.source, max_per_class=12)
    cal_stub = SimpleNamespace(sample={"files": FileSet.of(part.paths, hashed=True).entries()})
    train, val, overlap = finetune_module.hold_out_validation(sample, None, _config(), cal_stub)
    assert overlap == 0 and not set(val.paths) & set(part.paths) and not set(val.paths) & set(train.paths)
    assert sorted(train.paths + val.paths) == sorted(sample.paths)
    assert val.counts()["real"] == val.counts()["fake"] == 10  # the split's size is kept
    plain_train, plain_val, _ = finetune_module.hold_out_validation(sample, None, _config(), None)
    assert len(plain_val.items) == len(val.items) and set(plain_val.paths) & set(part.paths)
    everything = SimpleNamespace(sample={"files": FileSet.of(sample.paths).entries()})
    _, _, all_overlap = finetune_module.hold_out_validation(sample, None, _config(), everything)
    assert all_overlap == 20


def test_file_set_matches_real_paths_and_bytes_not_names(tmp_path):
    a, b, c = tmp_path / "a.bin", tmp_path / "b.bin", tmp_path / "c.bin"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    c.write_bytes(b"other byte")  # same size, other content
    link = tmp_path / "link.bin"
    link.symlink_to(a)
    files = FileSet.of([str(a)])
    assert files.find([str(b), str(c), str(link), str(tmp_path / "missing.bin")]) == [0, 2]
    recorded = FileSet(files.entries())
    assert recorded.find([str(b), str(c), str(link)]) == [0, 2]
    import hashlib

    assert files.entries() == [[str(a.resolve()), 10, hashlib.sha256(b"same bytes").hexdigest()]]


def test_retention_is_logged_per_epoch_stored_and_shown(trained, run_cli):
    keys = {"drift_mean", "drift_max", "delta_rel", "delta_max", "delta_max_rel"}
    assert all(keys <= set(entry) for entry in trained.log)
    best = next(e for e in trained.log if e["epoch"] == trained.meta["training"]["best_epoch"])
    retention = trained.meta["training"]["retention"]
    assert retention == {**{k: best[k] for k in keys}, "drift_images": 10}
    assert 0 < retention["drift_mean"] <= retention["drift_max"] and 0 < retention["delta_rel"] < 1
    import json

    logged = [json.loads(line) for line in open(trained.path[:-len(".safetensors")] + ".log.jsonl")]
    assert [e["drift_mean"] for e in logged] == [e["drift_mean"] for e in trained.log]
    r = run_cli("info", trained.path)
    assert r.exit_code == 0
    line = next(x for x in r.stdout.splitlines() if x.startswith("retention"))
    assert "embedding drift (1 - cos) mean" in line and "over 10 held-out real images" in line
    assert any(x.startswith("epoch, temperature, threshold") and "in-distribution" in x for x in r.stdout.splitlines())
