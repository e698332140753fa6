"""Does the subspace protect the representation? Drift, |delta|/|W0| and held-out AUC per mask
variant at equal rho, steps and learning rate; and how stable each mask is across seeds.

    python benchmarks/bench_retention.py [--toy DIR] [--generators tconv,pixelshuffle,bilinear]
        [--variants NAME,...] [--seeds 0] [--epochs 3] [--lr 1e-3] [--rho 0.01] [--overlap]

For every training generator of a toy set (``i2pscan demo-data``; one is made when ``--toy`` is
not given), one calibration, then one detector per variant and seed: the last epoch's embedding
drift (mean and max of 1 - cos over the held-out real validation images), |delta|/|W0|, and the
mean AUC on the other generators' validation images. Drift ratios are against ``random`` (no drift
penalty) in the same run; variants without "penalty" in their name train without it, to measure
the mask alone. ``--overlap``: also the Jaccard overlap of each variant's masks across seeds at batch
64 (``finetune --dry-run`` with the generator's val folder as ``--val``, so that every seed has the
same training data). Everything runs on the tiny backbone, whose weights are random: these
numbers choose toy defaults, they say nothing about CLIP.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time

import numpy as np

from _table import machine, print_table
from i2pscan.evaluate import evaluate
from i2pscan.model.backbone import load_backbone
from i2pscan.model.detector import Detector
from i2pscan.scan.options import ScanOptions
from i2pscan.train.calibrate import CalibrateConfig, calibrate
from i2pscan.train.finetune import FinetuneConfig, finetune, plan_mask
from i2pscan.train.samples import load_labelled

VARIANTS = {
    "random": dict(strategy="random", drift_penalty=0.0),
    "low-sensitivity": dict(strategy="low-sensitivity", drift_penalty=0.0),
    "task-fisher": dict(strategy="task-fisher", drift_penalty=0.0),
    "head-only": dict(strategy="head-only"),
    "i2p (default)": dict(strategy="i2p"),
    "i2p mask alone (no penalty)": dict(strategy="i2p", drift_penalty=0.0),
    "i2p before (q 0.5 raw warm-up head)": dict(strategy="i2p", q=0.5, saliency_head="warmup", warmup_views=1,
                                                 sensitivity_projections=1, drift_penalty=0.0, weight_decay=0.05),
    "i2p q 0.05": dict(strategy="i2p", q=0.05, drift_penalty=0.0),
    "i2p q 0.2": dict(strategy="i2p", q=0.2, drift_penalty=0.0),
    "i2p q 0.3": dict(strategy="i2p", q=0.3, drift_penalty=0.0),
    "i2p q 0.5": dict(strategy="i2p", q=0.5, drift_penalty=0.0),
    "i2p q 0.1 group": dict(strategy="i2p", sensitivity_norm="group", drift_penalty=0.0),
    "i2p q 0.5 group": dict(strategy="i2p", q=0.5, sensitivity_norm="group", drift_penalty=0.0),
    "i2p q 0.1 tensor": dict(strategy="i2p", sensitivity_norm="tensor", drift_penalty=0.0),
    "i2p ratio q 1": dict(strategy="i2p", q=1.0, select_by="ratio", drift_penalty=0.0),
    "i2p warm-up head": dict(strategy="i2p", saliency_head="warmup", drift_penalty=0.0),
    "i2p penalty 1e2": dict(strategy="i2p", drift_penalty=1e2),
    "i2p penalty 1e3": dict(strategy="i2p", drift_penalty=1e3),
    "i2p penalty 1e4": dict(strategy="i2p", drift_penalty=1e4),
    "i2p penalty 1e5": dict(strategy="i2p", drift_penalty=1e5),
    "random penalty 1e4": dict(strategy="random", drift_penalty=1e4),
    "i2p decay 0.05 (no penalty)": dict(strategy="i2p", weight_decay=0.05, drift_penalty=0.0),
    "i2p rine head": dict(strategy="i2p", head="rine", head_dropout=0.5),
    "i2p univfd head": dict(strategy="i2p", head="univfd"),
}


def jaccard(a, b) -> float:
    inter = union = 0
    for n in a.numels:
        x = set(a.indices.get(n, []).tolist()) if a.indices.get(n) is not None else set()
        y = set(b.indices.get(n, []).tolist()) if b.indices.get(n) is not None else set()
        inter += len(x & y)
        union += len(x | y)
    return inter / union if union else 1.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--toy", default=None)
    p.add_argument("--generators", default="tconv,pixelshuffle,bilinear")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--rho", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--overlap", action="store_true", help="also mask overlap across seeds at batch 64")
    p.add_argument("--overlap-seeds", default="0,1,2")
    p.add_argument("--no-train", action="store_true", help="only the overlap table")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="i2pscan-retention-")
    toy = args.toy
    generators = args.generators.split(",")
    if toy is None:
        from i2pscan.train.toydata import make_toy_dataset

        toy = os.path.join(work, "toy")
        make_toy_dataset(toy, train_per_class=96, val_per_class=48, tile=80, generators=tuple(generators), seed=1)
    variants = [v for v in args.variants.split(",") if v]
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"machine: {machine()}; toy {toy}; rho {args.rho}, lr_backbone {args.lr}, {args.epochs} epochs, "
          f"batch {args.batch_size}, seeds {seeds}")
    rows, overlap_rows = [], []
    for gen in generators:
        train = load_labelled(os.path.join(toy, gen, "train"))
        others = [g for g in generators if g != gen]
        test = load_labelled(toy, split="val", subsets=others)
        cal = calibrate(load_backbone("i2p-tiny"), train, CalibrateConfig(seed=0))
        results = {}
        for name, seed in itertools.product(variants if not args.no_train else [], seeds):
            config = FinetuneConfig(**{**dict(epochs=args.epochs, rho=args.rho, lr_backbone=args.lr,
                                              batch_size=args.batch_size, seed=seed, workers=0,
                                              crop_policies=()), **VARIANTS[name]})
            out = os.path.join(work, f"{gen}-{len(rows)}-{seed}.safetensors")
            started = time.monotonic()
            result = finetune(load_backbone("i2p-tiny"), cal, train, out, config)
            seconds = time.monotonic() - started
            last = result.log[-1]
            scores = evaluate(Detector.load(out), test, ScanOptions(batch_size=64, workers=0))
            held = float(np.mean([r["auc"] for r in scores.rows if r["subset"] in others]))
            results.setdefault(name, []).append((last, held, seconds))
        base = np.mean([r[0]["drift_mean"] for r in results.get("random", [])]) if "random" in results else None
        for name, runs in results.items():
            mean = lambda key: float(np.mean([r[0][key] for r in runs]))  # noqa: E731
            ratio = mean("drift_mean") / base if base else float("nan")
            rows.append([gen, name, f"{mean('drift_mean'):.3g}", f"{mean('drift_max'):.3g}", ratio,
                         f"{mean('delta_rel'):.3g}", f"{mean('delta_max'):.3g}", float(np.mean([r[1] for r in runs])),
                         float(np.std([r[1] for r in runs])), float(np.mean([r[2] for r in runs]))])
            print(f"  {gen} {name}: drift {rows[-1][2]} (x{ratio:.3f} random), held-out AUC {rows[-1][7]:.3f}",
                  flush=True)
        if args.overlap:
            oseeds = [int(s) for s in args.overlap_seeds.split(",")]
            for name in variants:
                if VARIANTS[name]["strategy"] in ("random", "head-only"):
                    continue
                val = load_labelled(os.path.join(toy, gen, "val"))  # the same data for every seed
                masks = [plan_mask(load_backbone("i2p-tiny"), cal, train,
                                   FinetuneConfig(**{**dict(rho=args.rho, batch_size=64, seed=s, workers=0),
                                                     **VARIANTS[name]}), val=val) for s in oseeds]
                pairs = [jaccard(a, b) for a, b in itertools.combinations(masks, 2)]
                overlap_rows.append([gen, name, float(np.mean(pairs)), float(np.min(pairs))])
                print(f"  {gen} {name}: overlap {np.mean(pairs):.3f} (min {np.min(pairs):.3f})", flush=True)
    if rows:
        print_table("drift (1 - cos, last epoch) and held-out AUC at equal rho, steps and lr",
                    ["train", "variant", "drift mean", "drift max", "vs random", "|d|/|W0|", "max |d|",
                     "held-out AUC", "sd", "s"], rows)
    if overlap_rows:
        print_table(f"mask overlap (Jaccard) across seeds {args.overlap_seeds}, batch 64, rho {args.rho}",
                    ["train", "variant", "mean", "min"], overlap_rows)


if __name__ == "__main__":
    main()
