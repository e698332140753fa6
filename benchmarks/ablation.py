"""Mask-strategy ablation, leave-generators-out: one calibration, one detector per strategy.

    python benchmarks/ablation.py DATA --train SUBSET [--backbone i2p-tiny] [--epochs 5] [--out table.md]

DATA is a labelled folder in GenImage's layout (``<generator>/{train,val}/{ai,nature}``) or any
layout ``i2pscan calibrate`` takes. The detector learns from the ``--train`` subset's
``--train-split`` images; every other subset's ``--test-split`` images are held out, and the
trained subset's own test split is reported as "in-domain". For each strategy (i2p,
low-sensitivity, task-fisher, random, head-only, full) it prints and writes: AUC per held-out
subset, mean AUC / AP / accuracy over held-out subsets, in-domain AUC, trainable backbone
weights, detector bytes and training seconds. When the backbone is ViT-L-14, the published
detectors (``rine-2class``, ``univfd``; trained by their authors on ProGAN, not on ``--train``) are
added as baseline rows, scored on the same held-out images with the same ``--pretrained`` weights
(``--no-published`` leaves them out).

On the tiny backbone and the toy data (``i2pscan demo-data``) it runs in a minute on a CPU; with
ViT-L-14 on GenImage (``--backbone ViT-L-14 --train sdv14``) it is the paper-style table for a
machine with a GPU.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time

import numpy as np

from _table import machine, print_table
from i2pscan.model.device import default_batch_size, resolve_device
from i2pscan.model.backbone import load_backbone
from i2pscan.train.calibrate import CalibrateConfig, calibrate
from i2pscan.io.pool import default_workers
from i2pscan.train.samples import load_labelled
from i2pscan.model.detector import Detector
from i2pscan.evaluate import evaluate
from i2pscan.train.finetune import FinetuneConfig, finetune
from i2pscan.scan.options import ScanOptions
from i2pscan.train.sensitivity import STRATEGIES


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--train", required=True, help="subset (generator) to train on")
    p.add_argument("--test", nargs="*", default=None, help="held-out subsets (default: all others)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="val")
    p.add_argument("--backbone", default="i2p-tiny")
    p.add_argument("--pretrained", default="default")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--rho", type=float, default=0.01)
    p.add_argument("--q", type=float, default=0.5)
    p.add_argument("--max-per-class", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the table (.md or .csv)")
    p.add_argument("--no-published", action="store_true", help="no published baseline rows (ViT-L-14 only)")
    p.add_argument("--work", default=None, help="folder for the calibration and detectors (default: a temp folder)")
    args = p.parse_args()

    device = resolve_device(args.device)
    batch = args.batch_size or default_batch_size(device)
    workers = default_workers() if args.workers is None else args.workers
    work = args.work or tempfile.mkdtemp(prefix="i2pscan-ablation-")
    os.makedirs(work, exist_ok=True)

    train = load_labelled(args.data, max_per_class=args.max_per_class, seed=args.seed, subsets=[args.train],
                          split=args.train_split)
    everything = load_labelled(args.data, split=args.test_split)
    held_out = args.test or sorted({it.subset for it in everything.items} - {args.train})
    test = load_labelled(args.data, split=args.test_split, subsets=held_out + [args.train])
    print(f"machine: {machine()}; device {device}")
    print(f"train: {args.train} ({len(train.items)} images); held out: {', '.join(held_out)}; "
          f"backbone {args.backbone}; epochs {args.epochs}; rho {args.rho}; q {args.q}")

    started = time.monotonic()
    cal = calibrate(load_backbone(args.backbone, args.pretrained, device=device), train,
                    CalibrateConfig(seed=args.seed, batch_size=batch, workers=workers))
    print(f"calibration: S = {cal.critical}, L* = {cal.last_block} ({time.monotonic() - started:.1f} s)")

    rows = []
    for strategy in args.strategies.split(","):
        out = os.path.join(work, f"{strategy}.safetensors")
        config = FinetuneConfig(strategy=strategy, rho=args.rho, q=args.q, epochs=args.epochs, batch_size=batch,
                                workers=workers, seed=args.seed)
        started = time.monotonic()
        result = finetune(load_backbone(args.backbone, args.pretrained, device=device), cal, train, out, config)
        seconds = time.monotonic() - started
        scores = evaluate(Detector.load(out, device=device), test, ScanOptions(batch_size=batch, workers=workers))
        rows.append(_row(strategy, scores, held_out, args.train, result.mask.trainable, out, round(seconds, 1)))
        print(f"  {strategy}: held-out AUC {rows[-1]['held-out AUC']:.3f} ({seconds:.1f} s)", flush=True)

    if args.backbone == "ViT-L-14" and not args.no_published:
        from i2pscan.model.shipped import SHIPPED, shipped_path

        pretrained = None if args.pretrained == "default" else args.pretrained
        for name in SHIPPED:
            started = time.monotonic()
            scores = evaluate(Detector.load(name, device=device, pretrained=pretrained), test,
                              ScanOptions(batch_size=batch, workers=workers))
            rows.append(_row(f"{name} (published)", scores, held_out, args.train, None, str(shipped_path(name)), None))
            print(f"  {name}: held-out AUC {rows[-1]['held-out AUC']:.3f} ({time.monotonic() - started:.1f} s)",
                  flush=True)

    columns = list(rows[0])
    print_table(f"mask strategies, trained on {args.train}, mean over {len(held_out)} held-out subset(s)",
                columns, [[r[c] for c in columns] for r in rows])
    if args.out:
        _write(args.out, columns, rows)
        print(f"\ntable written to {args.out}")


def _row(name, scores, held_out, trained_on, trainable, detector_path, seconds) -> dict:
    """One table row; a published detector has no trainable count or training time (``–``)."""
    by_subset = {r["subset"]: r for r in scores.rows}
    held = [by_subset[s] for s in held_out]
    published = trainable is None
    return {
        "strategy": name,
        **{f"AUC {s}": by_subset[s]["auc"] for s in held_out},
        "held-out AUC": float(np.mean([r["auc"] for r in held])),
        "held-out AP": float(np.mean([r["ap"] for r in held])),
        "held-out acc": float(np.mean([r["acc"] for r in held])),
        "in-domain AUC": by_subset[trained_on]["auc"],
        "trainable": "–" if published else trainable,
        "detector bytes": os.path.getsize(detector_path),
        "train s": "–" if published else seconds,
    }


def _write(path: str, columns: list[str], rows: list[dict]) -> None:
    if path.endswith(".csv"):
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)
        return
    with open(path, "w") as fh:
        fh.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
        for r in rows:
            fh.write("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else f"{r[c]}" for c in columns) + " |\n")


if __name__ == "__main__":
    main()
