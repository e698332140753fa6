"""Scan-time cost and fidelity of the ways to add a trained delta to the backbone.

    python bench_delta_path.py [--device cpu] [--images 16] [--batch-size 8] [--rho 0.01]
                               [--delta-scales 0.003,0.03] [--variants merged,reference]

ViT-L-14 with RANDOM weights cut after block 12, a random rho mask over blocks 1..12 with random
delta values (each entry ``scale`` times the mean |W0| of its matrix, random sign), the tiny
backbone's head shape. In one run, on the same images:

* ``merged into W0``: W0 + delta written into the weights (what scans did before issue 8);
* ``CSR term, bf16 out``: i2pscan's sparse modules, the delta's CSR product in fp32 added to the
  dense product's output in the autocast dtype (bf16 on CUDA): the first separate-term version;
* ``CSR term, fp32 out``: the same, added in fp32 and handed on in fp32 (what training uses);
* ``dense delta, fp32 sum``: a second dense product with the delta as a bf16 matrix, summed in
  fp32 (``SparseDelta.dense_linear``: what scans and validation use on CUDA);
* ``fp32 reference``: autocast off: the arithmetic of a CPU scan.

On CPU there is no autocast: there ``CSR term, bf16 out`` rounds to bf16 where nothing else does, and
the others are all the fp32 arithmetic of the CSR product. Fidelity: for each
delta scale, how well a variant reproduces the delta's effect on the logits (the logits with the
delta minus the logits with a zero delta) of the fp32 reference: cosine similarity, and the
largest logit difference from the reference.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time

import torch

from _table import machine, print_table
from i2pscan.model import inference, sparse
from i2pscan.model.backbone import load_backbone
from i2pscan.model.device import resolve_device
from i2pscan.model.detector_file import Delta
from i2pscan.model.head import DetectorHead, HeadConfig
from i2pscan.train.sensitivity import build_mask

VARIANTS = ("merged into W0", "CSR term, bf16 out", "CSR term, fp32 out", "dense delta, fp32 sum", "fp32 reference")


def merge_delta(param: torch.Tensor, delta: Delta) -> None:
    """theta0 + scatter(delta), in place: the reference a separate delta term must equal."""
    values = delta.values.to(param.device, param.dtype)
    if delta.indices is None:
        param.data.add_(values)
    else:
        param.data.view(-1).index_add_(0, delta.indices.to(param.device, torch.long), values)



@contextlib.contextmanager
def variant_arithmetic(variant: str):
    """The sparse modules' product and output precision, and the autocast policy, of ``variant``."""
    original = sparse.sparse_linear, sparse.DENSE_INFERENCE, inference.autocast
    if variant.startswith("CSR"):
        sparse.DENSE_INFERENCE = False
    if variant == "CSR term, bf16 out":
        sparse.sparse_linear = functools.partial(original[0], out_dtype=torch.bfloat16)
    if variant == "fp32 reference":
        inference.autocast = lambda device, precision="bf16": contextlib.nullcontext()
    try:
        yield
    finally:
        sparse.sparse_linear, sparse.DENSE_INFERENCE, inference.autocast = original


def images_per_second(backbone, head, images, batch_size, repeats=2):
    inference.logits(inference.Model(backbone, head), images[:batch_size])  # warm-up
    if backbone.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(0, len(images), batch_size):
            inference.logits(inference.Model(backbone, head), images[i:i + batch_size])
    if backbone.device.type == "cuda":
        torch.cuda.synchronize()
    return repeats * len(images) / (time.perf_counter() - start)


def build(variant, device, rho):
    """The backbone of ``variant`` and a setter ``set_scale(s)`` for its delta values."""
    torch.manual_seed(0)
    backbone = load_backbone("ViT-L-14", None, device=device, want_hash=False)
    params = backbone.tunable_parameters(12)
    mask = build_mask("random", params, rho, 0.5, seed=0)
    backbone.truncate(12)
    directions = {}
    g = torch.Generator().manual_seed(1)
    for n, idx in mask.indices.items():
        directions[n] = torch.randn(len(idx), generator=g).sign() * float(params[n].detach().abs().mean())
    if variant == "merged into W0":
        originals = {n: params[n].detach().clone() for n in mask.indices}

        def set_scale(scale):
            for n, idx in mask.indices.items():
                params[n].data.copy_(originals[n])
                merge_delta(params[n], Delta(idx, scale * directions[n]))
    else:
        modules = sparse.attach(backbone, params, mask.indices)

        def set_scale(scale):
            for n, module in modules.items():
                module.values.requires_grad_(False)
                module.values.data.copy_((scale * directions[n]).to(device))
    return backbone, set_scale


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rho", type=float, default=0.01)
    parser.add_argument("--delta-scales", default="0.003,0.03")
    parser.add_argument("--variants", default=None,
                        help="a comma-separated subset by first word (merged, CSR, dense, fp32); merged and fp32 always run")
    args = parser.parse_args()
    wanted = {w.strip().lower() for w in (args.variants or "").split(",") if w.strip()}
    variants = [v for v in VARIANTS if not wanted or v.split()[0].lower() in wanted | {"merged", "fp32"}]
    device = resolve_device(args.device)
    scales = [float(s) for s in args.delta_scales.split(",")]
    print(f"machine: {machine()}; device {device}")
    images = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(2)).to(device)
    probe = images[:min(len(images), 64)]
    speed, effects, logits = {}, {}, {}
    for variant in variants:
        backbone, set_scale = build(variant, device, args.rho)
        torch.manual_seed(3)
        head = DetectorHead(HeadConfig.for_layers([6, 12], [1 / 24] * 24, backbone.width, 256)).to(device)
        with variant_arithmetic(variant):
            set_scale(0.0)
            zero = inference.logits(inference.Model(backbone, head), probe).cpu()
            for scale in scales:
                set_scale(scale)
                logits[variant, scale] = inference.logits(inference.Model(backbone, head), probe).cpu()
                effects[variant, scale] = logits[variant, scale] - zero
            speed[variant] = images_per_second(backbone, head, images, args.batch_size)
        del backbone
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = speed["merged into W0"]
    rows = []
    for variant in variants:
        row = [variant, speed[variant], f"{speed[variant] / base:.2f}x"]
        for scale in scales:
            ref, got = effects["fp32 reference", scale], effects[variant, scale]
            cos = float(torch.nn.functional.cosine_similarity(ref.flatten(), got.flatten(), dim=0))
            row += [f"{cos:.3f}", f"{float((logits[variant, scale] - logits['fp32 reference', scale]).abs().max()):.2e}"]
        rows.append(row)
    columns = ["delta", "images/s", "vs merged"]
    for scale in scales:
        columns += [f"effect cos @{scale}", f"max |dlogit| @{scale}"]
    print_table(f"ViT-L-14 blocks 1..12, rho {args.rho}, batch {args.batch_size}, {len(probe)} images for fidelity "
                f"(delta effect: logits with minus without the delta; reference: fp32)", columns, rows)
    for scale in scales:
        print(f"delta scale {scale}: |effect| in the fp32 reference {float(effects['fp32 reference', scale].abs().mean()):.2e}"
              f" (mean), logit spread {float(logits['fp32 reference', scale].std()):.2e} (std)")


if __name__ == "__main__":
    main()
