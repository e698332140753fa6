"""Backbones: open_clip vision towers, their tap points, early exit, and where they run.

Blocks are numbered 1..L here and in every file i2pscan writes (block l is the output of the l-th
residual block); open_clip's 0-based indices appear only inside this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

import open_clip
import torch
from open_clip.transformer import VisionTransformer

from .errors import I2PError, one_line

DEFAULT_BACKBONE = "ViT-L-14"
DEFAULT_PRETRAINED = "openai"
TINY_BACKBONES = ("i2p-tiny", "i2p-tiny-deep")
VIEWS = ("cls", "cls+patchmean")


def _register_tiny_configs() -> None:
    configs = resources.files("i2pscan.weights")
    with resources.as_file(configs) as folder:
        if not any(str(p) == str(folder) for p in open_clip.factory._MODEL_CONFIG_PATHS):
            open_clip.add_model_config(folder)


_register_tiny_configs()


def tiny_weights_path(name: str) -> Path:
    """The shipped safetensors file of a tiny backbone."""
    with resources.as_file(resources.files("i2pscan.weights") / f"{name}.safetensors") as path:
        return Path(path)


def default_pretrained(name: str) -> str:
    """The weights a backbone name gets when ``--pretrained`` is not given."""
    if name in TINY_BACKBONES:
        return str(tiny_weights_path(name))
    tags = open_clip.list_pretrained_tags_by_model(name)
    if DEFAULT_PRETRAINED in tags:
        return DEFAULT_PRETRAINED
    if tags:
        return tags[0]
    raise I2PError(f"backbone {name!r} has no known pretrained weights; pass --pretrained PATH")


@dataclass
class Backbone:
    """An open_clip vision tower with taps at the output of every residual block.

    ``identity()`` is what detector and calibration files record, so that loading them can
    rebuild exactly this model and check that its weights are the same.
    """

    visual: VisionTransformer
    name: str
    pretrained: str | None
    model_config: dict
    sha256: str
    num_blocks: int  # blocks in the pretrained tower, before any truncation
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    _run_blocks: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self._run_blocks = len(self.visual.transformer.resblocks)

    @property
    def width(self) -> int:
        return self.visual.transformer.width

    @property
    def device(self) -> torch.device:
        return self.visual.conv1.weight.device

    @property
    def blocks(self) -> torch.nn.ModuleList:
        return self.visual.transformer.resblocks

    def identity(self) -> dict:
        """Backbone identity as written into files: name, weights source and hash, config."""
        pretrained, local = self.pretrained, None
        if pretrained and os.path.isfile(pretrained):
            pretrained, local = os.path.basename(pretrained), os.path.abspath(pretrained)
        return {
            "name": self.name,
            "pretrained": pretrained,
            "pretrained_path": local,
            "sha256": self.sha256,
            "num_blocks": self.num_blocks,
            "width": self.width,
            "model_config": self.model_config,
        }

    def preprocessing(self) -> dict:
        return {"crop_size": self.image_size, "mean": list(self.mean), "std": list(self.std)}

    def taps(self, images: torch.Tensor, blocks: Sequence[int], view: str = "cls") -> dict[int, torch.Tensor]:
        """Features at the output of the given blocks (1-based), running no block past the last.

        Returns ``{block: Tensor[B, D]}`` (``cls``) or ``Tensor[B, 2D]`` (``cls+patchmean``: the
        class token, then the mean of the patch tokens).
        """
        wanted = sorted(set(int(b) for b in blocks))
        if not wanted:
            raise ValueError("no blocks to tap")
        if wanted[0] < 1 or wanted[-1] > self._run_blocks:
            raise ValueError(f"blocks must be in 1..{self._run_blocks}, got {wanted}")
        if view not in VIEWS:
            raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
        out = self.visual.forward_intermediates(
            images,
            indices=[b - 1 for b in wanted],
            stop_early=True,
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=True,
        )
        result = {}
        for block, patches, prefix in zip(wanted, out["image_intermediates"], out["image_intermediates_prefix"]):
            cls = prefix[:, 0]
            result[block] = cls if view == "cls" else torch.cat([cls, patches.mean(dim=1)], dim=1)
        return result

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The projected image embedding of the whole tower (CLIP's cross-modal space)."""
        if self._run_blocks != self.num_blocks or self.visual.proj is None:
            raise RuntimeError("embed() needs the untruncated backbone")
        return self.visual(images)

    def truncate(self, last_block: int) -> None:
        """Drop every block after ``last_block`` and the projection head: they never run again."""
        if not 1 <= last_block <= self._run_blocks:
            raise ValueError(f"last_block must be in 1..{self._run_blocks}")
        self.visual.prune_intermediate_layers(indices=[last_block - 1], prune_norm=True, prune_head=True)
        self._run_blocks = last_block

    @property
    def run_blocks(self) -> int:
        """How many blocks a forward pass runs now (``num_blocks`` until truncated)."""
        return self._run_blocks


def load_backbone(name: str = DEFAULT_BACKBONE, pretrained: str | None = "default",
                  device: str | torch.device = "cpu", quick_gelu: bool | None = None) -> Backbone:
    """Build an open_clip vision tower by model name and load its weights.

    ``pretrained``: an open_clip tag (downloaded and cached by open_clip), a local weights file
    (.safetensors, or the .bin/.pt files open_clip reads), ``"default"`` for the backbone's usual
    weights (the shipped file for tiny backbones, ``openai`` otherwise), or ``None`` for a random
    initialisation (benchmarks; its identity is the hash of those random weights).
    ``quick_gelu``: force the activation (detector files record it); ``None`` follows the tag.
    Raises :class:`I2PError` for an unknown name, a missing file or weights that cannot be fetched.
    """
    if name not in open_clip.list_models():
        raise I2PError(f"unknown backbone {name!r}; tiny ones: {', '.join(TINY_BACKBONES)}; "
                       f"others: any open_clip ViT name (e.g. ViT-L-14, ViT-B-16)")
    if pretrained == "default":
        pretrained = default_pretrained(name)
    is_file = bool(pretrained) and os.path.isfile(pretrained)
    quick_gelu = resolve_quick_gelu(name, pretrained, quick_gelu)
    if pretrained and not is_file and not open_clip.get_pretrained_cfg(name, pretrained):
        if os.path.sep in pretrained or pretrained.endswith((".safetensors", ".bin", ".pt", ".pth")):
            raise I2PError(f"weights file not found: {pretrained}")
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise I2PError(f"{pretrained!r} is neither a weights file nor a pretrained tag of {name} (tags: {tags})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            previous = logging.root.manager.disable
            logging.disable(logging.ERROR)  # open_clip logs to the root logger; our message says it better
            try:
                model = open_clip.create_model(name, pretrained=pretrained or None, force_quick_gelu=quick_gelu,
                                               device="cpu", require_pretrained=bool(pretrained))
            finally:
                logging.disable(previous)  # the caller's setting, not NOTSET
    except Exception as exc:  # open_clip raises RuntimeError; a damaged file raises whatever its reader raises
        if is_file:
            raise I2PError(f"cannot load weights {pretrained} into {name}: {one_line(exc, 200)}") from exc
        raise I2PError(
            f"cannot load the {name} weights {pretrained!r} ({one_line(exc, 160)}): if this machine is offline, "
            f"download them once on a machine with internet (they are cached), or pass --pretrained PATH"
        ) from exc
    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise I2PError(f"backbone {name!r} is not an open_clip VisionTransformer; i2pscan needs a ViT with a class token")
    visual.eval()
    for p in visual.parameters():
        p.requires_grad_(False)
    config = open_clip.get_model_config(name) or {}
    config = {**config, "quick_gelu": quick_gelu}
    pp = getattr(visual, "preprocess_cfg", None) or {}
    mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
    image_size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else int(visual.image_size)
    backbone = Backbone(
        visual=visual,
        name=name,
        pretrained=pretrained,
        model_config=config,
        sha256=weights_sha256(visual),
        num_blocks=len(visual.transformer.resblocks),
        mean=mean,
        std=std,
        image_size=image_size,
    )
    del model  # the text tower is never used
    visual.to(resolve_device(device) if isinstance(device, str) else device)
    return backbone


def resolve_quick_gelu(name: str, pretrained: str | None, quick_gelu: bool | None = None) -> bool:
    """Whether the tower uses QuickGELU (OpenAI CLIP's activation) instead of GELU.

    Precedence: ``quick_gelu`` when given (what a calibration or detector recorded, or the user's
    ``--quick-gelu/--no-quick-gelu``); a ``-quickgelu`` model name; for a weights file, the
    ``open_clip_config.json`` beside it; for a tag, open_clip's record of that tag; for a file of a
    model whose known weights all use one activation, that one. Otherwise (e.g. a ViT-L-14 file,
    whose ``openai`` weights use QuickGELU and ``laion2b_*`` ones GELU) it refuses to guess: a
    wrong guess gives a model that runs but is silently not the one the weights were trained in.
    """
    config_quick = bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))
    if quick_gelu is not None:
        if config_quick and not quick_gelu:
            raise I2PError(f"{name} is a QuickGELU model: drop -quickgelu from the name to use GELU")
        return bool(quick_gelu)
    if config_quick or not pretrained:
        return config_quick
    if not os.path.isfile(pretrained):
        return bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))
    beside = os.path.join(os.path.dirname(os.path.abspath(pretrained)), "open_clip_config.json")
    if os.path.isfile(beside):
        try:
            with open(beside) as fh:
                model_cfg = json.load(fh)["model_cfg"]
            return bool(model_cfg.get("quick_gelu", False))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise I2PError(f"cannot read the activation from {beside}: {one_line(exc, 120)}") from exc
    known = {tag: bool(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False))
             for tag in open_clip.list_pretrained_tags_by_model(name)}
    if len(set(known.values())) <= 1:
        return next(iter(known.values()), False)
    quick = next(t for t, q in known.items() if q)
    plain = next(t for t, q in known.items() if not q)
    raise I2PError(f"cannot tell which activation {os.path.basename(pretrained)} was trained with ({name} weights "
                   f"differ: {quick} uses QuickGELU, {plain} GELU): pass --backbone {name}-quickgelu for "
                   f"OpenAI-style weights or --no-quick-gelu for GELU, or put its open_clip_config.json beside it")


def recorded_weights(identity: dict, override: str | None = None) -> str:
    """Where to find the weights a calibration or detector file records (its ``backbone``
    identity): ``override`` if given, the shipped file of a tiny backbone, the open_clip tag, or
    the local file it was made from if that file is still there. Raises I2PError otherwise."""
    if override:
        return override
    name, tag = identity["name"], identity.get("pretrained")
    if name in TINY_BACKBONES and tag == tiny_weights_path(name).name:
        return str(tiny_weights_path(name))
    if tag and open_clip.get_pretrained_cfg(name, tag):
        return tag
    local = identity.get("pretrained_path")
    if local and os.path.isfile(local):
        return local
    if tag is None:
        raise I2PError(f"the {name} weights were a random initialisation; pass --pretrained PATH to a weights file")
    raise I2PError(f"the {name} weights were a local file ({tag}) that is not here; "
                   f"pass --pretrained PATH to that file")


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict: names, dtypes, shapes and bytes, in name order.

    The same weights give the same hash whether they came from .safetensors, .bin or a cache.
    """
    digest = hashlib.sha256()
    state = module.state_dict()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous()
        digest.update(json.dumps([key, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device is honoured or refused."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise I2PError("--device mps: Apple MPS is not available on this machine; use --device cpu or auto")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise I2PError(f"--device {spec}: CUDA is not available on this machine; use --device cpu or auto")
        if ":" in spec:
            index = spec.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise I2PError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(spec)
    raise I2PError(f"--device {spec}: expected auto, cpu, cuda, cuda:N or mps")


def default_batch_size(device: torch.device) -> int:
    return 128 if device.type == "cuda" else 32

