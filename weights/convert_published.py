"""Convert the published RINE and UnivFD weights into i2pscan detector files (reproducibly).

    python weights/convert_published.py [THIRD_PARTY_DIR] [--out weights/]

THIRD_PARTY_DIR (default ../shared/third_party beside the repository) holds the authors' releases:
rine/model_2class_trainable.pth and univfd/fc_weights.pth. Their sha256 is checked first; they
are PyTorch pickles, read here (and only here) with ``torch.load(weights_only=True)``. Nothing at
scan time unpickles: the outputs are safetensors detector files, ``rine-2class.safetensors`` and
``univfd.safetensors``, whose tensors keep the authors' names (under ``rine.`` / ``univfd.``).
The same inputs give byte-identical outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import open_clip
import torch

from i2pscan import __version__
from i2pscan.model import tensorfile
from i2pscan.model.shipped import CARDS
from i2pscan.model.published import build_head

CREATED = "2026-11-26"  # fixed, so that the conversion is byte-for-byte reproducible
BACKBONE = {"name": "ViT-L-14", "pretrained": "openai", "pretrained_path": None, "sha256": None,
            "num_blocks": 24, "width": 1024, "model_config": {"quick_gelu": True}}
PREPROCESSING = {"crop_size": 224, "mean": list(open_clip.OPENAI_DATASET_MEAN),
                 "std": list(open_clip.OPENAI_DATASET_STD), "crop_mode": "torchvision"}
SOURCES = {
    "rine-2class": ("rine", Path("rine/model_2class_trainable.pth"),
                    {"blocks": 24, "in_dim": 1024, "proj_dim": 128, "nproj": 4}),
    "univfd": ("univfd", Path("univfd/fc_weights.pth"), {"in_dim": 768}),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def convert(name: str, third_party: Path, out_dir: Path) -> Path:
    architecture, relative, config = SOURCES[name]
    card = CARDS[name]
    source = third_party / relative
    digest = sha256(source)
    if digest != card["original_sha256"]:
        raise SystemExit(f"{source}: sha256 {digest}, expected {card['original_sha256']}; not the authors' file")
    state = torch.load(source, map_location="cpu", weights_only=True)
    head = build_head(architecture, config)
    if architecture == "univfd":
        state = {f"fc.{k}": v for k, v in state.items()}
    head.load_state_dict(state, strict=True)  # names and shapes exactly as the authors' modules
    tensors = {f"{architecture}.{k}": v.to(torch.float32).contiguous() for k, v in head.state_dict().items()}
    meta = {
        "i2pscan_version": __version__, "created": CREATED, "architecture": architecture,
        "backbone": BACKBONE, "preprocessing": PREPROCESSING, "head": {"config": config},
        "threshold": 0.5, "threshold_logit": 0.0, "temperature": 1.0,  # the authors flag at sigmoid(logit) > 0.5
        "published": {**card, "converted_by": "weights/convert_published.py"},
    }
    out = out_dir / f"{name}.safetensors"
    tensorfile.write(out, "detector", tensors, meta)
    return out


def main(argv=None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("third_party", nargs="?", type=Path, default=here.parent.parent / "shared" / "third_party")
    parser.add_argument("--out", type=Path, default=here)
    args = parser.parse_args(argv)
    for name in SOURCES:
        out = convert(name, args.third_party, args.out)
        print(f"{out}: {out.stat().st_size:,} bytes, sha256 {sha256(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
