"""Decode only what is scored (issue 19): JPEG region decoding against the full decode.

    python benchmarks/bench_decode.py [--files 6] [--repeat 3] [--workers N]

Writes photo-like JPEGs of 1 MP (1224x816) and 24 MP (6000x4000), quality 90, 4:2:0 (the 24 MP
ones also with a restart marker every MCU row, as many cameras write them), then, in one run on the
same files:

* decode + crop images/s in this process (one core), region (io/region.py, nvImageCodec's CPU
  backend) against the full Pillow decode (``I2PSCAN_REGION_DECODE=0``), at ``--crops 1`` and ``9``
  (224 px crops), best of ``--repeat``, the two paths interleaved;
* a tiny-backbone scan end to end (``run_scan``: the decode pool, uint8 crops, the model, the rows),
  images/s per size and the per-image cost ratio 24 MP / 1 MP, region against full decode; the
  per-image cost is (time of the files scanned four times over - time of one file) / (4 x files - 1),
  the median of ``--repeat`` + 1 interleaved measurements, so that a scan's start-up is left out
  (1 MP: ``--scan-small`` files, default 48).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from _photos import photo_jpeg
from _table import machine, print_table
from i2pscan.io import region
from i2pscan.io.preprocess import CropTransform, Preprocess
from i2pscan.io.pool import default_workers
from i2pscan.io.work import FileWork
from i2pscan.scan.options import ScanOptions
from i2pscan.scan.session import run_scan

SIZES = {"1 MP": (1224, 816), "24 MP": (6000, 4000), "24 MP, restart markers": (6000, 4000)}
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def make_jpeg(folder: str, label: str, i: int) -> str:
    save = {"restart_marker_rows": 1} if "restart" in label else {}  # as many cameras' encoders write them
    return photo_jpeg(folder, f"{label.replace(' ', '').replace(',', '')}-{i}", SIZES[label],
                      [list(SIZES).index(label), i], **save)


def switched(on: bool) -> None:
    os.environ[region.SWITCH] = "1" if on else "0"


def decode_rate(paths: list[str], crops: int) -> float:
    work = FileWork(CropTransform(Preprocess(224, MEAN, STD), crops), uint8=True)
    started = time.perf_counter()
    for i, p in enumerate(paths):
        item = work(i, p)
        assert item.pixels is not None, item.info.error
    return len(paths) / (time.perf_counter() - started)


def scan_costs(detector, files: dict[str, list[str]], options: ScanOptions, repeat: int) -> dict:
    """{(label, region on): seconds per image of a scan, start-up left out}: (time of the files
    scanned four times over - time of one file) / (4 x files - 1), the median of ``repeat``
    measurements, region and full decode interleaved so that the machine's load hits both alike."""
    def timed(paths: list[str]) -> float:
        started = time.perf_counter()
        summary = run_scan(paths, None, detector, options).summary
        assert summary.errors == 0
        return time.perf_counter() - started

    samples: dict = {}
    for _ in range(repeat):
        for label, paths in files.items():
            for on in (False, True):
                switched(on)
                timed(paths[:1])  # warm-up
                one, many = timed(paths[:1]), timed(paths * 4)
                samples.setdefault((label, on), []).append((many - one) / (4 * len(paths) - 1))
    switched(True)
    return {key: float(np.median(values)) for key, values in samples.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=6, help="JPEGs per size")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--skip-scan", action="store_true")
    p.add_argument("--scan-only", action="store_true", help="only the scan table")
    p.add_argument("--scan-small", type=int, default=48, help="1 MP JPEGs in the scan rows")
    args = p.parse_args()
    workers = default_workers() if args.workers is None else args.workers
    print(f"machine: {machine()}; region decoding available: {region.available()}; {workers} decoding workers")
    with tempfile.TemporaryDirectory() as folder:
        files = {label: [make_jpeg(folder, label, i) for i in range(args.files)] for label in SIZES}
        scan_files = {"1 MP": [make_jpeg(folder, "1 MP", i) for i in range(args.scan_small)], "24 MP": files["24 MP"],
                      "24 MP, restart markers": files["24 MP, restart markers"]}
        rows = []
        for label, paths in ({} if args.scan_only else files).items():
            for crops in (1, 9):
                rates = {}
                for _ in range(args.repeat):
                    for on in (False, True):
                        switched(on)
                        rates[on] = max(rates.get(on, 0.0), decode_rate(paths, crops))
                rows.append([f"{label}, --crops {crops}", rates[False], rates[True], f"{rates[True] / rates[False]:.2f}x"])
        switched(True)
        if rows:
            print_table("decode + 224 px crops, one process (images/s, best of --repeat)",
                        ["JPEG", "full decode", "region decode", "region vs full"], rows)
        if args.skip_scan:
            return
        from bench_scan import detector_for
        from i2pscan.model.device import resolve_device

        import torch

        # one torch thread: on a shared machine two OpenMP threads spin against other jobs and the
        # tiny model's time, not decoding, would be what the rows measure
        torch.set_num_threads(1)
        detector = detector_for("i2p-tiny", "default", 6, resolve_device("cpu"))
        options = ScanOptions(batch_size=8, workers=workers)
        cost = scan_costs(detector, scan_files, options, args.repeat + 1)
        rows = []
        for on in (False, True):
            rows.append(["region decode" if on else "full decode", 1 / cost["1 MP", on], 1 / cost["24 MP", on],
                         f"{cost['24 MP', on] / cost['1 MP', on]:.1f}x", 1 / cost["24 MP, restart markers", on],
                         f"{cost['24 MP, restart markers', on] / cost['1 MP', on]:.1f}x"])
        print_table(f"tiny-backbone scan end to end, {args.scan_small} x 1 MP and {args.files} x 24 MP JPEGs, {workers} workers (images/s, "
                    f"start-up left out)",
                    ["JPEG decoding", "1 MP", "24 MP", "cost 24 MP / 1 MP", "24 MP, restart markers",
                     "cost 24 MP RST / 1 MP"], rows)


if __name__ == "__main__":
    main()
