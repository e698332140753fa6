"""Published detectors that ship with i2pscan (DESIGN §1.4): RINE and UnivFD.

Both sit on OpenAI's CLIP ViT-L/14 (open_clip ``ViT-L-14``, ``openai``, QuickGELU) and use their
authors' test-time preprocessing: a 224 px centre crop at native resolution (torchvision's
``CenterCrop``: offset rounded half to even, black padding), CLIP mean/std.

- RINE (Koutlis & Papadopoulos, ECCV 2024): for each of the 24 blocks, the class token at the
  output of the block's ``ln_2``; ``proj1`` on each; weights ``softmax(alpha)`` over the blocks,
  per dimension; the weighted sum; ``proj2``; ``head`` -> one logit. Dropout (inactive at test
  time) precedes each Linear of proj1/proj2 and ReLU follows it; the head is
  Linear-ReLU-Dropout-Linear-ReLU-Dropout-Linear. Tensor names are the authors'.
- UnivFD (Ojha, Li & Lee, CVPR 2023): one Linear layer on the projected image embedding
  (``encode_image``, not normalised).

The shipped files are made by ``weights/convert_published.py`` from the authors' releases;
model/shipped.py names and finds them.
"""

from __future__ import annotations

import torch
from torch import nn


class RineHead(nn.Module):
    """RINE's trainable part, with the authors' module layout and tensor names."""

    def __init__(self, blocks: int, in_dim: int, proj_dim: int, nproj: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1, blocks, proj_dim))
        self.proj1 = self._projection(in_dim, proj_dim, nproj)
        self.proj2 = self._projection(proj_dim, proj_dim, nproj)
        self.head = nn.Sequential(nn.Linear(proj_dim, proj_dim), nn.ReLU(), nn.Dropout(),
                                  nn.Linear(proj_dim, proj_dim), nn.ReLU(), nn.Dropout(),
                                  nn.Linear(proj_dim, 1))

    @staticmethod
    def _projection(in_dim: int, out_dim: int, n: int) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Dropout()]
        for i in range(n):
            layers += [nn.Linear(in_dim if i == 0 else out_dim, out_dim), nn.ReLU(), nn.Dropout()]
        return nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, blocks, in_dim] (ln_2 class tokens) -> logits [B]."""
        g = self.proj1(tokens.float())
        z = (torch.softmax(self.alpha, dim=1) * g).sum(dim=1)
        return self.head(self.proj2(z)).squeeze(-1)


class UnivFDHead(nn.Module):
    """UnivFD's linear probe on CLIP's projected image embedding."""

    def __init__(self, in_dim: int):
        super().__init__()
        self.fc = nn.Linear(in_dim, 1)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """embedding [B, in_dim] -> logits [B]."""
        return self.fc(embedding.float()).squeeze(-1)


def build_head(architecture: str, config: dict) -> nn.Module:
    if architecture == "rine":
        return RineHead(config["blocks"], config["in_dim"], config["proj_dim"], config["nproj"])
    if architecture == "univfd":
        return UnivFDHead(config["in_dim"])
    raise ValueError(f"not a published architecture: {architecture}")
