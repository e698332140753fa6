"""Scan-time cost of keeping the delta a separate fp32 term (one numeric path) vs merging it into W0.

    python bench_delta_path.py [--device cpu] [--images 16] [--batch-size 8] [--rho 0.01]

ViT-L-14 with RANDOM weights cut after block 12, a random rho mask over blocks 1..12 with random
delta values, the tiny-backbone head shape; both variants score the same images in the same run.
"""

from __future__ import annotations

import argparse
import time

import torch

from _table import machine, print_table
from i2pscan import inference
from i2pscan.backbone import load_backbone, resolve_device
from i2pscan.detector import Delta, apply_delta
from i2pscan.head import DetectorHead, HeadConfig
from i2pscan.sensitivity import build_mask, eligible_parameters
from i2pscan.sparse import attach


def images_per_second(backbone, head, images, batch_size, repeats=2):
    inference.logits(backbone, head, "cls", images[:batch_size])  # warm-up
    if backbone.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(0, len(images), batch_size):
            inference.logits(backbone, head, "cls", images[i:i + batch_size])
    if backbone.device.type == "cuda":
        torch.cuda.synchronize()
    return repeats * len(images) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rho", type=float, default=0.01)
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"machine: {machine()}; device {device}")
    torch.manual_seed(0)
    rows = []
    results = {}
    for variant in ("merged into W0 (before)", "separate fp32 term (now)"):
        backbone = load_backbone("ViT-L-14", None, device=device)
        params = eligible_parameters(backbone, 12)
        mask = build_mask("random", params, args.rho, 0.5, seed=0)
        backbone.truncate(12)
        g = torch.Generator().manual_seed(1)
        deltas = {n: Delta(idx, 1e-3 * torch.randn(len(idx), generator=g)) for n, idx in mask.indices.items()}
        if variant.startswith("merged"):
            for n, d in deltas.items():
                apply_delta(params[n], d)
        else:
            for n, module in attach(backbone, params, {n: d.indices for n, d in deltas.items()}).items():
                module.values.requires_grad_(False)
                module.values.data.copy_(deltas[n].values.to(device))
        head = DetectorHead(HeadConfig.for_layers([6, 12], [1 / 24] * 24, backbone.width, 256)).to(device)
        images = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(2)).to(device)
        results[variant] = (images_per_second(backbone, head, images, args.batch_size),
                            inference.logits(backbone, head, "cls", images[:2]).cpu())
        del backbone
    base = results["merged into W0 (before)"][0]
    for variant, (ips, _) in results.items():
        rows.append([variant, ips, f"{ips / base:.2f}x"])
    print_table(f"ViT-L-14 blocks 1..12, rho {args.rho}, batch {args.batch_size}: scan model images/s",
                ["delta", "images/s", "vs merged"], rows)
    a, b = (r[1] for r in results.values())
    print(f"max |logit difference| merged vs separate: {float((a - b).abs().max()):.2e}")


if __name__ == "__main__":
    main()
