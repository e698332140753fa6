"""Multi-level feature importance: which backbone layers carry forgery cues (DESIGN §1.1)."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from i2pscan.version import __version__
from i2pscan.model import tensorfile
from i2pscan.model.backbone import VIEWS, Backbone
from i2pscan.train.samples import FileSet, LabelledSample
from i2pscan.errors import ConfigError, InputError
from i2pscan.train.features import extract

KIND = "calibration"
log = logging.getLogger("i2pscan")


@dataclass(frozen=True)
class CalibrateConfig:
    top_k: int = 3
    gamma: float = 4.0
    folds: int = 5
    probe_c: float = 1.0  # inverse L2 strength of the per-layer logistic probe
    view: str = "cls"
    seed: int = 0
    batch_size: int = 32
    workers: int = 0

    def __post_init__(self):
        if self.top_k < 1:
            raise ConfigError("`top_k` must be at least 1")
        if self.folds < 2:
            raise ConfigError("`folds` must be at least 2")
        if self.view not in VIEWS:
            raise ConfigError(f"`view` must be one of {', '.join(VIEWS)}")
        if self.gamma <= 0:
            raise ConfigError("`gamma` must be positive")


@dataclass
class LayerScores:
    """Held-out probe results for every block (index 0 is block 1)."""

    auc: np.ndarray
    accuracy: np.ndarray
    fisher: np.ndarray


@dataclass
class Calibration:
    """What calibration found; saved as a safetensors file with JSON metadata."""

    backbone: dict
    preprocessing: dict
    view: str
    scores: LayerScores
    importance: np.ndarray
    feature_mean: torch.Tensor  # [L, D]
    feature_std: torch.Tensor  # [L, D]
    critical: list[int]  # S: 1-based blocks, ascending
    config: dict
    sample: dict = field(default_factory=dict)
    created: str = ""

    @property
    def last_block(self) -> int:
        """L*: the deepest block the detector needs; later blocks never run at scan time."""
        return max(self.critical)

    @property
    def num_blocks(self) -> int:
        return len(self.importance)

    def save(self, path: str | os.PathLike) -> None:
        tensors = {
            "auc": torch.as_tensor(self.scores.auc, dtype=torch.float64),
            "accuracy": torch.as_tensor(self.scores.accuracy, dtype=torch.float64),
            "fisher": torch.as_tensor(self.scores.fisher, dtype=torch.float64),
            "importance": torch.as_tensor(self.importance, dtype=torch.float64),
            "feature_mean": self.feature_mean.float(),
            "feature_std": self.feature_std.float(),
        }
        meta = {
            "i2pscan_version": __version__,
            "backbone": self.backbone,
            "preprocessing": self.preprocessing,
            "view": self.view,
            "critical_layers": self.critical,
            "last_block": self.last_block,
            "config": self.config,
            "sample": self.sample,
            "created": self.created,
            "per_layer": [
                {"block": i + 1, "auc": float(a), "accuracy": float(c), "fisher": float(f), "importance": float(w)}
                for i, (a, c, f, w) in enumerate(zip(self.scores.auc, self.scores.accuracy,
                                                     self.scores.fisher, self.importance))
            ],
        }
        tensorfile.write(path, KIND, tensors, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        _, meta, t = tensorfile.read(path, (KIND,))
        return cls(
            backbone=meta["backbone"],
            preprocessing=meta["preprocessing"],
            view=meta["view"],
            scores=LayerScores(t["auc"].numpy(), t["accuracy"].numpy(), t["fisher"].numpy()),
            importance=t["importance"].numpy(),
            feature_mean=t["feature_mean"],
            feature_std=t["feature_std"],
            critical=list(meta["critical_layers"]),
            config=meta["config"],
            sample=meta["sample"],
            created=meta.get("created", ""),
        )


def calibrate(backbone: Backbone, sample: LabelledSample, config: CalibrateConfig = CalibrateConfig()) -> Calibration:
    """Tap every block of ``backbone`` over ``sample`` and score each layer with a linear probe.

    Files that cannot be decoded are skipped and listed in ``Calibration.sample['skipped']``.
    Raises I2PError when too few images of either class remain.
    """
    blocks = list(range(1, backbone.run_blocks + 1))
    extracted = extract(backbone, sample.paths, blocks, config.view, config.batch_size, config.workers,
                        description="calibrate: features")
    labels = sample.labels[extracted.kept]
    per_class = np.bincount(labels, minlength=2)
    if per_class.min() < 2:
        raise InputError(f"only {per_class[0]} real and {per_class[1]} fake images could be decoded; "
                         f"calibration needs at least 2 of each (more: hundreds)")
    folds = int(min(config.folds, per_class.min()))
    feats = [extracted.features[b].double().numpy() for b in blocks]
    scores = score_layers(feats, labels, folds=folds, c=config.probe_c, seed=config.seed)
    importance = importance_weights(scores.auc, config.gamma)
    critical = critical_layers(scores.auc, config.top_k)
    stacked = torch.stack([extracted.features[b] for b in blocks])
    counts = sample.subset(extracted.kept).counts()
    return Calibration(
        backbone=backbone.identity(),
        preprocessing=backbone.preprocessing(),
        view=config.view,
        scores=scores,
        importance=importance,
        feature_mean=stacked.mean(dim=1),
        feature_std=stacked.std(dim=1),
        critical=critical,
        config={**config.__dict__, "folds_used": folds},
        sample={
            "source": os.path.abspath(sample.source),
            "fingerprint": sample.fingerprint(),
            "counts": counts,
            # what the critical layers and gate were chosen with: finetune keeps these out of validation
            "files": FileSet.of([sample.paths[i] for i in extracted.kept], hashed=True).entries(),
            "skipped": [{"path": p, "error": e} for p, e in extracted.failures],
        },
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def score_layers(features: list[np.ndarray], labels: np.ndarray, folds: int = 5, c: float = 1.0,
                 seed: int = 0) -> LayerScores:
    """Out-of-fold AUC, accuracy and Fisher ratio (separation of the class means over the class
    variances) of the decision values of a standardised L2 logistic probe per layer: every image
    is scored by a probe that did not see it, so none of the three rewards memorising."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = list(splitter.split(np.zeros(len(labels)), labels))
    auc, acc, fisher = [], [], []
    for x in features:
        oof = np.zeros(len(labels))
        x = _informative_columns(x)
        if x.shape[1] == 0:  # a constant layer: no probe can do better than chance
            auc.append(0.5)
            acc.append(float(np.mean(labels == 0)))
            fisher.append(0.0)
            continue
        for train, test in splits:
            probe = _probe(c, seed).fit(x[train], labels[train])
            oof[test] = probe.decision_function(x[test])
        auc.append(roc_auc_score(labels, oof))
        acc.append(float(np.mean((oof > 0) == labels)))
        fisher.append(_fisher_ratio(oof, labels))
    return LayerScores(np.asarray(auc), np.asarray(acc), np.asarray(fisher))


def _informative_columns(x: np.ndarray, rel_tol: float = 1e-5) -> np.ndarray:
    """Drop columns that are constant up to float noise (batching changes the last bits, and
    standardising that noise would let a probe fit it)."""
    spread = x.std(axis=0)
    return x[:, spread > rel_tol * np.maximum(1.0, np.abs(x.mean(axis=0)))]


def _probe(c: float, seed: int):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))


def _fisher_ratio(z: np.ndarray, labels: np.ndarray) -> float:
    z0, z1 = z[labels == 0], z[labels == 1]
    spread = z0.var() + z1.var()
    return float((z1.mean() - z0.mean()) ** 2 / spread) if spread > 0 else 0.0


def importance_weights(auc: np.ndarray, gamma: float) -> np.ndarray:
    """w_l proportional to max(0, AUC_l - 0.5)^gamma, summing to 1 (uniform if no layer is above chance)."""
    raw = np.clip(np.asarray(auc, np.float64) - 0.5, 0.0, None) ** gamma
    total = raw.sum()
    if total <= 0:
        log.warning("no layer separates the classes better than chance; importance is uniform")
        return np.full(len(raw), 1.0 / len(raw))
    return raw / total


def critical_layers(auc: np.ndarray, top_k: int) -> list[int]:
    """S: the ``top_k`` blocks by AUC (ties go to the shallower block), 1-based, ascending."""
    order = sorted(range(len(auc)), key=lambda i: (-auc[i], i))
    return sorted(i + 1 for i in order[:min(top_k, len(auc))])
