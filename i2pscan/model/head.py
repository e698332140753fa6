"""The detection head over tapped layers (DESIGN §1.2 step 5), in three kinds.

* ``i2p`` (default): per-layer LayerNorm on each tapped feature of the critical layers S, one
  projection MLP shared by the layers, a softmax gate over layers initialised from the
  calibration's importance (learnable), and a small MLP to one logit.
* ``rine``: RINE-style (Koutlis & Papadopoulos, ECCV 2024), retrained on the user's data: every
  block up to the last one, the same shared projection, a per-dimension softmax gate over the
  blocks (initialised from importance, the same for every dimension), dropout before the
  projection and before the classifier.
* ``univfd``: UnivFD-style (Ojha et al., CVPR 2023): LayerNorm and one linear layer on one layer
  (the last block's class token).

Each returns the logit and an embedding (for the supervised-contrastive term).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from i2pscan.errors import FileRefused

KINDS = ("i2p", "rine", "univfd")


@dataclass(frozen=True)
class HeadConfig:
    layers: tuple[int, ...]  # S, 1-based blocks
    in_dim: int
    proj_dim: int
    hidden_dim: int
    gate_init: tuple[float, ...]  # importance of each layer in S, summing to 1
    kind: str = "i2p"
    dropout: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"head kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError("head dropout must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadConfig":
        """From a detector file; files written before ``kind`` and ``dropout`` existed are i2p heads."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise FileRefused(f"head config has unknown key(s) {', '.join(sorted(unknown))}: "
                              f"written by a newer i2pscan?")
        return cls(tuple(d["layers"]), int(d["in_dim"]), int(d["proj_dim"]), int(d["hidden_dim"]),
                   tuple(float(x) for x in d["gate_init"]), str(d.get("kind", "i2p")), float(d.get("dropout", 0.0)))

    @classmethod
    def for_layers(cls, layers, importance, in_dim: int, proj_dim: int | None = None, kind: str = "i2p",
                   dropout: float = 0.0) -> "HeadConfig":
        """A head over ``layers`` whose gate starts at their calibration importance (renormalised)."""
        w = [max(float(importance[b - 1]), 1e-6) for b in layers]
        total = sum(w)
        proj = proj_dim or min(256, in_dim)
        return cls(tuple(layers), in_dim, proj, proj, tuple(x / total for x in w), kind, dropout)


class DetectorHead(nn.Module):
    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        c = config
        self.norms = nn.ModuleList(nn.LayerNorm(c.in_dim) for _ in c.layers)
        gate = torch.tensor([math.log(w) for w in c.gate_init], dtype=torch.float32)
        if c.kind == "univfd":
            self.classifier = nn.Linear(c.in_dim, 1)
            return
        self.drop = nn.Dropout(c.dropout)  # no tensors: the state dict of an i2p head is as it always was
        self.proj = nn.Sequential(nn.Linear(c.in_dim, c.proj_dim), nn.GELU(), nn.Linear(c.proj_dim, c.proj_dim))
        self.gate = nn.Parameter(gate[:, None].repeat(1, c.proj_dim) if c.kind == "rine" else gate)
        self.classifier = nn.Sequential(nn.LayerNorm(c.proj_dim), nn.Linear(c.proj_dim, c.hidden_dim), nn.GELU(),
                                        nn.Linear(c.hidden_dim, 1))

    @property
    def layers(self) -> tuple[int, ...]:
        """The blocks whose taps the head reads."""
        return self.config.layers

    def layer_weights(self) -> torch.Tensor:
        """[len(layers)]: each layer's share of the gate (for ``rine``, averaged over dimensions)."""
        if self.config.kind == "univfd":
            return torch.ones(1)
        w = torch.softmax(self.gate, dim=0)
        return w.mean(dim=1) if w.dim() == 2 else w

    def forward(self, taps: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """taps {block: [B, in_dim]} -> (logits [B], embedding [B, proj_dim] (``univfd``: [B, in_dim]))."""
        if self.config.kind == "univfd":
            z = self.norms[0](taps[self.config.layers[0]].float())
            return self.classifier(z).squeeze(-1), z
        z = torch.stack([self.proj(self.drop(norm(taps[b].float()))) for norm, b in zip(self.norms, self.config.layers)],
                        dim=1)
        weights = torch.softmax(self.gate, dim=0)
        embedding = ((weights[None, :, :] if weights.dim() == 2 else weights[None, :, None]) * z).sum(dim=1)
        return self.classifier(self.drop(embedding)).squeeze(-1), embedding
