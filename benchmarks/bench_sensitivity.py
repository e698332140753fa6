"""Sensitivity estimators: the old batched estimator against exact per-sample squared gradients.

    python benchmarks/bench_sensitivity.py [--device cpu] [--large-batches 1,8] [--toy DIR]

Part 1: time and peak memory of one intrinsic-sensitivity estimate over one batch, at batch 1, 8
and 64, on i2p-tiny (target: the CLIP embedding) and on ViT-L-14 with RANDOM weights cut at block
12 (eligible blocks 1..12, target: the block-12 class token). Old and new run in the same process
on the same images. Peak memory is the process's peak resident set above what it held before the
estimate (Linux VmHWM, reset per row) on CPU, or torch's peak allocation on CUDA.

Part 2: do masks depend on the seed? ``finetune --strategy low-sensitivity --rho 0.05
--sensitivity-samples 128`` masks (and ``i2p``) at ``--batch-size 64`` for seeds 0 and 1, with
the old and the new estimator, on a learnable toy set (``i2pscan demo-data``); the Jaccard
overlap of the two seeds' masks. An estimator whose noise grows with the batch gives chance masks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from _table import machine, print_table
from i2pscan.train import finetune as finetune_module
from i2pscan.train import plan as plan_module
from i2pscan.model.backbone import load_backbone
from i2pscan.model.device import resolve_device
from i2pscan.model.device import autocast
from i2pscan.train.sensitivity import intrinsic_sensitivity, target_output


def legacy_sensitivity(backbone, params, batches, total, target="embedding", layers=None, seed=0, view="cls",
                       projections=1):
    """The estimator before issue 8: one backward per batch of sum_b <v_b, g(x_b)>, squared.
    Its cross terms have zero mean but a variance that grows with the batch size."""
    generator = torch.Generator().manual_seed(seed)
    device = backbone.device
    scores = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    for p in params.values():
        p.requires_grad_(True)
    seen = 0
    try:
        for images in batches:
            for p in params.values():
                p.grad = None
            with autocast(device):
                g = target_output(backbone, images, target, layers, view)
            v = torch.randn(g.shape, generator=generator).to(device)
            v = v / v.norm(dim=1, keepdim=True)
            (v * g.float()).sum().backward()
            for n, p in params.items():
                scores[n].add_(p.grad.float().square())
            seen += len(images)
    finally:
        for p in params.values():
            p.requires_grad_(False)
            p.grad = None
    return {n: s.div_(seen) for n, s in scores.items()}


def _reset_peak(device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    return _status("VmRSS")


def _peak(device, before: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    return (_status("VmHWM") - before) / 2**20


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def measure(estimator, backbone, params, images, target, layers):
    device = backbone.device
    before = _reset_peak(device)
    start = time.perf_counter()
    estimator(backbone, params, [images], len(images), target=target, layers=layers)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, _peak(device, before)


SETUPS = {"i2p-tiny": ("default", None, "embedding"), "ViT-L-14": (None, 12, "taps")}


def cell(name: str, batch: int, estimator: str, device) -> dict:
    """One measurement, in a fresh process, so that the peak memory is this estimator's own."""
    pretrained, cut, target = SETUPS[name]
    backbone = load_backbone(name, pretrained, device=device)
    last = cut or backbone.num_blocks
    params = backbone.tunable_parameters(last)
    layers = [last] if target == "taps" else None
    fn = legacy_sensitivity if estimator == "old" else intrinsic_sensitivity
    images = torch.randn(batch, 3, backbone.image_size, backbone.image_size, device=device,
                         generator=torch.Generator(device=device).manual_seed(0))
    measure(fn, backbone, params, images[:1], target, layers)  # warm-up
    seconds, peak = measure(fn, backbone, params, images, target, layers)
    return {"seconds": seconds, "peak_mib": peak, "label": f"{name} (random weights, blocks 1..{last})"
            if pretrained is None else name}


def part1(device, large_batches):
    rows = []
    for name, batches in (("i2p-tiny", (1, 8, 64)), ("ViT-L-14", large_batches)):
        for batch in batches:
            got = {}
            for estimator in ("old", "new"):
                out = subprocess.run([sys.executable, __file__, "--cell", f"{name},{batch},{estimator}",
                                      "--device", str(device)], capture_output=True, text=True, check=True)
                got[estimator] = json.loads(out.stdout.strip().splitlines()[-1])
            old, new = got["old"], got["new"]
            rows.append([old["label"], batch, "old (batched)", batch / old["seconds"], old["peak_mib"], "1.00x"])
            rows.append([new["label"], batch, "new (per-sample)", batch / new["seconds"], new["peak_mib"],
                         f"{old['seconds'] / new['seconds']:.2f}x"])
    print_table("intrinsic sensitivity, one batch: images/s and peak memory above the loaded model (MiB)",
                ["backbone", "batch", "estimator", "images/s", "peak MiB", "speed vs old"], rows)


def _jaccard(a, b) -> float:
    inter = union = 0
    for n in a.numels:
        x = set(a.indices.get(n, torch.empty(0)).tolist())
        y = set(b.indices.get(n, torch.empty(0)).tolist())
        inter += len(x & y)
        union += len(x | y)
    return inter / union if union else 1.0


def part2(toy, device, samples, batch):
    from i2pscan.train.calibrate import CalibrateConfig, calibrate
    from i2pscan.train.samples import load_labelled

    sample = load_labelled(os.path.join(toy, "tconv", "train"))
    cal = calibrate(load_backbone("i2p-tiny", device=device), sample, CalibrateConfig(top_k=2, folds=3))
    rows = []
    original = plan_module.intrinsic_sensitivity  # the name plan_mask calls
    for strategy in ("low-sensitivity", "i2p"):
        for label, estimator in (("old (batched)", legacy_sensitivity), ("new (per-sample)", original)):
            plan_module.intrinsic_sensitivity = estimator
            try:
                masks = []
                for seed in (0, 1):
                    config = finetune_module.FinetuneConfig(strategy=strategy, rho=0.05, batch_size=batch,
                                                            sensitivity_samples=samples, saliency_samples=samples,
                                                            warmup_steps=100, seed=seed)
                    masks.append(finetune_module.plan_mask(load_backbone("i2p-tiny", device=device), cal, sample,
                                                           config))
            finally:
                plan_module.intrinsic_sensitivity = original
            rows.append([strategy, label, batch, samples, _jaccard(*masks)])
    print_table(f"mask overlap (Jaccard) of seeds 0 and 1, rho 0.05, i2p-tiny, toy tconv ({len(sample.items)} images)",
                ["strategy", "sensitivity", "batch", "samples", "Jaccard"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--large-batches", default="1,8",
                        help="ViT-L-14 batch sizes (64 needs ~25 GB and minutes per step on a CPU)")
    parser.add_argument("--toy", help="a demo-data folder (default: one is generated in a temporary folder)")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device(args.device)
    if args.cell:
        name, batch, estimator = args.cell.split(",")
        print(json.dumps(cell(name, int(batch), estimator, device)))
        return
    print(f"machine: {machine()}; device {device}")
    if not args.skip_timing:
        part1(device, tuple(int(b) for b in args.large_batches.split(",") if b))
    with tempfile.TemporaryDirectory() as tmp:
        toy = args.toy
        if toy is None:
            from i2pscan.train.toydata import make_toy_dataset

            toy = tmp
            make_toy_dataset(toy, train_per_class=96, val_per_class=8, tile=80, generators=("tconv",), seed=1)
        part2(toy, device, args.samples, args.batch_size)


if __name__ == "__main__":
    main()
