"""Backbones: open_clip vision towers, their tap points, early exit, and where they run.

Blocks are numbered 1..L here and in every file i2pscan writes (block l is the output of the l-th
residual block); open_clip's 0-based indices appear only inside this module.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import open_clip
import torch
from open_clip.transformer import VisionTransformer

from i2pscan.errors import ConfigError, WeightsUnavailable, one_line
from i2pscan.model.device import resolve_device
from i2pscan.model.weights import (DEFAULT_BACKBONE, TINY_BACKBONES, cached_weights_sha256, default_pretrained,
                                   fetch_weights, model_config, weights_sha256)

VIEWS = ("cls", "cls+patchmean")
TUNABLE_MATRICES = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


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

    def ln2_class_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Tensor[B, L, D]: for every block, the class token at the output of its ``ln_2`` (the
        LayerNorm in front of the MLP), as RINE reads CLIP. Runs the whole (untruncated) tower."""
        if self._run_blocks != self.num_blocks:
            raise RuntimeError("ln2_class_tokens() needs the untruncated backbone")
        batch_first = getattr(self.visual.transformer, "batch_first", True)
        tokens: list[torch.Tensor] = []

        def keep(module, inputs, output):
            tokens.append(output[:, 0] if batch_first else output[0])

        hooks = [block.ln_2.register_forward_hook(keep) for block in self.blocks]
        try:
            self.visual(images)
        finally:
            for h in hooks:
                h.remove()
        return torch.stack(tokens, dim=1)

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

    def tunable_parameters(self, last_block: int) -> dict[str, torch.nn.Parameter]:
        """The attention and MLP weight matrices of blocks 1..last_block, by name under ``visual``:
        what a detector may tune. Embeddings, norms and biases stay frozen (DESIGN §1.2 step 3)."""
        params = dict(self.visual.named_parameters())
        names = [f"transformer.resblocks.{i}.{m}" for i in range(last_block) for m in TUNABLE_MATRICES]
        missing = [n for n in names if n not in params]
        if missing:
            raise ConfigError(f"backbone {self.name} lacks the expected weight {missing[0]}; "
                              f"i2pscan supports open_clip ViTs with standard residual blocks")
        return {n: params[n] for n in names}

    @property
    def run_blocks(self) -> int:
        """How many blocks a forward pass runs now (``num_blocks`` until truncated)."""
        return self._run_blocks


def load_backbone(name: str = DEFAULT_BACKBONE, pretrained: str | None = "default",
                  device: str | torch.device = "cpu", quick_gelu: bool | None = None,
                  want_hash: bool = True) -> Backbone:
    """Build an open_clip vision tower (only it: no text tower) by model name and load its weights.

    ``pretrained``: an open_clip tag (downloaded once and cached by open_clip; offline without a
    cache this fails within seconds), a local weights file (.safetensors, or the .bin/.pt files
    open_clip reads), ``"default"`` for the backbone's usual weights (the shipped file for tiny
    backbones, ``openai`` otherwise), or ``None`` for a random initialisation (benchmarks; its
    identity is the hash of those random weights).
    ``quick_gelu``: force the activation (detector files record it); ``None`` follows the tag.
    ``want_hash``: compute the sha256 of the weights (cached by file path, size and mtime);
    without it ``sha256`` is ``None`` (published detectors record no hash).
    Raises :class:`I2PError` for an unknown name, a missing file or weights that cannot be fetched.
    """
    if name not in TINY_BACKBONES and name not in open_clip.list_models():
        raise ConfigError(f"unknown backbone {name!r}; tiny ones: {', '.join(TINY_BACKBONES)}; "
                          f"others: any open_clip ViT name (e.g. ViT-L-14, ViT-B-16)")
    if pretrained == "default":
        pretrained = default_pretrained(name)
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) if pretrained else {}
    is_file = bool(pretrained) and os.path.isfile(pretrained)
    quick_gelu = resolve_quick_gelu(name, pretrained, quick_gelu)
    if pretrained and not is_file and not tag_cfg:
        if os.path.sep in pretrained or pretrained.endswith((".safetensors", ".bin", ".pt", ".pth")):
            raise WeightsUnavailable(f"weights file not found: {pretrained}")
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise WeightsUnavailable(f"{pretrained!r} is neither a weights file nor a pretrained tag of {name} (tags: {tags})")
    weights_file = pretrained if is_file else fetch_weights(name, pretrained) if pretrained else None
    config = model_config(name) or {}
    if weights_file:  # built on the meta device, then the file's tensors become its parameters: one copy
        visual = _vision_tower(name, config, quick_gelu, on_meta=True)
        try:
            loaded = _load_vision_weights(visual, weights_file, name)
        except Exception as exc:  # a damaged file raises whatever its reader raises
            raise WeightsUnavailable(f"cannot load weights {weights_file} into {name}: {one_line(exc, 200)}") from exc
        if loaded is not None:
            visual = loaded
        if any(t.is_meta for t in [*visual.parameters(), *visual.buffers()]):
            raise WeightsUnavailable(f"cannot load weights {weights_file} into {name}: some tensors are missing")
    else:
        visual = _vision_tower(name, config, quick_gelu)
    visual.eval()
    for p in visual.parameters():
        p.requires_grad_(False)
    config = {**config, "quick_gelu": quick_gelu}
    pp = {**config.get("preprocess_cfg", {}), **{k: tag_cfg[k] for k in ("mean", "std") if k in tag_cfg}}
    mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pp.get("std", open_clip.OPENAI_DATASET_STD))
    image_size = visual.image_size[0] if isinstance(visual.image_size, (tuple, list)) else int(visual.image_size)
    sha256 = None
    if want_hash:
        sha256 = cached_weights_sha256(weights_file, name, visual) if weights_file else weights_sha256(visual)
    backbone = Backbone(visual=visual, name=name, pretrained=pretrained, model_config=config, sha256=sha256,
                        num_blocks=len(visual.transformer.resblocks), mean=mean, std=std, image_size=image_size)
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
    config_quick = bool((model_config(name) or {}).get("quick_gelu", False))
    if quick_gelu is not None:
        if config_quick and not quick_gelu:
            raise ConfigError(f"{name} is a QuickGELU model: drop -quickgelu from the name to use GELU")
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
            raise WeightsUnavailable(f"cannot read the activation from {beside}: {one_line(exc, 120)}") from exc
    known = {tag: bool(open_clip.get_pretrained_cfg(name, tag).get("quick_gelu", False))
             for tag in open_clip.list_pretrained_tags_by_model(name)}
    if len(set(known.values())) <= 1:
        return next(iter(known.values()), False)
    quick = next(t for t, q in known.items() if q)
    plain = next(t for t, q in known.items() if not q)
    raise ConfigError(f"cannot tell which activation {os.path.basename(pretrained)} was trained with ({name} weights "
                      f"differ: {quick} uses QuickGELU, {plain} GELU): pass `backbone` {name}-quickgelu for "
                      f"OpenAI-style weights or `no_quick_gelu` for GELU, or put its open_clip_config.json beside it")


def _vision_tower(name: str, config: dict, quick_gelu: bool, on_meta: bool = False) -> VisionTransformer:
    """The vision tower alone, built from the model config (open_clip's create_model would build
    and initialise the text tower too: for ViT-L-14 that is 120 M parameters never used)."""
    from open_clip.model import _build_vision_tower

    with warnings.catch_warnings(), torch.device("meta" if on_meta else "cpu"):
        warnings.simplefilter("ignore")
        visual = _build_vision_tower(config["embed_dim"], config["vision_cfg"], quick_gelu=quick_gelu)
    if not isinstance(visual, VisionTransformer):
        raise ConfigError(f"backbone {name!r} is not an open_clip VisionTransformer; i2pscan needs a ViT with a class token")
    return visual


def _load_vision_weights(visual: VisionTransformer, path: str, name: str) -> VisionTransformer | None:
    """Load the ``visual.*`` tensors of an open_clip checkpoint into ``visual`` (strictly), reading
    only those from a safetensors file. A checkpoint in another layout (OpenAI's TorchScript,
    timm) goes through open_clip's own converter on a whole model; then that model's tower is
    returned."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            keys = [k for k in f.keys() if k.startswith("visual.")]
            state = {k[len("visual."):]: f.get_tensor(k) for k in keys}
    else:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
            checkpoint = checkpoint["state_dict"]
        if not isinstance(checkpoint, dict):
            raise ValueError("not a state dict")
        state = {}
        for k, v in checkpoint.items():
            k = k[len("module."):] if k.startswith("module.") else k
            if k.startswith("visual."):
                state[k[len("visual."):]] = v
    if not state:  # another layout: let open_clip convert it (builds the text tower too; rarely taken)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            previous = logging.root.manager.disable
            logging.disable(logging.ERROR)
            try:
                quick = any(type(m).__name__ == "QuickGELU" for m in visual.modules())
                model = open_clip.create_model(name, pretrained=path, force_quick_gelu=quick, device="cpu",
                                               require_pretrained=True)
            finally:
                logging.disable(previous)  # the caller's setting, not NOTSET
        return model.visual
    visual.load_state_dict({k: v.to(torch.float32) if v.is_floating_point() else v for k, v in state.items()},
                           strict=True, assign=True)
    return None


def block_of(name: str) -> int:
    """1-based block number of a tunable parameter name (``transformer.resblocks.<i>.…``)."""
    return int(name.split(".")[2]) + 1
