"""Failure paths found in review: each must end in one line and a documented exit code, losing nothing."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers import tamper_detector
from i2pscan.io.pixels import save_image
from i2pscan.model.detector import Detector
from i2pscan.errors import I2PError


def _img(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(np.random.default_rng(seed).integers(0, 255, (70, 70, 3), dtype=np.uint8), path)
    return path


@pytest.mark.parametrize("case,message", [
    ("temperature", "metadata temperature: 0 is less than the minimum of 0.05"),
    ("threshold", "metadata threshold_logit: None is not of type 'number'"),
    ("view", "metadata view: 'nope' is not one of"),
    ("layers", r"metadata head.config.layers\[0\]: 0 is less than the minimum of 1"),
    ("last-block-type", "metadata last_block: '4' is not of type 'integer'"),
    ("orphan-indices", "has no values"),
    ("nan", "NaN or infinite"),
    ("preprocessing", "metadata preprocessing: 'crop_size' is a required property"),
])
def test_damaged_detector_fields_are_refused_at_load(detector_file, tmp_path, run_cli, case, message):
    edits = {
        "temperature": dict(meta_edit=lambda m: m.update(temperature=0)),
        "threshold": dict(meta_edit=lambda m: m.update(threshold_logit=None)),
        "view": dict(meta_edit=lambda m: m.update(view="nope")),
        "layers": dict(meta_edit=lambda m: m["head"]["config"].update(layers=[0, 3])),
        "last-block-type": dict(meta_edit=lambda m: m.update(last_block="4")),
        "orphan-indices": dict(tensor_edit=lambda t: t.pop(next(k for k in t if k.endswith(".values")))),
        "nan": dict(tensor_edit=lambda t: t.update({"head.gate": torch.full_like(t["head.gate"], float("nan"))})),
        "preprocessing": dict(meta_edit=lambda m: m.update(preprocessing={})),
    }[case]
    bad = tamper_detector(detector_file, tmp_path / "bad.safetensors", **edits)
    with pytest.raises(I2PError, match=message):
        Detector.load(bad)
    _img(tmp_path / "in" / "a.png")
    r = run_cli("scan", tmp_path / "in", "-d", bad, "-o", tmp_path / "r.parquet")
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.parquet.parts").exists()


def test_unexpected_exceptions_exit_2_in_one_line(tmp_path, run_cli, monkeypatch):
    _img(tmp_path / "a.png")
    import i2pscan.io.discover

    def boom(*args, **kwargs):
        raise ZeroDivisionError("surprise")

    monkeypatch.setattr(i2pscan.io.discover, "discover", boom)
    r = run_cli("scan", tmp_path / "a.png", "-d", tmp_path / "whatever.safetensors")
    assert r.exit_code == 2
    assert "internal error: ZeroDivisionError: surprise" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    text = tmp_path / "weights.safetensors"
    text.write_text("not weights")
    r = run_cli("calibrate", tmp_path, "--backbone", "i2p-tiny", "--pretrained", text, "--out", tmp_path / "c.safetensors")
    assert r.exit_code == 2


def test_non_finite_scores_are_error_rows(detector_file, tmp_path, run_cli, monkeypatch):
    _img(tmp_path / "in" / "a.png")
    from i2pscan.model import inference

    monkeypatch.setattr(inference, "logits", lambda model, pixels, extents=None: torch.full((len(pixels),), float("nan")))
    # a detector that is non-finite even on a neutral image is refused at load (test_detector_file);
    # this one is taken to fail only on some images
    monkeypatch.setattr(Detector, "_check_neutral", lambda self: None)
    r = run_cli("scan", tmp_path / "in", "-d", detector_file, "--format", "jsonl", "--workers", "0")
    row = json.loads(r.stdout)
    assert r.exit_code == 3 and row["verdict"] == "error" and "non-finite" in row["error"]


def test_resume_never_moves_a_finished_report_it_cannot_extend(detector_file, tmp_path, run_cli):
    _img(tmp_path / "in" / "a.png")
    report = tmp_path / "r.parquet"
    assert run_cli("scan", tmp_path / "in", "-d", detector_file, "-o", report, "--workers", "0").exit_code in (0, 1)
    before = report.read_bytes()
    r = run_cli("scan", tmp_path / "in", "-d", detector_file, "-o", report, "--resume", "--crops", "5")
    assert r.exit_code == 2 and "other crops" in r.stderr
    assert report.read_bytes() == before and not (tmp_path / "r.parquet.parts").exists()
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"x": [1]}), foreign)
    r = run_cli("scan", tmp_path / "in", "-d", detector_file, "-o", foreign, "--resume")
    assert r.exit_code == 2 and "not an i2pscan report" in r.stderr and foreign.exists()
    # extending a finished report with a new file: the old rows stay, the new one is added
    _img(tmp_path / "in" / "b.png", seed=1)
    r = run_cli("scan", tmp_path / "in", "-d", detector_file, "-o", report, "--resume", "--workers", "0")
    assert r.exit_code in (0, 1), r.stderr
    assert [os.path.basename(x["path"]) for x in pq.read_table(report).to_pylist()] == ["a.png", "b.png"]


def test_a_second_scan_to_the_same_report_is_refused(detector_file, tmp_path, run_cli):
    from i2pscan.report.writer import ReportWriter

    meta = {"detector_id": "x", "options": {}}
    first = ReportWriter(str(tmp_path / "r.parquet"), meta)
    with pytest.raises(I2PError, match="another scan is writing"):
        ReportWriter(str(tmp_path / "r.parquet"), meta, resume=True)
    first.abandon()
    assert not (tmp_path / "r.parquet.parts").exists()


def test_missing_paths_on_stdin_and_unwritable_outputs(detector_file, tmp_path, run_cli):
    _img(tmp_path / "a.png")
    r = run_cli("scan", "-", "-d", detector_file, "--format", "jsonl", "--workers", "0",
                input=f"{tmp_path / 'a.png'}\n{tmp_path / 'gone.png'}\n")
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert r.exit_code in (1, 3) and len(rows) == 2 and rows[1]["error"].startswith("file not found")
    r = run_cli("calibrate", tmp_path, "--backbone", "i2p-tiny", "--out", tmp_path / "no" / "such" / "c.safetensors")
    assert r.exit_code == 2 and "does not exist" in r.stderr
    r = run_cli("scan", tmp_path / "a.png", "-d", detector_file, "-o", tmp_path / "no" / "r.parquet")
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_finetune_refuses_overlap_and_reports_divergence(tmp_path, toy_dir):
    from i2pscan.model.backbone import load_backbone
    from i2pscan.train.calibrate import CalibrateConfig, calibrate
    from i2pscan.train.samples import load_labelled
    from i2pscan.train.finetune import FinetuneConfig, finetune

    sample = load_labelled(toy_dir / "tconv" / "train", max_per_class=16)
    cal = calibrate(load_backbone("i2p-tiny"), sample, CalibrateConfig(top_k=2, folds=2))
    config = FinetuneConfig(epochs=1, batch_size=8, sensitivity_samples=8, saliency_samples=8, warmup_steps=5)
    with pytest.raises(I2PError, match="training image\\(s\\) are also validation images"):
        finetune(load_backbone("i2p-tiny"), cal, sample, tmp_path / "d.safetensors", config, val=sample)
    wild = FinetuneConfig(epochs=1, batch_size=8, sensitivity_samples=8, saliency_samples=8, warmup_steps=5,
                          lr_head=1e12, lr_backbone=1e12)
    with pytest.raises(I2PError, match="diverged"):
        finetune(load_backbone("i2p-tiny"), cal, sample, tmp_path / "w.safetensors", wild)
