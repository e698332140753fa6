#!/usr/bin/env bash
# i2pscan quick start: the whole pipeline, offline, with the tiny shipped backbone.
#
#   ./examples/quickstart.sh [OUT]          (default OUT: quickstart-out)
#
# Builds a toy labelled sample (photograph tiles vs three toy upsampling "generators"), then
# calibrates, fine-tunes on one generator, scans and evaluates on the held-out ones. A few
# minutes on 2 CPU cores. This demonstrates the pipeline; it is not a detector of real
# generators: for that, see docs/method.md (ViT-L-14 on GenImage).
set -euo pipefail

OUT=${1:-quickstart-out}
TRAIN=${TRAIN:-bilinear}          # the generator the detector learns from; the others are held out
PER_CLASS=${PER_CLASS:-200}       # training images per class (validation: half as many)
EPOCHS=${EPOCHS:-5}

step() { printf '\n== %s\n' "$*" >&2; }
rm -rf "$OUT"
mkdir -p "$OUT"

step "1/5 toy data: $OUT/data"
i2pscan demo-data "$OUT/data" --train-per-class "$PER_CLASS" --val-per-class "$((PER_CLASS / 2))"

step "2/5 calibrate on half of $TRAIN: which layers carry the trace"
# half the images: finetune then validates on images that did not choose the layers
i2pscan calibrate "$OUT/data/$TRAIN/train" --backbone i2p-tiny --out "$OUT/calibration.safetensors" \
    --max-per-class "$((PER_CLASS / 2))" --plot "$OUT/calibration.png"

step "3/5 finetune on $TRAIN: sparse updates in the low-sensitivity subspace"
i2pscan finetune "$OUT/data/$TRAIN/train" --calibration "$OUT/calibration.safetensors" \
    --out "$OUT/detector.safetensors" --epochs "$EPOCHS"
i2pscan info "$OUT/detector.safetensors" >&2

HELD=$(ls "$OUT/data" | grep -vx "$TRAIN" | head -n 1)
step "4/5 scan a generator the detector never saw: $HELD"
rc=0
i2pscan scan "$OUT/data/$HELD/val" -d "$OUT/detector.safetensors" -o "$OUT/report.parquet" \
    --format jsonl > "$OUT/scan.jsonl" || rc=$?
[ "$rc" -le 1 ] || exit "$rc"     # 0: nothing flagged, 1: something flagged
i2pscan report "$OUT/report.parquet" --top 5 >&2

step "5/5 evaluate on every generator's validation images"
i2pscan evaluate "$OUT/data" --split val -d "$OUT/detector.safetensors" --out "$OUT/evaluation.csv" \
    --plot "$OUT/plots" >&2

python - "$OUT/evaluation.csv" "$TRAIN" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["perturbation"] == "none"]
for r in rows:
    if r["subset"] not in ("overall", "mean"):
        role = "trained on" if r["subset"] == sys.argv[2] else "held out  "
        print(f"{role} {r['subset']:<13} AUC {float(r['auc']):.3f}  AP {float(r['ap']):.3f}  "
              f"accuracy {float(r['acc']):.3f}")
PY
cat <<MSG

Done. Files in $OUT/:
  calibration.safetensors, calibration.png   layer importance
  detector.safetensors, detector.log.jsonl   the detector and its training log
  report.parquet, scan.jsonl                 the scan of the held-out generator
  evaluation.csv, plots/                     metrics per generator, ROC curves, score histograms
Toy data and a random tiny backbone: this shows the pipeline works, not how well real detection does.
MSG
