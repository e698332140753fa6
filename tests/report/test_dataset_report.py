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
