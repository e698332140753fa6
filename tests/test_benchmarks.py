"""Benchmark and ablation scripts run end to end (their numbers are not asserted: they are measurements)."""

import subprocess
import sys
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
