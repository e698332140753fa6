"""Feature-extraction throughput: full forward vs early exit at a middle block.

    python benchmarks/bench_features.py [--device cpu] [--large-images 16] [--tiny-images 512]

ViT-L-14 uses random weights (the timing does not depend on them). Both rows of a backbone are
measured in the same run on the same inputs; the ratio is early-exit images/s over full images/s.
"""

from __future__ import annotations

import argparse
import time

import torch

from _table import machine, print_table
from i2pscan.model.backbone import load_backbone
from i2pscan.model.device import resolve_device
from i2pscan.model.device import autocast


def images_per_second(backbone, images, blocks, batch_size, repeats):
    with torch.no_grad(), autocast(backbone.device):
        backbone.taps(images[:batch_size], blocks)  # warm-up
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            for i in range(0, len(images), batch_size):
                backbone.taps(images[i:i + batch_size], blocks)
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()
    return repeats * len(images) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--large-images", type=int, default=16)
    parser.add_argument("--tiny-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"machine: {machine()}; device {device}")
    rows = []
    for name, pretrained, n in (("i2p-tiny", "default", args.tiny_images), ("ViT-L-14", None, args.large_images)):
        backbone = load_backbone(name, pretrained, device=device)
        images = torch.randn(n, 3, backbone.image_size, backbone.image_size, device=device)
        everything = list(range(1, backbone.num_blocks + 1))
        middle = backbone.num_blocks // 2
        full = images_per_second(backbone, images, everything, args.batch_size, args.repeats)
        early = images_per_second(backbone, images, list(range(1, middle + 1)), args.batch_size, args.repeats)
        rows.append([name, f"all {backbone.num_blocks} blocks", full, "1.00x"])
        rows.append([name, f"early exit at block {middle}", early, f"{early / full:.2f}x"])
        del backbone, images
    print_table("feature extraction (taps of every block up to the exit), images/s",
                ["backbone", "blocks run", "images/s", "vs full"], rows)


if __name__ == "__main__":
    main()
