"""`scan -o DIR/`: a Parquet dataset folder of part files with the report's schema."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from helpers import write_corrupt_files
from i2pscan.io.pixels import save_image
from i2pscan.report.schema import SCHEMA


def _img(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(np.random.default_rng(seed).integers(0, 255, (72, 72, 3), dtype=np.uint8), path)
    return path


def test_dataset_folder_has_the_report_rows(tmp_path, detector_file, run_cli, chdir):
    for i in range(20):
        _img(tmp_path / "in" / f"{i:02d}.png", seed=i)
    write_corrupt_files(tmp_path / "in")
    single = run_cli("scan", "in", "-d", detector_file, "-o", "one.parquet", "--workers", "0", "-q")
    r = run_cli("scan", "in", "-d", detector_file, "-o", "out/", "--workers", "0", "-q", "--flush-rows", "5")
    assert r.exit_code == single.exit_code and r.exit_code in (1, 3), r.stderr
    names = sorted(os.listdir("out"))
    assert names == [f"part-{i:06d}.parquet" for i in range(1, 6)]  # 23 rows, 5 per part
    table = ds.dataset("out").to_table()
    assert table.schema.remove_metadata() == SCHEMA.remove_metadata()
    assert table.to_pylist() == pq.read_table("one.parquet").to_pylist()
    import duckdb
    import pandas
    import polars

    assert len(pandas.read_parquet("out")) == 23
    assert polars.read_parquet("out/*.parquet").height == 23
    assert duckdb.sql("select count(*) from 'out/*.parquet'").fetchall() == [(23,)]
    # the folder is a report: not replaced silently, resumable, replaceable
    r = run_cli("scan", "in", "-d", detector_file, "-o", "out/", "--workers", "0", "-q")
    assert r.exit_code == 2 and "out already holds a report: pass --resume" in r.stderr
    os.unlink("out/part-000005.parquet")  # as if the scan had been killed before its last part
    r = run_cli("scan", "in", "-d", detector_file, "-o", "out/", "--workers", "0", "-q", "--resume")
    assert r.exit_code == single.exit_code
    rows = ds.dataset("out").to_table().to_pylist()
    assert sorted(x["path"] for x in rows) == sorted(x["path"] for x in pq.read_table("one.parquet").to_pylist())
    r = run_cli("scan", "in", "-d", detector_file, "-o", "out/", "--workers", "0", "-q", "--overwrite")
    assert r.exit_code == single.exit_code and sorted(os.listdir("out")) == ["part-000001.parquet"]


def test_dataset_path_that_is_a_file_is_refused(tmp_path, detector_file, run_cli, chdir):
    _img(tmp_path / "a.png")
    Path("taken").write_text("x")
    r = run_cli("scan", "a.png", "-d", detector_file, "-o", "taken/", "-q")
    assert r.exit_code == 2 and "taken is a file; -o DIR/ needs a folder" in r.stderr
    os.mkdir("folder")
    r = run_cli("scan", "a.png", "-d", detector_file, "-o", "folder", "-q")
    assert r.exit_code == 2 and "folder is a folder; -o needs a file name (or DIR/" in r.stderr


def _declared(path: Path) -> Path:
    """A PNG whose own metadata declares AI (flagged in a --metadata-only scan)."""
    from PIL import Image, PngImagePlugin

    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a fox\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1")
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(path, pnginfo=info)
    return path


def test_report_reads_a_dataset_folder(tmp_path, run_cli, chdir):
    for i in range(3):
        _declared(Path("in") / f"ai{i}.png")
    _img(Path("in") / "plain.png")
    r = run_cli("scan", "in", "--metadata-only", "-o", "out/", "--workers", "0", "-q", "--flush-rows", "2")
    assert r.exit_code == 1 and len(os.listdir("out")) == 2
    r = run_cli("report", "out/")
    assert r.exit_code == 0, r.stderr
    assert "flagged as synthetic" in r.stdout and "│ 3" in r.stdout.split("flagged as synthetic")[1].splitlines()[0]
    assert "AUTOMATIC1111 generation parameters in PNG text parameters" in r.stdout  # the why of the top files
    r = run_cli("report", "out", "--html", "page", "--workers", "0")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip().endswith("page/index.html")
    assert "out" in Path("page/index.html").read_text()
    os.mkdir("empty")
    r = run_cli("report", "empty")
    assert r.exit_code == 2 and "empty is a folder with no report parts (part-*.parquet) in it" in r.stderr


def test_flagged_only_after_a_resume_prints_every_flagged_file_of_the_report(tmp_path, run_cli, chdir):
    _declared(Path("in/a.png"))
    _img(Path("in/b.png"))
    r = run_cli("scan", "in", "--metadata-only", "-o", "r.parquet", "--workers", "0", "-q")
    assert r.exit_code == 1
    _declared(Path("in/c.png"))
    r = run_cli("scan", "in", "--metadata-only", "-o", "r.parquet", "--workers", "0", "--resume", "--flagged-only")
    assert r.exit_code == 1
    assert r.stdout.splitlines() == ["in/c.png", "in/a.png"]  # this run's, then the earlier runs'
    assert "--flagged-only: 1 of the files printed were flagged by earlier runs of this report" in r.stderr
