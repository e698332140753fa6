"""Sparse fine-tuning cost: time per step, peak memory and detector size, i2p vs head-only vs full.

    python benchmarks/bench_finetune.py [--steps 3] [--rho 0.01] [--batch-size 2]

ViT-L-14 with random weights (costs do not depend on the weights), truncated after block 12 and
trained on random 224x224 images, the way i2pscan/train/finetune.py trains (``sparse.attach``), taps of
S = {4, 8, 12} into a ``DetectorHead``, BCE loss, backward, one AdamW step over the delta values
and the head.

* ``i2p`` (rho, q = 0.5) gets its mask from ``build_mask`` fed seeded random sensitivity and
  saliency scores: the step cost depends only on how many entries are tuned, not on which. The
  tuned blocks' attention and MLP linears are swapped for i2pscan.sparse modules, whose custom
  autograd function adds x Sᵀ (CSR sparse-dense products) to the frozen x W0ᵀ and returns the
  gradient of the tuned entries only: no dense W0 + delta, no dense dL/dW.
* ``head-only`` tunes no backbone weight; ``full`` tunes every eligible weight (dense deltas:
  parametrizations W0 + delta; the step here does not enter ``parametrize.cached()``, as the
  trainer's does, so MultiheadAttention recomputes in_proj_weight at each of its reads).

Each strategy runs in a fresh child process (this script with ``--one STRATEGY``) that loads the
backbone, truncates it, frees what it dropped (gc, malloc_trim), resets its peak-RSS mark
(/proc/self/clear_refs), then runs one warm-up step and times ``--steps`` more. It reports:

* s/step, wall-clock mean and min over the timed steps, and CPU seconds per step (all threads):
  the min and CPU columns are the least disturbed by other load on the machine, whose load
  average is printed before and after;
* peak RSS while training, and that peak over the RSS of the loaded, truncated backbone (the
  baseline row, which includes the interpreter and libraries, ~0.75 GiB here);
* trainable backbone weights, and optimiser state bytes (every tensor in ``optimizer.state``,
  head included: the head-only row is the head's Adam state).

Ratios are against ``full``, measured in the same run. Last, the parent writes a detector file
(rho's deltas, random values, and a head, all metadata keys filled) and compares its bytes with
the fp32 visual tower's, whole and cut after block 12; the file is deleted.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

from _table import machine, print_table
from i2pscan import __version__
from i2pscan.model.backbone import load_backbone
from i2pscan.model.detector_file import Delta, write_detector
from i2pscan.model.sparse import attach
from i2pscan.train.finetune import FinetuneConfig
from i2pscan.model.head import DetectorHead, HeadConfig
from i2pscan.train.sensitivity import build_mask

BACKBONE = "ViT-L-14"
LAST_BLOCK = 12
LAYERS = [4, 8, 12]
STRATEGIES = ("i2p", "head-only", "full")
MIB = 2**20


def rss_kib(field: str) -> int:
    """VmRSS / VmHWM of this process, KiB (falls back to ru_maxrss)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def setup(strategy: str, rho: float, seed: int = 0):
    """The backbone (untruncated), its eligible weights up to LAST_BLOCK, a head and the mask."""
    torch.manual_seed(seed)
    backbone = load_backbone(BACKBONE, None)
    params = backbone.tunable_parameters(LAST_BLOCK)
    importance = [1.0 / backbone.num_blocks] * backbone.num_blocks
    head = DetectorHead(HeadConfig.for_layers(LAYERS, importance, backbone.width))
    sensitivity = saliency = None
    if strategy == "i2p":
        g = torch.Generator().manual_seed(seed)
        sensitivity, saliency = ({n: torch.rand(p.shape, generator=g) for n, p in params.items()} for _ in range(2))
    mask = build_mask(strategy, params, rho=rho, q=0.5, sensitivity=sensitivity, saliency=saliency, seed=seed)
    return backbone, params, head, mask, importance


def one(strategy: str, args) -> dict:
    """Child process: train ``strategy`` for warm-up + args.steps steps; returns its measurements."""
    backbone, params, head, mask, _ = setup(strategy, args.rho)
    backbone.truncate(LAST_BLOCK)
    images = torch.randn(args.batch_size, 3, backbone.image_size, backbone.image_size)
    labels = (torch.arange(args.batch_size) % 2).float()
    gc.collect()
    try:  # hand freed heap (text tower, dropped blocks, scores) back to the OS: RSS = what is live
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:  # peak RSS from here on (Linux >= 4.0); else the peak includes loading
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    loaded = rss_kib("VmRSS")
    deltas = attach(backbone, params, mask.indices)
    c = FinetuneConfig()
    optimizer = torch.optim.AdamW([
        {"params": [d.values for d in deltas.values()], "lr": c.lr_backbone, "weight_decay": c.weight_decay},
        {"params": list(head.parameters()), "lr": c.lr_head, "weight_decay": c.head_weight_decay},
    ])
    head.train()

    def step():
        logits, _ = head(backbone.taps(images, LAYERS, "cls"))
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (also allocates the Adam state)
    times = []
    cpu = time.process_time()
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    cpu = (time.process_time() - cpu) / args.steps
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if torch.is_tensor(t))
    return {"strategy": strategy, "s_per_step": sum(times) / len(times), "min_s": min(times), "cpu_s": cpu,
            "loaded_kib": loaded, "peak_kib": rss_kib("VmHWM"),
            "trainable": sum(d.values.numel() for d in deltas.values()), "eligible": mask.eligible,
            "optimizer_bytes": state}


def run_child(strategy: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--one", strategy, "--steps", str(args.steps),
           "--rho", str(args.rho), "--batch-size", str(args.batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{strategy} child failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def detector_size(rho: float) -> tuple[int, int, int]:
    """(detector file bytes, fp32 bytes of the whole visual tower, of the tower cut at LAST_BLOCK)."""
    backbone, params, head, mask, importance = setup("i2p", rho)
    tower = sum(v.numel() * 4 for v in backbone.visual.state_dict().values())
    backbone.truncate(LAST_BLOCK)
    cut = sum(v.numel() * 4 for v in backbone.visual.state_dict().values())
    deltas = {n: Delta(idx, torch.randn(len(idx)) * 1e-4) for n, idx in mask.indices.items() if len(idx)}
    meta = {
        "i2pscan_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "backbone": {**backbone.identity(), "pretrained_path": None},
        "preprocessing": backbone.preprocessing(),
        "view": "cls",
        "last_block": LAST_BLOCK,
        "head": {"config": head.config.to_dict(), "layers": LAYERS,
                 "gate": [float(w) for w in head.layer_weights().detach()]},
        "threshold": 0.5, "threshold_logit": 0.0, "temperature": 1.0, "target_fpr": 0.05,
        "mask": {"strategy": mask.strategy, "rho": mask.rho, "q": mask.q, "trainable": mask.trainable,
                 "eligible": mask.eligible,
                 "per_block": {str(b): {"trainable": t, "eligible": e} for b, (t, e) in mask.per_block().items()},
                 "tensors": sorted(deltas)},
        "training": {"config": FinetuneConfig(rho=rho).to_dict(), "steps": 0, "note": "benchmark, untrained"},
        "calibration": {"critical_layers": LAYERS, "fingerprint": None, "importance": importance},
    }
    fd, path = tempfile.mkstemp(suffix=".safetensors")
    os.close(fd)
    try:
        write_detector(path, meta, head, deltas)
        size = os.path.getsize(path)
    finally:
        os.remove(path)
    return size, tower, cut


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--rho", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--one", choices=STRATEGIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args)))
        return

    print(f"machine: {machine()}; device cpu")
    print(f"{BACKBONE} (random weights) cut after block {LAST_BLOCK}, taps {LAYERS}, batch {args.batch_size} "
          f"of 224x224, rho {args.rho}, q 0.5; {args.steps} timed steps after 1 warm-up, one process per strategy")
    load = os.getloadavg()[0]
    res = {s: run_child(s, args) for s in STRATEGIES}
    full = res["full"]
    loaded = min(r["loaded_kib"] for r in res.values())
    rows = [[s, r["s_per_step"], f"{r['s_per_step'] / full['s_per_step']:.2f}x", r["min_s"],
             f"{r['min_s'] / full['min_s']:.2f}x", r["cpu_s"], f"{r['cpu_s'] / full['cpu_s']:.2f}x",
             r["trainable"], f"{r['trainable'] / r['eligible']:.4f}"] for s, r in res.items()]
    print_table("time per training step (forward taps, head, BCE, backward, AdamW), seconds",
                ["strategy", "mean", "vs full", "min", "vs full", "CPU s", "vs full", "trainable backbone weights",
                 "of eligible"], rows)
    print("load average (1 min) before/after the children: {:.2f} / {:.2f}".format(load, os.getloadavg()[0]))

    def over(r):
        return r["peak_kib"] - r["loaded_kib"]

    rows = [["backbone only (loaded, cut)", loaded / 1024, "-", "-", "-", "-", "-"]]
    for s, r in res.items():
        rows.append([s, r["peak_kib"] / 1024, f"{r['peak_kib'] / full['peak_kib']:.2f}x", over(r) / 1024,
                     f"{over(r) / over(full):.2f}x", r["optimizer_bytes"] / MIB,
                     f"{r['optimizer_bytes'] / full['optimizer_bytes']:.4f}x"])
    print_table("memory (MiB): peak RSS of a fresh process per strategy while training",
                ["strategy", "peak RSS", "vs full", "over backbone", "vs full", "optimiser state", "vs full"], rows)

    size, tower, cut = detector_size(args.rho)
    print_table(f"detector file, {BACKBONE}, rho {args.rho}, deltas of blocks 1..{LAST_BLOCK} + head",
                ["what", "bytes", "MiB", "detector / this"],
                [["detector file", size, size / MIB, "1.00x"],
                 ["visual tower weights (fp32)", tower, tower / MIB, f"{size / tower:.4f}x"],
                 [f"tower cut after block {LAST_BLOCK} (fp32)", cut, cut / MIB, f"{size / cut:.4f}x"]])


if __name__ == "__main__":
    main()
