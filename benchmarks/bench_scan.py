"""Scan throughput: end to end on a folder of large JPEGs, and where the time goes.

    python benchmarks/bench_scan.py [--device cpu] [--per-size 4] [--workers N]

Writes photo-like JPEGs of 2, 6 and 12 megapixels (quality 90) to a temporary folder, then, in
one run on the same files:

* decode only: the scan's DataLoader (workers decode and centre-crop; no model);
* end to end (``i2pscan.scan.scan``: discovery list in, rows out) for the tiny backbone, and for
  the ViT-L-14 architecture with early exit after block 12 and with all 24 blocks;
* model only: the same backbones on already-cropped tensors, so that the share of decoding in
  the end-to-end time can be read off.

ViT-L-14 uses random weights (timing does not depend on them) and a random head; ratios are
against the full 24-block ViT-L-14 scan measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from _photos import photo_jpeg
from _table import machine, print_table
from i2pscan.model.backbone import load_backbone
from i2pscan.model.device import resolve_device
from i2pscan.io.preprocess import CropTransform, Preprocess
from i2pscan.io.pool import default_workers, scan_batches
from i2pscan.io.work import FileWork
from i2pscan.io.loader import ImageFiles, loader
from i2pscan.model.detector import Detector
from i2pscan.model.head import DetectorHead, HeadConfig
from i2pscan.scan.options import ScanOptions
from i2pscan.scan.session import run_scan

SIZES = {"2 MP": (1632, 1224), "6 MP": (3000, 2000), "12 MP": (4000, 3000)}


def make_jpegs(folder: str, per_size: int) -> list[str]:
    """Photo-like content (a scikit-image photograph, resized, plus sensor-like noise), written by
    one process per core."""
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(folder, label, i) for label in SIZES for i in range(per_size)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        return list(pool.map(_make_jpeg, jobs))


def _make_jpeg(job: tuple[str, str, int]) -> str:
    folder, label, i = job
    return photo_jpeg(folder, f"{label.replace(' ', '')}-{i}", SIZES[label], [list(SIZES).index(label), i])


def detector_for(name: str, pretrained, last_block: int, device) -> Detector:
    backbone = load_backbone(name, pretrained, device=device)
    backbone.truncate(last_block)
    layers = sorted({max(1, last_block // 3), max(1, 2 * last_block // 3), last_block})
    head = DetectorHead(HeadConfig.for_layers(layers, [1.0] * last_block, backbone.width)).to(device)
    meta = {"threshold": 0.5, "threshold_logit": 0.0, "temperature": 1.0, "view": "cls",
            "preprocessing": backbone.preprocessing()}
    return Detector(backbone, head, meta, sha256="benchmark", path="(in memory)")


def scan_rate(detector: Detector, paths: list[str], options: ScanOptions) -> float:
    run_scan(paths[:2], None, detector, options)  # warm-up: workers, allocator, kernels
    started = time.perf_counter()
    summary = run_scan(paths, None, detector, options).summary
    assert summary.errors == 0
    return len(paths) / (time.perf_counter() - started)


def decode_rate(paths: list[str], preprocess: Preprocess, options: ScanOptions, how: str) -> float:
    """Decode + centre-crop images/s: ``dataloader`` (the old scan path, still used for training)
    or ``pool`` (the scanner's DecodePool, what a scan uses now)."""
    started = time.perf_counter()
    if how == "dataloader":
        batches = loader(ImageFiles(paths, CropTransform(preprocess, 1)), options.batch_size, options.workers)
    else:
        batches = scan_batches(paths, FileWork(CropTransform(preprocess, 1)), options.batch_size, options.workers)
    n = sum(len(b.items) for b in batches)
    return n / (time.perf_counter() - started)


@torch.no_grad()
def model_rate(detector: Detector, n: int, batch: int) -> float:
    s = detector.preprocess.crop_size
    pixels = torch.randn(batch, 3, s, s, device=detector.device)
    detector.logits(pixels)
    started = time.perf_counter()
    for _ in range(max(1, n // batch)):
        detector.logits(pixels)
    if detector.device.type == "cuda":
        torch.cuda.synchronize()
    return max(1, n // batch) * batch / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--per-size", type=int, default=4, help="JPEGs per size (2, 6, 12 MP)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--decode-only", action="store_true", help="only the decode + crop rows (no model)")
    p.add_argument("--repeat", type=int, default=1, help="decode measurements per path (the best is kept)")
    p.add_argument("--model-images", type=int, default=None,
                   help="crops per model-only measurement (default: one batch, at least 8; use thousands on a GPU)")
    args = p.parse_args()
    device = resolve_device(args.device)
    workers = default_workers() if args.workers is None else args.workers
    options = ScanOptions(batch_size=args.batch_size, workers=workers)
    print(f"machine: {machine()}; device {device}; {workers} decoding workers; batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as folder:
        paths = make_jpegs(folder, args.per_size)
        megapixels = sum(w * h for w, h in SIZES.values()) * args.per_size / len(paths) / 1e6
        print(f"{len(paths)} JPEGs, {megapixels:.1f} MP on average, "
              f"{sum(os.path.getsize(x) for x in paths) / len(paths) / 1e6:.1f} MB on average")
        rows = []
        tiny = detector_for("i2p-tiny", "default", 6, device)
        for name, size in (("tiny crop (64 px)", 64), ("ViT crop (224 px)", 224)):
            pp = Preprocess(size, tiny.preprocess.mean, tiny.preprocess.std)
            rates = {}
            for _ in range(args.repeat):  # interleaved, so that load on the machine hits both alike
                for how in ("dataloader", "pool"):
                    rates[how] = max(rates.get(how, 0.0), decode_rate(paths, pp, options, how))
            for how, label in (("dataloader", "DataLoader (old scan path)"), ("pool", "DecodePool (scan)")):
                rows.append([f"decode + crop only, {name}, {label}",
                             f"{rates[how] / rates['dataloader']:.2f}x vs DataLoader", rates[how], "-", "-"])
        if args.decode_only:
            print_table("decode + crop (images/s; ratios against the DataLoader path in this run)",
                        ["what", "ratio", "images/s", "-", "-"], rows)
            return
        runs = [("i2p-tiny, all 6 blocks", tiny),
                ("ViT-L-14, early exit at block 12", detector_for("ViT-L-14", None, 12, device)),
                ("ViT-L-14, all 24 blocks", detector_for("ViT-L-14", None, 24, device))]
        results = []
        for label, det in runs:
            end_to_end = scan_rate(det, paths, options)
            model = model_rate(det, args.model_images or max(8, args.batch_size), args.batch_size)
            results.append((label, end_to_end, model))
        full = results[-1][1]
        for label, end_to_end, model in results:
            decode_share = max(0.0, 1.0 - (1.0 / model) / (1.0 / end_to_end))
            rows.append([f"scan end to end, {label}", f"{end_to_end / full:.2f}x", end_to_end, model,
                         f"{decode_share:.0%}"])
    print_table("scan throughput (images/s; ratios against the 24-block ViT-L-14 scan)",
                ["what", "vs full ViT-L", "images/s", "model-only images/s", "time not in the model"], rows)


if __name__ == "__main__":
    main()
