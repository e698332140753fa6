"""The published detectors on a GPU: speed and logit error of bf16, TF32 and fp32 backbones.

    python bench_precision.py [--device cuda] [--images 1024] [--batch-size 64] [--weights FILE]

``rine-2class`` and ``univfd`` on ViT-L-14 (QuickGELU) with RANDOM weights (a file written to a
temporary folder unless ``--weights`` names one), scoring the same random crops with the backbone
in fp32 (the default for published detectors: their authors' numbers), in fp32 with TF32 matrix
products allowed, in bf16 (``--precision bf16``) and in fp16 (autocast; not a detector option). Logit error is against the fp32 run;
parity with the authors' models is a test (``tests/test_published.py``) and is asked to hold
within 1e-3. Random weights give other activations than OpenAI's, so the errors are indicative.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import tempfile
import time

import torch

from _table import machine, print_table
from i2pscan.model.device import resolve_device
from i2pscan.model.detector import Detector

MODES = ("fp32", "tf32", "bf16", "fp16")  # fp16: CLIP's released weights are fp16


@contextlib.contextmanager
def tf32(allowed: bool):
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def random_weights(folder: str) -> str:
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-L-14-quickgelu", pretrained=None)
    path = os.path.join(folder, "vitl-random.safetensors")
    save_file({f"visual.{k}": v.contiguous() for k, v in model.visual.state_dict().items()}, path)
    return path


def run(detector: Detector, crops: torch.Tensor, batch: int) -> tuple[torch.Tensor, float]:
    detector.logits(crops[:batch])  # warm-up
    if detector.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = torch.cat([detector.logits(crops[i:i + batch]) for i in range(0, len(crops), batch)])
    if detector.device.type == "cuda":
        torch.cuda.synchronize()
    return out.cpu(), len(crops) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--weights", help="a ViT-L-14 weights file (default: random ones, written to a temporary folder)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"machine: {machine()}; device {device}")
    crops = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        weights = args.weights or random_weights(folder)
        for name in ("rine-2class", "univfd"):
            results = {}
            for mode in MODES:
                detector = Detector.load(name, device=device, pretrained=weights,
                                         precision="bf16" if mode == "bf16" else "fp32")
                if mode == "fp16":  # not a detector precision (yet): the backbone under fp16 autocast
                    detector.model = dataclasses.replace(detector.model, precision="fp16")
                with tf32(mode == "tf32"):
                    results[mode] = run(detector, crops, args.batch_size)
                del detector
            ref, base = results["fp32"]
            for mode in MODES:
                logits, rate = results[mode]
                err = (logits - ref).abs()
                rows.append([name, mode, rate, f"{rate / base:.2f}x", f"{float(err.max()):.2e}",
                             f"{float(err.mean()):.2e}", f"{float(ref.std()):.2e}"])
    print_table(f"published detectors, ViT-L-14 all 24 blocks, batch {args.batch_size}, {args.images} random crops "
                f"(images/s; logit error against fp32 in the same run)",
                ["detector", "backbone", "images/s", "vs fp32", "max |dlogit|", "mean |dlogit|", "logit std"], rows)


if __name__ == "__main__":
    main()
