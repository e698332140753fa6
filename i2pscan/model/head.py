"""The detection head over the critical layers S (DESIGN §1.2 step 5).

Per-layer LayerNorm on each tapped feature, one projection MLP shared by the layers, a softmax
gate over layers initialised from the calibration's importance (learnable), and a small MLP to
one logit. The projected, gated embedding is also returned for the supervised-contrastive term.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from i2pscan.errors import FileRefused


@dataclass(frozen=True)
class HeadConfig:
    layers: tuple[int, ...]  # S, 1-based blocks
    in_dim: int
    proj_dim: int
    hidden_dim: int
    gate_init: tuple[float, ...]  # importance of each layer in S, summing to 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise FileRefused(f"head config has unknown key(s) {', '.join(sorted(unknown))}: "
                              f"written by a newer i2pscan?")
        return cls(tuple(d["layers"]), int(d["in_dim"]), int(d["proj_dim"]), int(d["hidden_dim"]),
                   tuple(float(x) for x in d["gate_init"]))

    @classmethod
    def for_layers(cls, layers, importance, in_dim: int, proj_dim: int | None = None) -> "HeadConfig":
        """A head over ``layers`` whose gate starts at their calibration importance (renormalised)."""
        w = [max(float(importance[b - 1]), 1e-6) for b in layers]
        total = sum(w)
        proj = proj_dim or min(256, in_dim)
        return cls(tuple(layers), in_dim, proj, proj, tuple(x / total for x in w))


class DetectorHead(nn.Module):
    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.norms = nn.ModuleList(nn.LayerNorm(config.in_dim) for _ in config.layers)
        self.proj = nn.Sequential(nn.Linear(config.in_dim, config.proj_dim), nn.GELU(),
                                  nn.Linear(config.proj_dim, config.proj_dim))
        self.gate = nn.Parameter(torch.tensor([math.log(w) for w in config.gate_init], dtype=torch.float32))
        self.classifier = nn.Sequential(nn.LayerNorm(config.proj_dim), nn.Linear(config.proj_dim, config.hidden_dim),
                                        nn.GELU(), nn.Linear(config.hidden_dim, 1))

    def layer_weights(self) -> torch.Tensor:
        return torch.softmax(self.gate, dim=0)

    def forward(self, taps: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """taps {block: [B, in_dim]} -> (logits [B], embedding [B, proj_dim])."""
        z = torch.stack([self.proj(norm(taps[b].float())) for norm, b in zip(self.norms, self.config.layers)], dim=1)
        embedding = (self.layer_weights()[None, :, None] * z).sum(dim=1)
        return self.classifier(embedding).squeeze(-1), embedding
