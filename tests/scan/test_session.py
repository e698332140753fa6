import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from i2pscan.errors import I2PError
from i2pscan.io.discover import DiscoverOptions, discover

from helpers import noise_image, report_rows, write_corrupt_files


# -- discovery ----------------------------------------------------------------------------------


def test_discovery_order_filters_and_explicit_files(tmp_path, chdir):
    for rel in ["b/2.JPG", "b/1.png", "a.webp", "c/d/e.tiff", "notes.txt", ".hidden/x.png", "b/.y.png", "z.bmp"]:
        noise_image(tmp_path / rel) if not rel.endswith(".txt") else (tmp_path / rel).write_text("x")
    assert discover(["."]) == ["./a.webp", "./b/1.png", "./b/2.JPG", "./c/d/e.tiff", "./z.bmp"]
    assert discover(["."], DiscoverOptions(hidden=True)) == [
        "./.hidden/x.png", "./a.webp", "./b/.y.png", "./b/1.png", "./b/2.JPG", "./c/d/e.tiff", "./z.bmp"]
    assert discover(["."], DiscoverOptions(extensions=("png",))) == ["./b/1.png"]
    assert discover(["."], DiscoverOptions(exclude=("b/*", "*.bmp"))) == ["./a.webp", "./c/d/e.tiff"]
    # explicit files whatever their extension, each file once, inputs in the order given
    assert discover(["notes.txt", "b", "b/1.png"]) == ["notes.txt", "b/1.png", "b/2.JPG"]


def test_discovery_from_stdin_newlines_and_nul(tmp_path, chdir):
    noise_image(tmp_path / "a.png")
    noise_image(tmp_path / "b c.png")
    import io

    assert discover(["-"], stdin=io.BytesIO(b"a.png\nb c.png\n")) == ["a.png", "b c.png"]
    assert discover(["-"], stdin=io.BytesIO(b"b c.png\0a.png\0")) == ["b c.png", "a.png"]


def test_missing_input_is_an_error_before_work(tmp_path):
    with pytest.raises(I2PError, match="no such file or folder"):
        discover([str(tmp_path / "nope")])


def test_symlinks_not_followed_unless_asked_and_loops_stop(tmp_path, chdir):
    noise_image(tmp_path / "real" / "a.png")
    os.symlink(tmp_path / "real", tmp_path / "real" / "loop")
    os.symlink(tmp_path / "real" / "a.png", tmp_path / "real" / "link.png")
    assert discover(["real"]) == ["real/a.png"]
    found = discover(["real"], DiscoverOptions(follow_symlinks=True))
    assert found == ["real/a.png", "real/link.png"]


def test_non_utf8_names_survive(tmp_path, detector_file, run_cli, chdir):
    name = os.fsdecode(b"caf\xe9.png")
    noise_image(tmp_path / "d" / name)
    r = run_cli("scan", "d", "-d", detector_file, "-o", "r.parquet", "--workers", "0", "--format", "jsonl")
    assert r.exit_code in (0, 1), r.stderr
    (row,) = report_rows("r.parquet")
    assert row["path_raw"] == b"d/caf\xe9.png"
    assert row["path"] == "d/caf\\xe9.png"
    assert json.loads(r.stdout)["path_raw_b64"] == "ZC9jYWbpLnBuZw=="
    r = run_cli("scan", "d", "-d", detector_file, "--threshold", "0.000001", "--flagged-only", "-0", "--workers", "0")
    assert r.stdout_bytes == b"d/caf\xe9.png\0"


# -- scanning ----------------------------------------------------------------------------------


def test_scan_report_rows_types_and_metadata(tmp_path, toy_dir, detector_file, run_cli):
    report = tmp_path / "r.parquet"
    r = run_cli("scan", toy_dir / "tconv" / "val", "-d", detector_file, "-o", report, "--hash", "--workers", "2")
    assert r.exit_code in (0, 1), r.stderr
    rows = report_rows(report)
    files = sorted(str(p) for p in (toy_dir / "tconv" / "val").rglob("*.png"))
    assert [row["path"] for row in rows] == files
    assert r.stdout.splitlines()[0].endswith(files[0])
    table = pq.read_table(report)
    types = {f.name: str(f.type) for f in table.schema}
    assert types["score"] == "float" and types["logit"] == "float" and types["mtime"] == "timestamp[us, tz=UTC]"
    meta = json.loads(table.schema.metadata[b"i2pscan"])
    assert meta["detector_id"] and meta["finished"] and meta["options"]["crops"] == 1
    assert meta["arithmetic"] == {"device": "cpu", "backbone": "fp32"}
    for row in rows[:5]:
        assert row["sha256"] == hashlib.sha256(open(row["path"], "rb").read()).hexdigest()
        assert row["width"] == row["height"] == 80 and row["format"] == "PNG" and row["error"] is None
    assert not os.path.exists(str(report) + ".parts")
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(["/ai/" in x["path"] for x in rows], [x["score"] for x in rows]) > 0.85


def test_report_reads_in_pandas_duckdb_polars(tmp_path, toy_dir, detector_file, run_cli):
    report = tmp_path / "r.parquet"
    run_cli("scan", toy_dir / "pixelshuffle" / "val", "-d", detector_file, "-o", report, "--workers", "0", "-q")
    import duckdb
    import pandas as pd
    import polars as pl

    df = pd.read_parquet(report)
    assert len(df) == 48 and set(df["verdict"]) <= {"real", "synthetic"}
    counts = dict(duckdb.sql(f"select verdict, count(*) from '{report}' group by verdict").fetchall())
    assert sum(counts.values()) == 48
    assert pl.read_parquet(report).height == 48


def test_refuses_to_overwrite_and_resume_needs_output(tmp_path, toy_dir, detector_file, run_cli):
    report = tmp_path / "r.parquet"
    report.write_bytes(b"keep me")
    r = run_cli("scan", toy_dir / "tconv" / "val", "-d", detector_file, "-o", report, "--workers", "0")
    assert r.exit_code == 2 and "pass --overwrite" in r.stderr and report.read_bytes() == b"keep me"
    r = run_cli("scan", toy_dir / "tconv" / "val", "-d", detector_file, "-o", report, "--overwrite", "--workers", "0")
    assert r.exit_code in (0, 1) and len(report_rows(report)) == 48
    r = run_cli("scan", toy_dir / "tconv" / "val", "-d", detector_file, "--resume")
    assert r.exit_code == 2 and "--resume needs -o" in r.stderr


def test_crops_and_combine(tmp_path, detector_file, run_cli, chdir):
    noise_image(tmp_path / "big.png", size=200)
    noise_image(tmp_path / "small.png", size=20)  # smaller than the crop: padded
    scores = {}
    for crops, combine in ((1, "mean"), (5, "mean"), (5, "max"), (9, "mean")):
        r = run_cli("scan", "big.png", "small.png", "-d", detector_file, "--crops", crops, "--combine", combine,
                    "--format", "jsonl", "--workers", "0")
        scores[(crops, combine)] = [json.loads(x)["logit"] for x in r.stdout.splitlines()]
    assert scores[(5, "max")][0] >= scores[(5, "mean")][0] != scores[(1, "mean")][0]
    assert scores[(5, "mean")][1] == pytest.approx(scores[(1, "mean")][1], abs=1e-5)  # all crops are the same
    # more than 5 crops of an image no larger than a crop: 9 of the same crop (once, a single one, which
    # combine() could not split into 9)
    assert scores[(9, "mean")][1] == pytest.approx(scores[(1, "mean")][1], abs=1e-5)


@pytest.mark.slow
def test_robustness_corpus_one_row_per_file(tmp_path, corpus, detector_file, run_cli):
    rows_csv = list(csv.DictReader(open(corpus.parent / "robustness.csv")))
    paths = "\n".join(str(corpus.parent / r["path"]) for r in rows_csv) + "\n"
    report = tmp_path / "corpus.parquet"
    r = run_cli("scan", "-", "-d", detector_file, "-o", report, "--workers", "2", input=paths)
    assert r.exit_code in (1, 3), r.stderr
    rows = report_rows(report)
    assert len(rows) == 213 == len({row["path"] for row in rows})
    errors = {row["path"]: row["error"] for row in rows if row["verdict"] == "error"}
    rows_by_path = {row["path"]: row for row in rows}
    pillow_fails = {str(corpus.parent / x["path"]) for x in rows_csv if "fails" in x["pillow_13_result"]}
    # the corpus records bare Pillow; i2pscan also decodes HEIF (pi-heif), and its workers let a PNG
    # text chunk inflate to 4 MiB (Pillow: 1 MiB), so those files now score
    decodable = {p for p in pillow_fails if p.lower().endswith((".heif", ".heic", "png_decompression_dos.png"))}
    assert len(decodable) == 3
    assert set(errors) == pillow_fails - decodable
    assert all(rows_by_path[p]["score"] is not None for p in decodable)
    assert all(msg and "\n" not in msg for msg in errors.values())
    assert all(row["score"] is not None for row in rows if row["verdict"] != "error")
    # a folder scan picks files by extension: every picked file once
    r = run_cli("scan", corpus, "-d", detector_file, "--format", "jsonl", "--workers", "2", "-q")
    picked = [json.loads(x)["path"] for x in r.stdout.splitlines()]
    assert len(picked) == len(set(picked)) == len(discover([str(corpus)]))


def test_a_crashing_decoder_costs_one_error_row(tmp_path, detector_file, run_cli, monkeypatch, chdir):
    for i in range(12):
        noise_image(tmp_path / "d" / f"{i:02d}.png", seed=i)
    import i2pscan.io.work as work_module

    real_decode = work_module.decode

    def crashing(path, *args, **kwargs):
        if path.endswith("05.png"):
            os._exit(1)  # what a segfaulting decoder looks like from outside
        return real_decode(path, *args, **kwargs)

    monkeypatch.setattr(work_module, "decode", crashing)
    r = run_cli("scan", "d", "-d", detector_file, "-o", "r.parquet", "--workers", "2", "--batch-size", "2")
    rows = report_rows("r.parquet")
    assert [row["path"] for row in rows] == [f"d/{i:02d}.png" for i in range(12)]
    assert [row["verdict"] == "error" for row in rows] == [i == 5 for i in range(12)]
    assert rows[5]["error"] == "the decoder crashed on this file (its process exited with code 1)"
    assert rows[5]["size_bytes"] == os.path.getsize("d/05.png")
    flagged = any(row["verdict"] == "synthetic" for row in rows)  # whatever the detector thinks of noise
    assert r.exit_code == (1 if flagged else 3), r.stderr


def test_bad_files_become_error_rows(tmp_path, detector_file, run_cli, chdir):
    write_corrupt_files(tmp_path / "in")
    noise_image(tmp_path / "in" / "ok.png")
    vanished = noise_image(tmp_path / "in" / "gone.png")  # vanishes between discovery and decoding
    from i2pscan.scan.options import ScanOptions
    from i2pscan.scan.session import run_scan
    from i2pscan.model.detector import Detector

    paths = discover(["in"])
    vanished.unlink()
    rows = []
    summary = run_scan(paths, None, Detector.load(detector_file), ScanOptions(workers=0), on_row=rows.append).summary
    by_name = {os.path.basename(r["path"]): r for r in rows}
    assert len(rows) == len(paths) == 5 and summary.errors == 4
    assert by_name["gone.png"]["error"].startswith("file not found")
    assert by_name["empty.png"]["error"] == "empty file"
    assert by_name["ok.png"]["verdict"] in ("real", "synthetic")


# -- shell manners ---------------------------------------------------------------------------------


def test_exit_codes(tmp_path, detector_file, run_cli, chdir):
    noise_image(tmp_path / "ok" / "a.png")
    write_corrupt_files(tmp_path / "mixed")
    noise_image(tmp_path / "mixed" / "a.png")
    det = str(detector_file)
    assert run_cli("scan", "ok", "-d", det, "--threshold", "0.999999", "--workers", "0").exit_code == 0
    assert run_cli("scan", "ok", "-d", det, "--threshold", "0.000001", "--workers", "0").exit_code == 1
    assert run_cli("scan", "mixed", "-d", det, "--threshold", "0.999999", "--workers", "0").exit_code == 3
    assert run_cli("scan", "mixed", "-d", det, "--threshold", "0.000001", "--workers", "0").exit_code == 1
    r = run_cli("scan", "nope", "-d", det)
    assert r.exit_code == 2 and "no such file or folder: nope" in r.stderr
    r = run_cli("scan", "ok", "-d", "missing.safetensors")
    assert r.exit_code == 2 and "detector file not found" in r.stderr
    r = run_cli("scan", "ok", "-d", det, "--threshold", "1.5")
    assert r.exit_code == 2
    r = run_cli("scan", "ok", "-d", det, "-0")
    assert r.exit_code == 2 and "-0 goes with --flagged-only" in r.stderr
    r = run_cli("scan", "ok", "-d", det, "--device", "cuda:7")
    assert r.exit_code == 2 and "cuda:7" in r.stderr
    r = run_cli("scan", "ok")
    assert r.exit_code == 2 and "--detector" in r.stderr


def test_bad_detector_stops_before_any_work(tmp_path, run_cli, chdir):
    noise_image(tmp_path / "a.png")
    (tmp_path / "det.safetensors").write_bytes(b"\x80\x04garbage")
    r = run_cli("scan", "a.png", "-d", "det.safetensors", "-o", "r.parquet")
    assert r.exit_code == 2 and "pickle" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not os.path.exists("r.parquet") and not os.path.exists("r.parquet.parts")


def test_stdout_formats_quiet_and_env_detector(tmp_path, toy_dir, detector_file, run_cli):
    data = toy_dir / "tconv" / "val"
    env = {"I2PSCAN_DETECTOR": str(detector_file)}
    r = run_cli("scan", data, "--format", "jsonl", "--workers", "0", env=env)
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(rows) == 48 and {"path", "score", "verdict", "error", "width"} <= set(rows[0])
    assert "48 file(s) scanned" in r.stderr and "images/s" not in r.stdout
    flagged = [x["path"] for x in rows if x["verdict"] == "synthetic"]
    r = run_cli("scan", data, "--flagged-only", "--workers", "0", env=env)
    assert r.stdout.splitlines() == flagged
    r = run_cli("scan", data, "--flagged-only", "--format", "jsonl", "--workers", "0", "-q", env=env)
    assert [json.loads(x)["path"] for x in r.stdout.splitlines()] == flagged and r.stderr == ""


@pytest.mark.slow
def test_xargs_quarantine_pipeline(tmp_path, toy_dir, detector_file):
    import shutil

    shutil.copytree(toy_dir / "tconv" / "val", tmp_path / "in")
    (tmp_path / "quarantine").mkdir()
    cmd = (f"{sys.executable} -m i2pscan scan in -d {detector_file} --workers 0 -q --flagged-only -0 "
           f"| xargs -0 -r mv --backup=numbered -t quarantine/")
    subprocess.run(cmd, shell=True, cwd=tmp_path, check=True)
    moved = sorted(p.name for p in (tmp_path / "quarantine").iterdir())
    assert moved and len(moved) + len(list((tmp_path / "in").rglob("*.png"))) == 48


@pytest.mark.slow
def test_resume_after_sigkill_gives_every_file_once(tmp_path, detector_file):
    for i in range(400):
        noise_image(tmp_path / "in" / f"{i:04d}.png", seed=i, size=96)
    cmd = [sys.executable, "-m", "i2pscan", "scan", "in", "-d", str(detector_file), "-o", "r.parquet", "-q",
           "--workers", "0", "--batch-size", "4", "--crops", "9", "--flush-rows", "8", "--format", "jsonl"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = tmp_path / "r.parquet.parts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts.glob("shard-*.parquet")) if parts.exists() else []) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "r.parquet").exists()
    shards = sorted(parts.glob("shard-*.parquet"))
    assert shards and sum(pq.read_metadata(s).num_rows for s in shards) < 400  # it really was cut short
    r = subprocess.run(cmd + ["--resume"], cwd=tmp_path, capture_output=True)
    assert r.returncode in (0, 1), r.stderr.decode()
    rows = report_rows(tmp_path / "r.parquet")
    assert [row["path"] for row in rows] == [f"in/{i:04d}.png" for i in range(400)]
    assert not parts.exists()
    # the same scores as an uninterrupted scan
    clean = subprocess.run(cmd[:-2] + ["--overwrite", "-o", "clean.parquet"], cwd=tmp_path, capture_output=True)
    assert clean.returncode in (0, 1)
    np.testing.assert_allclose([r["logit"] for r in rows], [r["logit"] for r in report_rows(tmp_path / "clean.parquet")],
                               rtol=1e-5, atol=1e-5)


def test_resume_refuses_another_detector(tmp_path, detector_file, run_cli, chdir):
    noise_image(tmp_path / "a.png")
    parts = tmp_path / "r.parquet.parts"
    parts.mkdir()
    from i2pscan.report.schema import SCHEMA

    table = SCHEMA.empty_table().replace_schema_metadata({b"i2pscan": json.dumps({"detector_id": "other"}).encode()})
    pq.write_table(table, parts / "shard-000001.parquet")
    r = run_cli("scan", "a.png", "-d", detector_file, "-o", "r.parquet", "--resume")
    assert r.exit_code == 2 and "made by detector" in r.stderr
    r = run_cli("scan", "a.png", "-d", detector_file, "-o", "r.parquet")
    assert r.exit_code == 2 and "pass --resume" in r.stderr


def test_report_command(tmp_path, toy_dir, detector_file, run_cli):
    report = tmp_path / "r.parquet"
    run_cli("scan", toy_dir / "tconv" / "val", "-d", detector_file, "-o", report, "--workers", "0", "-q")
    r = run_cli("report", report, "--top", "3")
    assert r.exit_code == 0
    assert "flagged as synthetic" in r.stdout and "top" in r.stdout
    (tmp_path / "x.parquet").write_bytes(b"nope")
    r = run_cli("report", tmp_path / "x.parquet")
    assert r.exit_code == 2 and "not a readable Parquet report" in r.stderr


def test_precision_is_chosen_per_detector_and_bad_values_are_refused(detector_file, toy_dir, tmp_path, run_cli):
    from i2pscan.model.detector import Detector

    from helpers import tamper_detector

    assert Detector.load(detector_file).precision == "fp32"  # trained (and its threshold fitted) on a CPU
    assert Detector.load(detector_file, precision="bf16").precision == "bf16"
    older = tamper_detector(detector_file, tmp_path / "older.safetensors",
                            meta_edit=lambda meta: meta["training"].pop("arithmetic"))
    assert Detector.load(older).precision == "bf16"  # files from before it was recorded: finetune's CUDA default
    import torch

    for architecture in ("rine", "univfd"):  # their parity with the authors' models holds in fp32
        assert Detector(None, torch.nn.Identity(), {"architecture": architecture}, "", "").precision == "fp32"
    with pytest.raises(I2PError, match="`precision`"):
        Detector.load(tmp_path / "never-read.safetensors", precision="fp16")
    report = tmp_path / "r.parquet"
    scored = run_cli("scan", toy_dir / "tconv" / "val", "-d", detector_file, "--precision", "bf16", "-o", report, "-q")
    assert scored.exit_code in (0, 1), scored.stderr
    meta = json.loads(pq.read_table(report).schema.metadata[b"i2pscan"])
    assert meta["arithmetic"] == {"device": "cpu", "backbone": "fp32"}  # a CPU has no bf16 path
    bad = run_cli("scan", str(tmp_path), "-d", detector_file, "--precision", "fp16")
    assert bad.exit_code == 2 and "fp16" in bad.stderr
    contradiction = run_cli("scan", str(tmp_path), "--metadata-only", "--precision", "bf16")
    assert contradiction.exit_code == 2 and "--precision needs a model" in contradiction.stderr


def test_resume_refuses_rows_of_another_precision():
    from i2pscan.report.writer import _same_arithmetic

    cpu, bf16, fp32_gpu = ({"device": "cpu", "backbone": "fp32"}, {"device": "cuda", "backbone": "bf16"},
                           {"device": "cuda:0", "backbone": "fp32"})
    ray = {"device": "ray", "backbone": {"cuda": "bf16", "cpu": "fp32"}}
    assert _same_arithmetic(cpu, fp32_gpu) and _same_arithmetic(bf16, dict(bf16))
    assert not _same_arithmetic(cpu, bf16) and not _same_arithmetic(bf16, fp32_gpu)
    assert _same_arithmetic(None, bf16) and _same_arithmetic(ray, cpu)  # unknown: an older report, a Ray scan
    assert not _same_arithmetic(ray, {"device": "ray", "backbone": {"cuda": "fp32", "cpu": "fp32"}})


@pytest.mark.slow
def test_resume_refuses_rows_decoded_elsewhere(tmp_path, detector_file, run_cli, chdir):
    """--decode-on device is not bit-identical to the CPU path: one report never mixes the two."""
    from PIL import Image

    Path("d").mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(f"d/{i}.jpg", quality=90)
    r = run_cli("scan", "d", "-d", detector_file, "-o", "r.parquet", "--decode-on", "device", "--workers", "0")
    assert r.exit_code in (0, 1), r.stderr
    r = run_cli("scan", "d", "-d", detector_file, "-o", "r.parquet", "--resume", "--workers", "0")
    assert r.exit_code == 2 and "decode_on" in r.stderr, r.stderr
