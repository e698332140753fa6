"""Start-up of i2pscan as a shell script sees it: wall time of fresh processes.

    python benchmarks/bench_startup.py [--skip-vitl] [--repeat N]

First table: the commands that need no model (``--help``, ``info``, ``detectors``, ``report``,
``scan --metadata-only`` of one file), best of N runs each, and whether the process imported torch
or open_clip (they should not).

Second table, `i2pscan scan one.png` with a model:

Each row runs the real command (a fresh process: imports, detector checks, backbone build and
weights, one image, report) twice in a row with the same backbone-hash cache folder: the first
call finds the cache empty, the second finds what the first wrote.

* ``tiny i2p``: a detector on the shipped i2p-tiny backbone;
* ``ViT-L-14 i2p``: an i2p detector whose backbone is a local 1.2 GB ViT-L-14 file (random
  weights): the first call hashes the file's weights, the second reads the hash from the cache;
* ``rine-2class`` / ``univfd``: the shipped detectors on the same file with --pretrained (they
  record no backbone hash, so no call hashes).

Ratios are second / first call, and each row against the tiny detector's second call.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from _table import machine, print_table


def make_detector(backbone_name: str, weights: str | None, out: str) -> None:
    """An i2p detector with a random head and no delta on the given backbone (timing only)."""
    from i2pscan.model.backbone import load_backbone
    from i2pscan.model.detector_file import write_detector
    from i2pscan.model.head import DetectorHead, HeadConfig

    bb = load_backbone(backbone_name, weights if weights else "default")
    last = min(4, bb.num_blocks)
    config = HeadConfig.for_layers([last], [1.0] * bb.num_blocks, bb.width)
    meta = {"i2pscan_version": "bench", "created": "bench", "backbone": bb.identity(), "preprocessing": bb.preprocessing(),
            "view": "cls", "last_block": last,
            "head": {"config": config.to_dict(), "layers": [last], "gate": [1.0]},
            "threshold": 0.5, "threshold_logit": 0.0, "temperature": 1.0, "target_fpr": 0.05,
            "mask": {"strategy": "head-only", "rho": 0.01, "q": 0.5, "trainable": 0, "eligible": 0, "per_block": {},
                     "tensors": []},
            "training": {"counts": {}, "fingerprint": "bench", "best_epoch": 0, "epochs": 0},
            "calibration": {"critical_layers": [last], "fingerprint": None, "importance": [1.0 / bb.num_blocks] * bb.num_blocks}}
    torch.manual_seed(0)
    write_detector(out, meta, DetectorHead(config), {})


def random_vitl(path: str) -> None:
    import open_clip
    from open_clip.model import _build_vision_tower
    from safetensors.torch import save_file

    cfg = open_clip.get_model_config("ViT-L-14")
    torch.manual_seed(0)
    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], quick_gelu=True)
    save_file({f"visual.{k}": v.contiguous() for k, v in visual.state_dict().items()}, path)


def light(argv: list[str], env: dict, repeat: int) -> tuple[float, str]:
    """Best wall time of ``i2pscan ARGV`` over ``repeat`` runs, and the heavy modules it imported."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "i2pscan", *argv], env=env, capture_output=True)
        best = min(best, time.perf_counter() - started)
    probe = ("import sys, runpy; sys.argv = ['i2pscan'] + sys.argv[1:]\ntry:\n runpy.run_module('i2pscan', "
             "run_name='__main__')\nexcept SystemExit:\n pass\nprint(','.join(m for m in ('torch', 'open_clip') "
             "if m in sys.modules) or 'neither', file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", probe, *argv], env=env, capture_output=True, text=True)
    return best, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "?"


def timed(args: list[str], env: dict) -> float:
    started = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "i2pscan", "scan", *args, "-q", "--workers", "0"], env=env,
                       capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if r.returncode not in (0, 1):
        raise SystemExit(f"scan {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-vitl", action="store_true", help="Only the tiny detector (no 1.2 GB file).")
    parser.add_argument("--repeat", type=int, default=5, help="Runs per command without a model (best is kept).")
    args = parser.parse_args()
    from i2pscan.io.pixels import save_image

    with tempfile.TemporaryDirectory() as tmp:
        image = os.path.join(tmp, "one.png")
        save_image(np.random.default_rng(0).integers(0, 255, (512, 384, 3), dtype=np.uint8), image)
        env = {**os.environ, "XDG_CACHE_HOME": os.path.join(tmp, "setup-cache")}
        os.environ.update(env)
        report = os.path.join(tmp, "m.parquet")
        subprocess.run([sys.executable, "-m", "i2pscan", "scan", image, "--metadata-only", "-q", "-o", report], env=env,
                       capture_output=True)
        light_rows = []
        for label, argv in (("i2pscan --help", ["--help"]), ("info rine-2class", ["info", "rine-2class"]),
                            ("detectors", ["detectors"]), ("report (summary)", ["report", report]),
                            ("scan --metadata-only, one file", ["scan", image, "--metadata-only", "-q"])):
            seconds, heavy = light(argv, env, args.repeat)
            light_rows.append([label, seconds, heavy])
        make_detector("i2p-tiny", None, os.path.join(tmp, "tiny.safetensors"))
        cases = [("tiny i2p", ["-d", os.path.join(tmp, "tiny.safetensors")])]
        if not args.skip_vitl:
            vitl = os.path.join(tmp, "vitl.safetensors")
            random_vitl(vitl)
            make_detector("ViT-L-14-quickgelu", vitl, os.path.join(tmp, "vitl-i2p.safetensors"))
            cases += [("ViT-L-14 i2p (local file)", ["-d", os.path.join(tmp, "vitl-i2p.safetensors")]),
                      ("rine-2class", ["-d", "rine-2class", "--pretrained", vitl]),
                      ("univfd", ["-d", "univfd", "--pretrained", vitl])]
        rows = []
        base = None
        for name, extra in cases:
            run_env = {**os.environ, "XDG_CACHE_HOME": os.path.join(tmp, f"cache-{len(rows)}")}
            first = timed([image, *extra], run_env)
            second = timed([image, *extra], run_env)
            base = base or second
            rows.append([name, first, second, f"{second / first:.2f}x", f"{second / base:.1f}x"])
    print(f"machine: {machine()}")
    print_table(f"commands without a model, best of {args.repeat} fresh processes (s)",
                ["command", "seconds", "torch / open_clip imported"], light_rows)
    print_table("i2pscan scan one.png, wall time of a fresh process (s)",
                ["detector", "first call", "second call", "second/first", "second vs tiny"], rows)


if __name__ == "__main__":
    main()
