import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from i2pscan.io.pixels import save_image
from i2pscan.model import inference
from i2pscan.model.detector import Detector
from i2pscan.evaluate import CLEAN, METRICS, evaluate, metrics, parse_perturbations, rows_for, write_result
from i2pscan.plots import evaluation as plot
from i2pscan.scan.options import ScanOptions


def test_metrics_match_hand_counts_and_sklearn():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    logits = np.array([-3.0, -1.0, 0.5, 2.0, -0.5, 1.0, 3.0, 4.0])
    m = metrics(labels, logits, cut=1.5)
    assert m["acc_real"] == 3 / 4 and m["acc_fake"] == 2 / 4 and m["acc"] == 5 / 8
    assert m["acc_real_05"] == 2 / 4 and m["acc_fake_05"] == 3 / 4 and m["acc_05"] == 5 / 8
    assert m["auc"] == pytest.approx(roc_auc_score(labels, logits))
    assert m["ap"] == pytest.approx(average_precision_score(labels, logits))
    # best threshold between 0.5 and 1.0 (or -0.5/0.5): 3 of 4 right on each side
    assert m["oracle_acc"] == pytest.approx(0.75)
    # the highest real is 2.0: at FPR 0 only 3.0 and 4.0 are caught
    assert m["tpr_at_fpr_1"] == pytest.approx(0.5) and m["tpr_at_fpr_5"] == pytest.approx(0.5)
    assert m["fpr"] == 1 / 4  # one real (2.0) at or above the cut 1.5
    assert metrics(labels, logits, cut=1.5, target_fpr=0.25)["tpr_at_target"] == pytest.approx(0.75)  # cut in (0.5, 1]
    assert metrics(labels, logits, cut=1.5, target_fpr=0.5)["tpr_at_target"] == pytest.approx(1.0)
    assert m["tpr_at_target"] == m["tpr_at_fpr_5"]  # the default target is 5 %


def test_metrics_with_one_class_are_nan_not_errors():
    m = metrics(np.array([1, 1]), np.array([0.3, 2.0]), cut=1.0)
    assert m["acc_fake"] == 0.5 and math.isnan(m["auc"]) and math.isnan(m["acc_real"])


@pytest.fixture
def controlled(tmp_path, detector_file, monkeypatch):
    """Images whose grey level *is* the logit the patched detector returns."""
    rng = np.random.default_rng(0)
    truth = []
    for subset in ("ganA", "ganB"):
        for label, folder in ((0, "nature"), (1, "ai")):
            for i in range(12):
                level = int(rng.integers(0, 256))
                (tmp_path / subset / folder).mkdir(parents=True, exist_ok=True)
                save_image(np.full((70, 70, 3), level, np.uint8), tmp_path / subset / folder / f"{i}.png")
                truth.append((subset, label, (level - 128) / 16.0))

    detector = Detector.load(detector_file)
    mean, std = detector.preprocess.mean[0], detector.preprocess.std[0]

    def logits(model, pixels, extents=None):  # inference.logits: the one place every logit comes from
        pixels = torch.as_tensor(pixels)
        if pixels.dtype == torch.uint8:  # a scan's crops travel as uint8, normalised by inference.logits
            return (pixels[:, 0].float().mean(dim=(1, 2)) - 128) / 16.0
        level = (pixels[:, 0].mean(dim=(1, 2)) * std + mean) * 255
        return (level.round() - 128) / 16.0

    monkeypatch.setattr(inference, "logits", logits)
    return detector, tmp_path, truth


def test_evaluate_gives_exactly_the_expected_metrics(controlled):
    detector, root, truth = controlled
    from i2pscan.train.samples import load_labelled

    result = evaluate(detector, load_labelled(root), ScanOptions(workers=0))
    rows = {r["subset"]: r for r in result.rows}
    assert list(rows) == ["ganA", "ganB", "overall", "mean"]
    cut = detector.threshold_logit
    for name in ("ganA", "ganB"):
        labels = np.array([t[1] for t in truth if t[0] == name])
        logits = np.array([t[2] for t in truth if t[0] == name])
        expected = metrics(labels, logits, cut)
        for m in METRICS:
            assert rows[name][m] == pytest.approx(expected[m]), (name, m)
        assert rows[name]["auc"] == pytest.approx(roc_auc_score(labels, logits))
        assert rows[name]["n_real"] == rows[name]["n_fake"] == 12
    for m in METRICS:
        assert rows["mean"][m] == pytest.approx((rows["ganA"][m] + rows["ganB"][m]) / 2)
    all_labels = np.array([t[1] for t in truth])
    assert rows["overall"]["ap"] == pytest.approx(average_precision_score(all_labels, [t[2] for t in truth]))


def test_outputs_and_plots(controlled, tmp_path):
    detector, root, _ = controlled
    from i2pscan.train.samples import load_labelled

    result = evaluate(detector, load_labelled(root), ScanOptions(workers=0), (CLEAN, "blur:2"))
    assert {r["perturbation"] for r in result.rows} == {"none", "blur:2"}
    import pandas as pd

    for suffix in ("parquet", "csv", "md"):
        write_result(result, str(tmp_path / f"t.{suffix}"))
    assert len(pd.read_parquet(tmp_path / "t.parquet")) == 8
    assert len(pd.read_csv(tmp_path / "t.csv")) == 8
    assert (tmp_path / "t.md").read_text().count("\n") == 10
    written = plot(result, str(tmp_path / "plots"))
    assert len(written) == 4 and all(open(p, "rb").read(4) == b"\x89PNG" for p in written)


def test_every_detector_is_read_the_same_way_and_fakes_only_perturbations(controlled):
    """The fair protocol: TPR at the detector's own target FPR, FPR at its own threshold, its drift;
    ``fakes:`` degrades the fakes only (JPEG-aligned evaluation); unpadded rows leave small images out."""
    detector, root, truth = controlled
    from i2pscan.train.samples import load_labelled

    sample = load_labelled(root)
    result = evaluate(detector, sample, ScanOptions(workers=0), ("none", "fakes:blur:2"))
    clean = [r for r in result.rows if r["perturbation"] == "none"]
    fakes = {r["subset"]: r for r in result.rows if r["perturbation"] == "fakes:blur:2"}
    drift = detector.meta["training"]["retention"]["drift_mean"]
    assert result.drift == drift > 0 and result.target_fpr == detector.meta["target_fpr"]
    assert all(r["drift"] == drift for r in result.rows)
    for r in clean:
        assert r["fpr"] == pytest.approx(1 - r["acc_real"])
    # uniform grey images: a blur changes nothing, so degrading the fakes only leaves every number as it was
    for r in clean:
        for m in ("acc", "ap", "auc", "fpr", "tpr_at_target"):
            assert fakes[r["subset"]][m] == pytest.approx(r[m]), (r["subset"], m)
    s = result.scores[0]
    assert s.unpadded.all()  # 70 px images, 64 px crops: nothing is padded
    kept = rows_for(s, s.subsets == "ganA", result.threshold_logit, result.target_fpr, result.drift)
    assert kept[0]["subset"] == "ganA" and kept[0]["auc"] == pytest.approx(clean[0]["auc"]) and len(kept) == 1
    assert parse_perturbations(["none", "fakes:jpeg:90", "blur:3"]) == ("none", "fakes:jpeg:90", "blur:3")
    assert parse_perturbations([]) == ("none",)
    from i2pscan.errors import I2PError

    with pytest.raises(I2PError, match="^`perturb` jpeg:0: expected"):
        parse_perturbations(["fakes:jpeg:0"])


@pytest.mark.slow
def test_evaluate_cli_on_genimage_layout(toy_dir, detector_file, run_cli, tmp_path):
    r = run_cli("evaluate", toy_dir, "--split", "val", "-d", detector_file, "--out", tmp_path / "e.csv",
                "--perturb", "none", "--perturb", "jpeg:65", "--workers", "0", "--precision", "fp32")
    assert r.exit_code == 0, r.stderr
    assert "tconv" in r.stdout and "pixelshuffle" in r.stdout and "mean" in r.stdout and "under jpeg:65" in r.stdout
    import pandas as pd

    table = pd.read_csv(tmp_path / "e.csv")
    assert set(table["subset"]) == {"tconv", "pixelshuffle", "overall", "mean"}
    tconv = table[(table["subset"] == "tconv") & (table["perturbation"] == "none")].iloc[0]
    assert tconv["auc"] > 0.85 and tconv["n_real"] == 24
    assert {"fpr", "tpr_at_target", "drift"} <= set(table.columns) and tconv["drift"] > 0


@pytest.mark.parametrize("args,message", [
    (["--perturb", "jpeg:200"], "--perturb jpeg:200"),
    (["--out", "x.txt"], "--out must end in"),
    (["--subset", "nope"], "no subset named nope"),
    (["--precision", "fp16"], "'fp16' is not one of"),
    (["--perturb", "fakes:blur:-1"], "--perturb blur:-1"),
    (["--crops", "4"], "no threshold fitted for --crops 4 --combine mean"),
])
def test_evaluate_cli_errors(toy_dir, detector_file, run_cli, args, message):
    r = run_cli("evaluate", toy_dir, "-d", detector_file, *args)
    assert r.exit_code == 2 and message in r.stderr
