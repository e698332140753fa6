"""GPU JPEG decoding (nvjpeg through torchvision) against the exact CPU path: speed, and what it
changes in the crops and in the logits (issue 19, item 3).

    python bench_gpu_decode.py [--device cuda] [--corpora ../../shared/corpora] [--photos 64]
                               [--weights VITL.safetensors]

JPEGs: the shared corpora's JPEGs plus ``--photos`` photo-like 6.7 MP JPEGs made here. For each
file, the 224 px centre crop from the scan's exact path (io/region.py, bit-identical to Pillow)
and from ``torchvision.io.decode_jpeg(device=...)`` (the whole image decoded there, then the same
crop). Prints the pixel difference (max, mean, share of values that differ), the logit difference
of the tiny detector and of ``rine-2class`` (random ViT-L-14 weights unless ``--weights``), and
decode images/s of both paths on the 6.7 MP photos. The exact path stays the default: nothing in a
scan uses GPU decoding until these numbers say where it is safe.
"""

from __future__ import annotations

import argparse
import glob
import os
import tempfile
import time

import numpy as np
import torch
import torchvision

from _table import machine, print_table
from bench_scan import detector_for
from i2pscan.io.preprocess import CropTransform
from i2pscan.io.work import FileWork
from i2pscan.model.detector import Detector
from i2pscan.model.device import resolve_device


def jpegs(corpora: str, photos: int, folder: str) -> tuple[list[str], list[str]]:
    from bench_decode import SIZES, make_jpeg

    SIZES["6.7 MP"] = (3168, 2112)
    found = sorted(p for p in glob.glob(os.path.join(corpora, "**", "*"), recursive=True)
                   if p.lower().endswith((".jpg", ".jpeg")))
    made = [make_jpeg(folder, "6.7 MP", i) for i in range(photos)]
    return found, made


def gpu_crops(paths: list[str], transform: CropTransform, device, exif: bool) -> dict[str, torch.Tensor]:
    out = {}
    for path in paths:
        data = torchvision.io.read_file(path)
        try:
            image = torchvision.io.decode_jpeg(data, mode=torchvision.io.ImageReadMode.RGB, device=device,
                                               apply_exif_orientation=exif)
        except RuntimeError:
            continue  # a file nvjpeg refuses (the exact path decides what it is)
        h, w = image.shape[1:]
        (left, top, right, bottom), = transform.boxes(w, h)
        crop = image[:, top:bottom, left:right].cpu().numpy().transpose(1, 2, 0)
        out[path] = crop
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--corpora", default=os.path.join("..", "..", "shared", "corpora"))
    p.add_argument("--photos", type=int, default=64)
    p.add_argument("--weights", default=None)
    args = p.parse_args()
    device = resolve_device(args.device)
    print(f"machine: {machine()}; device {device}; torchvision {torchvision.__version__}")
    rows, logit_rows = [], []
    with tempfile.TemporaryDirectory() as folder:
        found, made = jpegs(args.corpora, args.photos, folder)
        tiny = detector_for("i2p-tiny", "default", 6, device)
        published = None
        if args.weights:
            published = Detector.load("rine-2class", device=device, pretrained=args.weights)
        for name, det in (("i2p-tiny (i2p crops, EXIF applied)", tiny), ("rine-2class (torchvision crops)", published)):
            if det is None:
                continue
            pp = det.preprocess
            transform = CropTransform(pp.__class__(224, pp.mean, pp.std, pp.crop_mode), 1)
            exact_work = FileWork(transform, uint8=True)
            exact = {}
            for path in found + made:
                item = exact_work(0, path)
                if item.pixels is not None and item.extent is None:
                    exact[path] = item.pixels[0].transpose(1, 2, 0)
            gpu = gpu_crops(list(exact), transform, device, exif=pp.rgb_mode == "i2p")
            common = [p for p in exact if p in gpu and gpu[p].shape == exact[p].shape]
            diff = np.concatenate([np.abs(gpu[p].astype(int) - exact[p].astype(int)).ravel() for p in common])
            rows.append([name, len(common), int(diff.max()), f"{diff.mean():.3f}", f"{(diff > 0).mean():.1%}"])
            stack = lambda src: torch.from_numpy(np.stack([src[p].transpose(2, 0, 1) for p in common]))  # noqa: E731
            z_exact = torch.cat([det.logits(b) for b in stack(exact).split(64)]).cpu()
            z_gpu = torch.cat([det.logits(b) for b in stack(gpu).split(64)]).cpu()
            err = (z_gpu - z_exact).abs()
            logit_rows.append([name, len(common), f"{float(err.max()):.2e}", f"{float(err.mean()):.2e}",
                               f"{float(z_exact.std()):.2e}"])
        work = FileWork(CropTransform(tiny.preprocess.__class__(224, tiny.preprocess.mean, tiny.preprocess.std), 1),
                        uint8=True)
        started = time.perf_counter()
        for path in made:
            work(0, path)
        cpu_rate = len(made) / (time.perf_counter() - started)
        datas = [torchvision.io.read_file(p) for p in made]
        torchvision.io.decode_jpeg(datas[:2], device=device)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for i in range(0, len(datas), 32):
            torchvision.io.decode_jpeg(datas[i:i + 32], device=device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        gpu_rate = len(made) / (time.perf_counter() - started)
    print_table("crop pixels, torchvision decode_jpeg against the exact path (224 px centre crops)",
                ["detector's crops", "files", "max |dpixel|", "mean |dpixel|", "values that differ"], rows)
    print_table("logits of the same crops", ["detector", "files", "max |dlogit|", "mean |dlogit|", "logit std"],
                logit_rows)
    print_table(f"decode of {len(made)} photo-like 6.7 MP JPEGs (images/s)",
                ["path", "images/s", "vs exact CPU path"],
                [["exact: region decode, one CPU process", cpu_rate, "1.00x"],
                 [f"torchvision decode_jpeg on {device}, batches of 32 (whole images)", gpu_rate,
                  f"{gpu_rate / cpu_rate:.2f}x"]])


if __name__ == "__main__":
    main()
