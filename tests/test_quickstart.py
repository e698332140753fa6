"""The README's first command runs the quick start; CI runs a trimmed variant of the same script."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "quickstart.sh"


@pytest.mark.slow
def test_quickstart_runs_offline_and_generalises_above_chance(tmp_path):
    if shutil.which("i2pscan") is None:
        pytest.skip("the i2pscan console script is not installed (pip install -e .)")
    env = {**os.environ, "PER_CLASS": "60", "EPOCHS": "2", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    held_out = [float(x) for x in re.findall(r"held out\s+\S+\s+AUC ([0-9.]+)", r.stdout)]
    assert len(held_out) == 2
    assert max(held_out) > 0.6
    for name in ("calibration.safetensors", "calibration.png", "detector.safetensors", "report.parquet",
                 "evaluation.csv", "plots/roc.png"):
        assert (tmp_path / "out" / name).exists(), name
