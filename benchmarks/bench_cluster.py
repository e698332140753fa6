"""Scale-out pieces: streaming discovery, the report writers, and a local scan vs `--ray local`.

    python benchmarks/bench_cluster.py [--files 200000] [--images 400] [--rows 200000] [--skip-ray]

* discovery of ``--files`` empty files (200 folders): the list that ``discover`` returns vs the
  stream of ``iter_discover``, each in a fresh process (wall time, peak RSS over the process's
  RSS after imports);
* the report writers: rows/s of ``ReportWriter`` (closed shards, then one merged file) and of
  ``DatasetWriter`` (``-o DIR/``: part files, no merge) on ``--rows`` synthetic rows;
* images/s of ``i2pscan scan`` on ``--images`` 256x256 PNGs with the tiny backbone: local
  (DecodePool, default workers) vs ``--ray local`` (a private Ray instance; its start-up is timed
  separately and left out of the rate), each the same command line otherwise.

Ratios compare rows measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from _table import machine, print_table

_DISCOVER = r"""
import json, os, resource, sys, time
from i2pscan.io.discover import discover, iter_discover
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.perf_counter()
if sys.argv[2] == "list":
    n = len(discover([sys.argv[1]]))
else:
    n = sum(1 for _ in iter_discover([sys.argv[1]]))
print(json.dumps({"n": n, "s": time.perf_counter() - started,
                  "rss_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024}))
"""


def bench_discovery(n_files: int) -> list[list]:
    rows = []
    with tempfile.TemporaryDirectory() as root:
        per = max(1, n_files // 200)
        for i in range(n_files):
            folder = os.path.join(root, f"d{i // per:04d}")
            if i % per == 0:
                os.mkdir(folder)
            open(os.path.join(folder, f"{i:08d}.jpg"), "wb").close()
        results = {}
        for how in ("list", "stream"):
            out = subprocess.run([sys.executable, "-c", _DISCOVER, root, how], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(out.stderr)
            results[how] = json.loads(out.stdout)
            assert results[how]["n"] == n_files
        for how, label in (("list", "discover() -> list"), ("stream", "iter_discover() stream")):
            r = results[how]
            rows.append([f"discovery of {n_files:,} empty files, {label}", r["s"], n_files / r["s"],
                         f"{r['rss_mib']:.1f} MiB", f"{results['list']['s'] / r['s']:.2f}x"])
    return rows


def bench_writers(n_rows: int) -> list[list]:
    from datetime import datetime, timezone

    from i2pscan.report.writer import DatasetWriter, ReportWriter

    when = datetime.now(timezone.utc)
    rows = [{"path": f"photos/{i:09d}.jpg", "path_raw": None, "size_bytes": 1_000_000 + i, "mtime": when,
             "format": "JPEG", "width": 4000, "height": 3000, "score": float(i % 997) / 997, "logit": 0.1,
             "verdict": "real", "error": None, "sha256": None} for i in range(n_rows)]
    order = {r["path"]: i for i, r in enumerate(rows)}
    out = []
    rates = {}
    with tempfile.TemporaryDirectory() as folder:
        for label, cls, target in (("ReportWriter (shards, then one merged file)", ReportWriter, "r.parquet"),
                                   ("DatasetWriter (-o DIR/, part files)", DatasetWriter, "ds/")):
            started = time.perf_counter()
            writer = cls(os.path.join(folder, target), {"detector_id": "bench", "options": {}})
            for r in rows:
                writer.add(r)
            writer.close(order, {})
            rates[label] = n_rows / (time.perf_counter() - started)
    first = next(iter(rates.values()))
    for label, rate in rates.items():
        out.append([f"report writer: {label}, {n_rows:,} rows", n_rows / rate, rate, "-", f"{rate / first:.2f}x"])
    return out


def _detector(folder: str) -> str:
    from i2pscan.train.augment import Augment
    from i2pscan.model.backbone import load_backbone
    from i2pscan.train.calibrate import CalibrateConfig, calibrate
    from i2pscan.train.finetune import FinetuneConfig, finetune
    from i2pscan.train.samples import load_labelled
    from i2pscan.train.toydata import make_toy_dataset

    make_toy_dataset(os.path.join(folder, "toy"), train_per_class=32, val_per_class=8, tile=64,
                     generators=("tconv",), seed=1)
    sample = load_labelled(os.path.join(folder, "toy", "tconv", "train"))
    cal = calibrate(load_backbone("i2p-tiny"), sample, CalibrateConfig(top_k=2, folds=3))
    out = os.path.join(folder, "detector.safetensors")
    finetune(load_backbone("i2p-tiny"), cal, sample, out,
             FinetuneConfig(epochs=1, batch_size=16, sensitivity_samples=16, saliency_samples=16,
                            warmup_steps=20, augment=Augment(blur_p=0.0, jpeg_p=0.0)))
    return out


def bench_ray(n_images: int) -> list[list]:
    from i2pscan.io.pixels import save_image

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        detector = _detector(folder)
        images = os.path.join(folder, "images")
        os.mkdir(images)
        rng = np.random.default_rng(0)
        for i in range(n_images):
            save_image(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), os.path.join(images, f"{i:05d}.png"))
        base = [sys.executable, "-m", "i2pscan", "scan", images, "-d", detector, "--format", "jsonl", "--device", "cpu"]
        rates = {}
        for label, extra in (("local scan (DecodePool)", []), ("--ray local", ["--ray", "local"])):
            started = time.perf_counter()
            r = subprocess.run(base + extra, capture_output=True, text=True)
            wall = time.perf_counter() - started
            assert r.returncode in (0, 1), r.stderr[-2000:]
            assert len(r.stdout.splitlines()) == n_images
            # the scan's own summary line: "N file(s) scanned in S s" (start-up of Python, model and Ray excluded)
            seconds = float(r.stderr.split(" file(s) scanned in ")[1].split(" s")[0])
            rates[label] = (n_images / seconds, wall)
        first = rates["local scan (DecodePool)"][0]
        for label, (rate, wall) in rates.items():
            rows.append([f"scan {n_images} PNGs 256x256, i2p-tiny: {label} (wall {wall:.1f} s with start-up)",
                         n_images / rate, rate, "-", f"{rate / first:.2f}x"])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=200_000)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--images", type=int, default=400)
    p.add_argument("--skip-ray", action="store_true")
    args = p.parse_args()
    print(f"machine: {machine()}")
    rows = bench_discovery(args.files) + bench_writers(args.rows)
    if not args.skip_ray:
        rows += bench_ray(args.images)
    print_table("scale-out pieces (ratios against the first row of each group)",
                ["what", "seconds", "per second", "peak RSS over baseline", "ratio"], rows)


if __name__ == "__main__":
    main()
