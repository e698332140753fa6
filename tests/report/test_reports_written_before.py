"""Reports written by i2pscan before the reorganisation (0.1.0, commit 04a7af8) resume after it:
shards of a killed scan, a finished report to extend, and a metadata-only scan, with the detector
file of that version; the rows it wrote are the rows today's code scores."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from i2pscan.io.pixels import save_image

DATA = Path(__file__).resolve().parents[1] / "data" / "reports-0.1.0"


@pytest.fixture
def legacy(tmp_path, chdir):
    for item in DATA.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy)(item, tmp_path / item.name)
    for i in range(10):  # the photos make_at_04a7af8.py scanned, and four it did not
        (tmp_path / "photos").mkdir(exist_ok=True)
        rgb = np.random.default_rng(i).integers(0, 255, (72, 72, 3), dtype=np.uint8)
        save_image(rgb, tmp_path / "photos" / f"{i:02d}.png")
    return tmp_path


def _rows(report) -> dict[str, dict]:
    return {r["path"]: r for r in pq.read_table(report).to_pylist()}


@pytest.mark.parametrize("report", ["killed.parquet", "finished.parquet"])
def test_a_report_of_0_1_0_resumes_with_every_file_once_and_the_same_scores(legacy, run_cli, report):
    before = (_rows(report) if report.endswith("finished.parquet")
              else {r["path"]: r for p in sorted(Path(report + ".parts").iterdir()) for r in pq.read_table(p).to_pylist()})
    assert sorted(before) == [f"photos/{i:02d}.png" for i in range(6)]
    r = run_cli("scan", "photos", "-d", "detector.safetensors", "-o", report, "--resume", "--workers", "0",
                "--batch-size", "2", "-q")
    assert r.exit_code in (0, 1), r.stderr
    after = _rows(report)
    assert list(after) == [f"photos/{i:02d}.png" for i in range(10)] and not Path(report + ".parts").exists()
    fresh = run_cli("scan", "photos", "-d", "detector.safetensors", "-o", "today.parquet", "--workers", "0",
                    "--batch-size", "2", "-q")
    assert fresh.exit_code == r.exit_code
    today = _rows("today.parquet")
    for path, old in before.items():  # what 0.1.0 scored is what today's code scores
        assert (after[path]["logit"], after[path]["verdict"]) == (old["logit"], old["verdict"]) == \
               (today[path]["logit"], today[path]["verdict"])


def test_a_metadata_only_scan_of_0_1_0_resumes(legacy, run_cli):
    r = run_cli("scan", "photos", "--metadata-only", "-o", "metadata.parquet", "--resume", "-q")
    assert r.exit_code == 0, r.stderr
    assert list(_rows("metadata.parquet")) == [f"photos/{i:02d}.png" for i in range(10)]
