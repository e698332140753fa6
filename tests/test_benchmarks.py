"""Benchmark and ablation scripts run end to end (their numbers are not asserted: they are measurements)."""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_ablation_runs_every_row_on_the_tiny_backbone(toy_dir, tmp_path):
    out = tmp_path / "ablation.md"
    r = subprocess.run([sys.executable, "ablation.py", str(toy_dir), "--train", "tconv", "--epochs", "1",
                        "--seeds", "0,1", "--workers", "0", "--padding-free", "--jpeg-align", "90", "--out", str(out),
                        "--work", str(tmp_path / "work")], cwd=BENCH, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    table = out.read_text().splitlines()
    assert table[0].startswith("| row | seeds | held-out AUC | held-out AP | TPR@target | acc@0.5 | acc | FPR | "
                               "in-domain AUC | held-out AUC (unpadded) | held-out AUC (fakes:jpeg:90) |")
    rows = [line.split("|")[1].strip() for line in table[2:]]
    assert rows == ["i2p", "low-sensitivity", "task-fisher", "random", "head-only", "full", "i2p+rine-head",
                    "rine-style", "univfd-style"]
    assert all(line.split("|")[2].strip() == "2" and " ± " in line.split("|")[3] for line in table[2:])
    for name in rows:
        assert (tmp_path / "work" / f"{name}-seed1.safetensors").exists()


@pytest.mark.slow
def test_bench_provenance_prints_its_three_tables(tmp_path):
    from helpers import CORPORA

    if not (CORPORA / "provenance").is_dir():
        pytest.skip("../shared/corpora is not present on this machine")
    r = subprocess.run([sys.executable, "bench_provenance.py", "--corpora", str(CORPORA), "--repeat", "1",
                        "--model-repeat", "1", "--typical", "40", "--typical-dir", str(tmp_path / "typical")],
                       cwd=BENCH, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    for title in ("scan --metadata-only (files/s", "time per file of the evidence reader's parts (ms)",
                  "tiny-backbone model scan of robustness/"):
        assert title in r.stdout
    import re

    assert re.search(r"--metadata-only, both +238 ", r.stdout)
    assert re.search(r"--metadata-only, typical without C2PA, 2 worker\(s\) +40 ", r.stdout)


def _ray_processes(folder: str) -> list[int]:
    """PIDs of live processes whose command line names ``folder`` (Ray's session directory lives there)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if folder in cmdline:
                pids.append(int(entry.name))
    return pids


# Every benchmark that runs on a CPU, with the smallest arguments that still take each of its code paths
# (tiny sizes; the ViT-L-14 rows with one image where the script has them), and a phrase of each table it prints.
# Wall times on 2 shared cores are in benchmarks/README.md ("Smoke test"). bench_provenance and ablation
# have their own tests above.
SMOKE = [
    # needs CUDA (and the shared corpora) to run: gpu_checks.sh runs it on a GPU machine; here, it imports and parses
    pytest.param("bench_gpu_decode.py", ["--help"], "GPU JPEG decoding", id="gpu_decode-help"),
    pytest.param("bench_hostile_metadata.py", ["--payload-gb", "0.001"], "evidence reader on hostile metadata",
                 id="hostile_metadata"),
    pytest.param("bench_decode.py", ["--files", "1", "--repeat", "1", "--workers", "0", "--scan-small", "2"],
                 "tiny-backbone scan end to end", id="decode"),
    pytest.param("bench_features.py", ["--large-images", "1", "--tiny-images", "8", "--batch-size", "1",
                                       "--repeats", "1"], "early exit at block 12", id="features"),
    pytest.param("bench_startup.py", ["--skip-vitl", "--repeat", "1"], "wall time of a fresh process", id="startup"),
    pytest.param("bench_scan.py", ["--per-size", "1", "--workers", "0", "--batch-size", "2", "--model-images", "2"],
                 "scan end to end, ViT-L-14, all 24 blocks", id="scan"),
    pytest.param("bench_sensitivity.py", ["--large-batches", "", "--samples", "16", "--batch-size", "8"],
                 ("intrinsic sensitivity, one batch", "mask overlap (Jaccard) of seeds 0 and 1"), id="sensitivity"),
    # --ray local: a private Ray instance on 127.0.0.1, started and stopped by the scan (checked below)
    pytest.param("bench_cluster.py", ["--files", "200", "--rows", "200", "--images", "4"],
                 ("discovery of 200 empty files", "DatasetWriter", "--ray local"), id="cluster"),
    pytest.param("bench_review.py", ["--rows", "200", "--thumbs", "2", "--browser"],
                 ("build (no thumbnails)", "thumbnails of 2 JPEGs", "headless Chromium"), id="review"),
    pytest.param("bench_retention.py", ["--generators", "tconv,bilinear", "--variants", "random,i2p (default)",
                                        "--epochs", "1", "--batch-size", "16", "--overlap", "--overlap-seeds", "0,1"],
                 ("drift (1 - cos, last epoch)", "mask overlap (Jaccard) across seeds 0,1"), id="retention"),
]


@pytest.mark.slow
@pytest.mark.parametrize("script, args, phrases", SMOKE)
def test_benchmark_runs_end_to_end_with_small_arguments(script, args, phrases):
    if "--browser" in args and not (os.path.exists("/usr/bin/chromium") and importlib.util.find_spec("playwright")):
        # the Chromium table needs /usr/bin/chromium and playwright: without them, the other tables still run
        args, phrases = [a for a in args if a != "--browser"], phrases[:-1]
    # the scripts' temporary files (bench_retention keeps its work folder) go to a folder of this test, short
    # enough for the Unix socket paths made under it
    tmp = tempfile.mkdtemp(prefix="i2pb-", dir="/tmp")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": tmp}
    ray_dir = None
    if script == "bench_cluster.py":
        if importlib.util.find_spec("ray") is None:  # the --ray local row needs ray (pip install 'i2pscan[ray]')
            args, phrases = [*args, "--skip-ray"], phrases[:-1]
        else:
            ray_dir = tempfile.mkdtemp(prefix="i2pray-", dir="/tmp")  # short: Ray's socket paths have a length limit
            env["RAY_TMPDIR"] = ray_dir
    # a session of its own, so that a timeout ends the script's children too (its process group, by its id)
    proc = subprocess.Popen([sys.executable, script, *args], cwd=BENCH, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if ray_dir is not None:
            left = _ray_processes(ray_dir)
            for pid in left:  # started by this test's scan: end them before failing
                os.kill(pid, signal.SIGKILL)
            shutil.rmtree(ray_dir, ignore_errors=True)
            assert not left, f"--ray local left Ray processes running: {left}"
    assert proc.returncode == 0, stderr[-3000:]
    for phrase in (phrases,) if isinstance(phrases, str) else phrases:
        assert phrase in stdout, stdout[-3000:]
