"""The method's ablation, leave-generators-out, over seeds: I2P's mask strategies beside RINE-style
and UnivFD-style heads retrained on the same data, backbone and augmentation.

    python benchmarks/ablation.py DATA --train SUBSET [--backbone i2p-tiny] [--seeds 0,1,2] [--epochs 5]
        [--rows i2p,low-sensitivity,...] [--jpeg-align Q] [--out table.md]

DATA is a labelled folder in GenImage's layout (``<generator>/{train,val}/{ai,nature}``) or any
layout ``i2pscan calibrate`` takes. For every seed: one calibration on the ``--train`` subset's
``--train-split`` images, then one detector per row; every other subset's ``--test-split``
images are held out (the trained subset's own test split is "in-domain"). Every detector is read
the same way (the protocol of docs/method.md): on the held-out subsets, mean AUC, AP, TPR at the
detector's target FPR (5 %), accuracy at 0.5 and at the detector's own threshold, the FPR that
threshold gives; in-domain AUC; the embedding drift and |delta|/|W0| it recorded; its trainable
backbone weights and training seconds. Each cell is the mean ± sd over seeds.

Rows (``--rows``): the I2P strategies (``i2p``, ``low-sensitivity``, ``task-fisher``,
``random``, ``head-only``, ``full``); ``i2p+rine-head`` (the soft gate over every block instead
of the top-k layers); ``rine-style`` (frozen backbone, every block, per-dimension gate,
dropout 0.5, supervised-contrastive 0.2, as RINE trains) and ``univfd-style`` (frozen backbone,
a linear layer on the last block, as UnivFD). ``--jpeg-align Q`` also evaluates with the fakes
re-encoded as JPEG at quality Q (GenImage's reals are JPEG, its fakes PNG); ``--padding-free``
also reports the held-out AUC over images at least one crop in size (smaller ones are padded:
a size cue). With ViT-L-14 the published detectors (``rine-2class``, ``univfd``; trained by their
authors on ProGAN, not on ``--train``) are added as rows scored on the same images.

On the tiny backbone and the toy data (``i2pscan demo-data``) three seeds take a few minutes on a
CPU; its weights are random, so the toy table checks the protocol, not the method's claims on CLIP.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time

import numpy as np

from _table import machine, print_table
from i2pscan.evaluate import CLEAN, FAKES_ONLY, evaluate, rows_for
from i2pscan.io.pool import default_workers
from i2pscan.model.backbone import load_backbone
from i2pscan.model.detector import Detector
from i2pscan.model.device import default_batch_size, resolve_device
from i2pscan.scan.options import ScanOptions
from i2pscan.train.calibrate import CalibrateConfig, calibrate
from i2pscan.train.finetune import FinetuneConfig, finetune
from i2pscan.train.samples import load_labelled

ROWS = {
    "i2p": {},
    "low-sensitivity": dict(strategy="low-sensitivity"),
    "task-fisher": dict(strategy="task-fisher"),
    "random": dict(strategy="random"),
    "head-only": dict(strategy="head-only"),
    "full": dict(strategy="full"),
    "i2p+rine-head": dict(head="rine", head_dropout=0.5),
    "rine-style": dict(strategy="head-only", head="rine", head_dropout=0.5, contrastive_weight=0.2),
    "univfd-style": dict(strategy="head-only", head="univfd"),
}
METRICS = (("held-out AUC", "auc"), ("held-out AP", "ap"), ("TPR@target", "tpr_at_target"), ("acc@0.5", "acc_05"),
           ("acc", "acc"), ("FPR", "fpr"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--train", required=True, help="subset (generator) to train on")
    p.add_argument("--test", nargs="*", default=None, help="held-out subsets (default: all others)")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="val")
    p.add_argument("--backbone", default="i2p-tiny")
    p.add_argument("--pretrained", default="default")
    p.add_argument("--rows", "--strategies", dest="rows", default=",".join(ROWS))
    p.add_argument("--seeds", default="0,1,2", help="comma-separated; each cell is the mean ± sd over them")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--rho", type=float, default=None, help="default: finetune's")
    p.add_argument("--q", type=float, default=None, help="default: finetune's")
    p.add_argument("--lr-backbone", type=float, default=None, help="default: finetune's")
    p.add_argument("--max-per-class", type=int, default=None)
    p.add_argument("--jpeg-align", type=int, default=None, metavar="Q",
                   help="also evaluate with the fakes re-encoded as JPEG at quality Q")
    p.add_argument("--padding-free", action="store_true", help="also the held-out AUC of unpadded images only")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--out", default=None, help="also write the table (.md or .csv)")
    p.add_argument("--no-published", action="store_true", help="no published baseline rows (ViT-L-14 only)")
    p.add_argument("--work", default=None, help="folder for the calibrations and detectors (default: a temp folder)")
    args = p.parse_args()

    device = resolve_device(args.device)
    batch = args.batch_size or default_batch_size(device)
    workers = default_workers() if args.workers is None else args.workers
    work = args.work or tempfile.mkdtemp(prefix="i2pscan-ablation-")
    os.makedirs(work, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        p.error(f"unknown row {unknown[0]!r}; rows: {', '.join(ROWS)}")
    overrides = {k: v for k, v in (("rho", args.rho), ("q", args.q), ("lr_backbone", args.lr_backbone)) if v is not None}
    perturbations = (CLEAN,) + ((f"{FAKES_ONLY}jpeg:{args.jpeg_align}",) if args.jpeg_align else ())

    everything = load_labelled(args.data, split=args.test_split)
    held_out = args.test or sorted({it.subset for it in everything.items} - {args.train})
    test = load_labelled(args.data, split=args.test_split, subsets=held_out + [args.train])
    options = ScanOptions(batch_size=batch, workers=workers)
    print(f"machine: {machine()}; device {device}")
    print(f"train: {args.train}; held out: {', '.join(held_out)}; backbone {args.backbone}; epochs {args.epochs}; "
          f"seeds {seeds}; {overrides or 'finetune defaults'}")

    results: dict[str, list[dict]] = {}
    for seed in seeds:
        train = load_labelled(args.data, max_per_class=args.max_per_class, seed=seed, subsets=[args.train],
                              split=args.train_split)
        started = time.monotonic()
        cal = calibrate(load_backbone(args.backbone, args.pretrained, device=device), train,
                        CalibrateConfig(seed=seed, batch_size=batch, workers=workers))
        print(f"seed {seed}: S = {cal.critical}, L* = {cal.last_block} ({time.monotonic() - started:.1f} s)", flush=True)
        for name in rows:
            out = os.path.join(work, f"{name}-seed{seed}.safetensors")
            config = FinetuneConfig(**{**dict(epochs=args.epochs, batch_size=batch, workers=workers, seed=seed,
                                              crop_policies=()), **overrides, **ROWS[name]})
            started = time.monotonic()
            result = finetune(load_backbone(args.backbone, args.pretrained, device=device), cal, train, out, config)
            seconds = time.monotonic() - started
            scores = evaluate(Detector.load(out, device=device), test, options, perturbations)
            measured = _measure(scores, held_out, args.train, args.padding_free)
            retention = result.meta["training"].get("retention", {})
            measured.update({"drift": retention.get("drift_mean", np.nan), "|d|/|W0|": retention.get("delta_rel", 0.0),
                             "trainable": float(result.mask.trainable), "train s": seconds})
            results.setdefault(name, []).append(measured)
            print(f"  {name}: held-out AUC {measured['held-out AUC']:.3f}, drift {measured['drift']:.3g} "
                  f"({seconds:.1f} s)", flush=True)

    if args.backbone == "ViT-L-14" and not args.no_published:
        from i2pscan.model.shipped import SHIPPED

        pretrained = None if args.pretrained == "default" else args.pretrained
        for name in SHIPPED:
            scores = evaluate(Detector.load(name, device=device, pretrained=pretrained), test, options, perturbations)
            results[f"{name} (published)"] = [_measure(scores, held_out, args.train, args.padding_free)]

    columns = ["row", "seeds"] + list(next(iter(results.values()))[0])
    table = [[name, len(runs)] + [_cell(runs, c) for c in columns[2:]] for name, runs in results.items()]
    print_table(f"trained on {args.train}, mean over {len(held_out)} held-out subset(s), mean ± sd over seeds",
                columns, table)
    if args.out:
        _write(args.out, columns, table)
        print(f"\ntable written to {args.out}")


def _measure(scores, held_out: list[str], trained_on: str, padding_free: bool) -> dict:
    """One detector's numbers: the protocol's metrics averaged over the held-out subsets (clean, and
    with the fakes JPEG-aligned when asked), in-domain AUC, and the padding-free held-out AUC."""
    out = {}
    for s in scores.scores:
        rows = {r["subset"]: r for r in scores.rows if r["perturbation"] == s.perturbation}
        tag = "" if s.perturbation == CLEAN else f" ({s.perturbation})"
        for label, key in METRICS if not tag else METRICS[:3]:
            out[label + tag] = float(np.nanmean([rows[h][key] for h in held_out]))
        if not tag:
            out["in-domain AUC"] = rows[trained_on]["auc"]
            if padding_free:
                unpadded = {r["subset"]: r for r in rows_for(s, s.unpadded, scores.threshold_logit, scores.target_fpr)}
                out["held-out AUC (unpadded)"] = float(np.nanmean([unpadded.get(h, {}).get("auc", np.nan)
                                                                   for h in held_out]))
    return out


def _cell(runs: list[dict], column: str) -> str:
    values = np.array([r.get(column, np.nan) for r in runs], dtype=float)
    if np.all(np.isnan(values)):
        return "–"
    mean = float(np.nanmean(values))
    fmt = (lambda v: f"{v:.3g}") if column in ("drift", "|d|/|W0|") else (
        (lambda v: f"{v:,.0f}") if column in ("trainable", "train s") else (lambda v: f"{v:.3f}"))
    return fmt(mean) if len(values) == 1 else f"{fmt(mean)} ± {fmt(float(np.nanstd(values, ddof=1)))}"


def _write(path: str, columns: list[str], rows: list[list]) -> None:
    if path.endswith(".csv"):
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(columns)
            w.writerows(rows)
        return
    with open(path, "w") as fh:
        fh.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
        for r in rows:
            fh.write("| " + " | ".join(str(v) for v in r) + " |\n")


if __name__ == "__main__":
    main()
