"""`scan --ray` against a real Ray cluster on 127.0.0.1 (the ray_cluster fixture)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from helpers import noise_image, report_rows, write_corrupt_files

pytestmark = pytest.mark.slow


def _same_rows(a: list[dict], b: list[dict]) -> None:
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in ("score", "logit")} == \
               {k: v for k, v in y.items() if k not in ("score", "logit")}, x["path"]
        for k in ("score", "logit"):
            assert (x[k] is None) == (y[k] is None) and (x[k] is None or abs(x[k] - y[k]) <= 1e-5), (x["path"], k)


def _ray_processes(title: str) -> list[int]:
    """Pids of this machine's Ray workers whose process title starts with ``ray::TITLE``."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if fh.read().startswith(f"ray::{title}".encode()):
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_ray_scan_gives_the_local_scan_rows_and_exit_code(tmp_path, detector_file, run_cli, ray_cluster, chdir):
    for i in range(40):
        noise_image(tmp_path / "in" / f"{i:02d}.png", seed=i)
    write_corrupt_files(tmp_path / "in")
    local = run_cli("scan", "in", "-d", detector_file, "-o", "local.parquet", "--workers", "0", "-q")
    r = run_cli("scan", "in", "-d", detector_file, "-o", "ray.parquet", "--ray", "auto", "-q", "--format", "jsonl")
    assert r.exit_code == local.exit_code and r.exit_code in (1, 3), r.stderr
    rows, expected = report_rows("ray.parquet"), report_rows("local.parquet")
    assert len(rows) == 43 and sum(row["verdict"] == "error" for row in rows) == 3
    _same_rows(rows, expected)
    assert [line.split('"path": "')[1].split('"')[0] for line in r.stdout.splitlines()] == [x["path"] for x in expected]


def test_ray_scan_a_crashing_decoder_costs_one_error_row(tmp_path, detector_file, ray_cluster):
    from i2pscan.io.preprocess import CropTransform
    from i2pscan.model.detector import Detector
    from i2pscan.io.work import FileWork
    from i2pscan.scan.options import ScanOptions
    from i2pscan.scan.ray import RayExecutor
    from i2pscan.scan.session import run_scan

    paths = [str(noise_image(tmp_path / f"{i:02d}.png", seed=i)) for i in range(12)]
    detector = Detector.load(detector_file)

    from i2pscan.provenance.evidence import EvidenceReader

    class Misbehaving:  # reads evidence in the decode task's worker process, from the bytes decoding read
        real = EvidenceReader()

        def columns(self, data, path, exif=None):
            if path.endswith("05.png"):
                os._exit(9)  # what a segfaulting reader looks like from outside
            if path.endswith("08.png"):
                time.sleep(3600)  # stuck in C code
            return self.real.columns(data, path, exif)

    work = FileWork(CropTransform(detector.preprocess, 1), evidence=Misbehaving())
    rows = []
    run_scan(paths, None, detector, ScanOptions(file_timeout_s=2.0), on_row=rows.append, work=work,
             executor=lambda *args: RayExecutor("auto", *args, block_files=4))
    assert [r["path"] for r in rows] == paths
    assert {i: r["error"] for i, r in enumerate(rows) if r["verdict"] == "error"} == {
        5: "the decoder crashed on this file (its process exited with code 9)",
        8: "the decoder hung on this file (no result after 2 s; its process was stopped)"}


def test_ray_workers_killed_mid_scan_lose_and_duplicate_nothing(tmp_path, detector_file, ray_cluster):
    from i2pscan.model.detector import Detector
    from i2pscan.scan.options import ScanOptions
    from i2pscan.scan.ray import RayExecutor
    from i2pscan.scan.session import run_scan

    paths = [str(noise_image(tmp_path / f"{i:03d}.png", seed=i)) for i in range(96)]
    detector = Detector.load(detector_file)
    expected = []
    run_scan(paths, None, detector, ScanOptions(workers=0, crops=5), on_row=expected.append)
    rows, killed = [], []

    def on_row(row):
        rows.append(row)
        if len(rows) == 8:  # the first block is in: kill the model actor and the decoders now at work
            for title in ("_Scorer", "_decode_block"):
                for pid in _ray_processes(title):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(title)

    run_scan(paths, None, detector, ScanOptions(crops=5), on_row=on_row,
             executor=lambda *args: RayExecutor("auto", *args, block_files=8))
    assert "_Scorer" in killed
    _same_rows(rows, expected)


def test_resume_after_the_driver_is_killed(tmp_path, detector_file, ray_cluster):
    for i in range(160):
        noise_image(tmp_path / "in" / f"{i:03d}.png", seed=i, size=96)
    cmd = [sys.executable, "-m", "i2pscan", "scan", "in", "-d", str(detector_file), "-o", "r.parquet", "-q",
           "--ray", ray_cluster, "--crops", "9", "--flush-rows", "8", "--format", "jsonl"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = tmp_path / "r.parquet.parts"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(parts.glob("shard-*.parquet")) if parts.exists() else []) < 2:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shards = sorted(parts.glob("shard-*.parquet"))
    assert shards and sum(pq.read_metadata(s).num_rows for s in shards) < 160, proc.stderr.read().decode()
    r = subprocess.run(cmd + ["--resume"], cwd=tmp_path, capture_output=True)
    assert r.returncode in (0, 1), r.stderr.decode()
    rows = report_rows(tmp_path / "r.parquet")
    assert [row["path"] for row in rows] == [f"in/{i:03d}.png" for i in range(160)]
    assert not parts.exists()


def test_unreachable_cluster_is_a_usage_error(tmp_path, detector_file):
    noise_image(tmp_path / "a.png")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    r = subprocess.run([sys.executable, "-m", "i2pscan", "scan", "a.png", "-d", str(detector_file), "-q",
                        "--ray", "ray://127.0.0.1:9"], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 2
    assert r.stderr.startswith("Error: cannot connect to the Ray cluster at ray://127.0.0.1:9: "), r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stdout == ""
