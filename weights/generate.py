"""Regenerate the shipped tiny backbone weights: ``python weights/generate.py``.

Each file is open_clip's own initialisation of the config beside it, drawn with a fixed seed on
the CPU, saved as safetensors. The text tower is tiny (its vocabulary is cut to 1024 tokens): it is
never run, it only keeps the file loadable by open_clip as a whole CLIP model.
"""

import json
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
SEEDS = {"i2p-tiny": 20260401, "i2p-tiny-deep": 20260402}


def build(name: str) -> dict[str, torch.Tensor]:
    """The state dict of a tiny backbone, drawn from its fixed seed: the CLIP model that
    ``open_clip.create_model`` would build from the config, without registering the config in
    open_clip's process-wide list."""
    config = json.loads((HERE / f"{name}.json").read_text("utf-8"))
    torch.manual_seed(SEEDS[name])
    model = open_clip.model.CLIP(**config)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def generate(name: str) -> Path:
    state = build(name)
    out = HERE / f"{name}.safetensors"
    save_file(state, str(out), metadata={"generator": "i2pscan weights/generate.py", "seed": str(SEEDS[name])})
    return out


if __name__ == "__main__":
    for name in SEEDS:
        path = generate(name)
        print(f"{path.name}: {path.stat().st_size:,} bytes")
