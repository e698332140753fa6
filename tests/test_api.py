"""The public API: what the CLI does, a notebook does with the same functions and gets the same
report; a stopped scan resumes; the lock holds; the names stay callable however i2pscan is imported."""

from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq
import pytest

import i2pscan
from helpers import noise_image
from i2pscan import load_detector, scan
from i2pscan.errors import ConfigError, ReportBusy
from i2pscan.scan.session import ScanStopped


def _rows(report):
    table = pq.read_table(report)
    return [{k: v for k, v in row.items() if k != "mtime"} for row in table.to_pylist()]


def test_a_notebook_scan_writes_the_report_the_cli_writes(tmp_path, detector_file, run_cli, chdir):
    for i in range(6):
        noise_image(tmp_path / "photos" / f"{i}.png", seed=i)
    outcome = scan(["photos"], output="api.parquet", detector=load_detector(str(detector_file), device="cpu"),
                   workers=0)
    r = run_cli("scan", "photos", "-d", detector_file, "-o", "cli.parquet", "--workers", "0", "-q")
    assert r.exit_code in (0, 1), r.stderr
    assert _rows("api.parquet") == _rows("cli.parquet") and len(_rows("api.parquet")) == 6
    assert outcome.summary.files == 6 and outcome.report == "api.parquet"
    assert (outcome.flagged > 0) == (r.exit_code == 1)


def test_a_stopped_scan_keeps_its_rows_and_resume_finishes_it(tmp_path, detector_file, chdir):
    for i in range(8):
        noise_image(tmp_path / "photos" / f"{i}.png", seed=i)
    detector = load_detector(str(detector_file), device="cpu")
    seen = []

    def interrupt(row):
        seen.append(row)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(ScanStopped) as stopped:
        scan(["photos"], output="r.parquet", detector=detector, on_row=interrupt, workers=0, batch_size=2,
             flush_rows=2)
    assert isinstance(stopped.value.cause, KeyboardInterrupt) and stopped.value.kept >= 4
    assert "`resume`" in str(stopped.value)
    outcome = scan(["photos"], output="r.parquet", detector=detector, resume=True, workers=0)
    assert outcome.summary.skipped_done == stopped.value.kept
    assert sorted(r["path"] for r in _rows("r.parquet")) == [f"photos/{i}.png" for i in range(8)]


def test_the_lock_holds_against_a_second_writer(tmp_path, detector_file, chdir):
    from i2pscan.report.writer import open_writer

    noise_image(tmp_path / "photos" / "a.png")
    holder = open_writer("r.parquet", {"detector_id": None})
    try:
        with pytest.raises(ReportBusy, match="another scan"):
            scan(["photos"], output="r.parquet", metadata_only=True)
    finally:
        holder.abandon()


def test_requests_that_cannot_work_stop_before_any_work(tmp_path, chdir):
    noise_image(tmp_path / "photos" / "a.png")
    with pytest.raises(ConfigError, match="^`threshold` needs a model"):
        scan(["photos"], metadata_only=True, threshold=0.5)
    with pytest.raises(ConfigError, match="^unknown scan option 'colour'"):
        scan(["photos"], metadata_only=True, colour="red")
    with pytest.raises(ConfigError, match="^`resume` needs `output`"):
        scan(["photos"], metadata_only=True, resume=True)


@pytest.mark.slow
def test_scan_and_evaluate_stay_callable_however_their_modules_are_imported():
    code = ("import i2pscan.scan.session as s, i2pscan.evaluate as e, i2pscan.scan.ray\n"
            "from i2pscan import scan, evaluate\n"
            "import i2pscan\n"
            "assert callable(scan) and callable(evaluate) and callable(i2pscan.scan) and callable(i2pscan.evaluate)\n"
            "assert s.run_scan and e.metrics and i2pscan.scan.session is s\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert set(i2pscan.__all__) == {"__version__", "scan", "load_detector", "calibrate", "finetune", "evaluate"}
