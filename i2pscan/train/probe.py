"""A head that is not an accident of initialisation: the convex logistic probe that task saliency
is measured against (DESIGN §1.2 step 2).

A warmed-up MLP head depends on its random initialisation, and so did every saliency measured
through it (masks of two head initialisations overlapped 0.53). The probe is an L2-regularised
logistic regression on the standardised, concatenated class tokens of the head's layers: a convex
problem with one solution, fitted on features of the training augmentation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class LinearProbe(nn.Module):
    """logit = w · ((concat_b taps[b] - mean) / std) + bias; returns (logits, None) like a head."""

    def __init__(self, layers: tuple[int, ...], mean: torch.Tensor, std: torch.Tensor, weight: torch.Tensor,
                 bias: float):
        super().__init__()
        self.layers = tuple(layers)
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", std.float())
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", torch.tensor(float(bias)))

    def forward(self, taps: dict[int, torch.Tensor]) -> tuple[torch.Tensor, None]:
        x = torch.cat([taps[b].float() for b in self.layers], dim=1)
        return ((x - self.mean) / self.std) @ self.weight + self.bias, None


def fit_probe(features: dict[int, torch.Tensor], labels: np.ndarray, layers, c: float = 1.0,
              device: torch.device | str = "cpu") -> LinearProbe:
    """The logistic probe over ``layers`` of ``features`` ({block: [n, D]}), fitted by lbfgs to
    its unique optimum (deterministic: no seed enters)."""
    from sklearn.linear_model import LogisticRegression

    layers = tuple(layers)
    x = torch.cat([features[b].double() for b in layers], dim=1)
    mean, std = x.mean(0), x.std(0)
    std = torch.where(std > 1e-6 * mean.abs().clamp(min=1.0), std, torch.ones_like(std))  # constant: left as is
    z = ((x - mean) / std).numpy()
    y = np.asarray(labels)
    model = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(z, y)
    return LinearProbe(layers, mean, std, torch.as_tensor(model.coef_[0]), float(model.intercept_[0])).to(device)
