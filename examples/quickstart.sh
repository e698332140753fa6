#!/usr/bin/env bash
# Quick start, offline, on 2 CPU cores: toy data -> calibrate (tiny backbone).
set -euo pipefail
OUT=${1:-quickstart-out}
mkdir -p "$OUT"
i2pscan demo-data "$OUT/data"
i2pscan calibrate "$OUT/data/tconv/train" --backbone i2p-tiny --out "$OUT/calibration.safetensors" --plot "$OUT/calibration.png"
echo "calibration: $OUT/calibration.safetensors, plot: $OUT/calibration.png"
