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
from i2pscan.train.resampling import Resampling, resample_layers, warn_if_noise

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
    bootstrap: int = 200  # resamples of the images for each layer's AUC interval (0: none)
    logo: bool = True  # rank layers by leave-one-generator-out AUC when the sample has two generators or more

    def __post_init__(self):
        if self.bootstrap < 0:
            raise ConfigError("`bootstrap` must be at least 0")
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
    """Held-out probe results for every block (index 0 is block 1). ``oof``: every image's
    out-of-fold decision value per layer [L, n] (what the bootstrap resamples; not saved)."""

    auc: np.ndarray
    accuracy: np.ndarray
    fisher: np.ndarray
    oof: np.ndarray | None = None


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
    resampling: Resampling | None = None  # files from before issue 18 have none

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
        r = self.resampling
        if r is not None:
            tensors.update({k: torch.as_tensor(getattr(r, k), dtype=torch.float64)
                            for k in ("auc_lo", "auc_hi", "auc_se", "logo_auc")})
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
            "selection": self.selection(),
            "per_layer": self.per_layer(),
        }
        tensorfile.write(path, KIND, tensors, meta)

    def per_layer(self) -> list[dict]:
        """One record per block: probe AUC, accuracy, Fisher ratio, importance, and (when
        resampled) the AUC interval and standard error and the leave-one-generator-out AUC."""
        r = self.resampling
        return [{"block": i + 1, "auc": float(a), "accuracy": float(c), "fisher": float(f), "importance": float(w),
                 **({} if r is None else _resampled(r, i))}
                for i, (a, c, f, w) in enumerate(zip(self.scores.auc, self.scores.accuracy, self.scores.fisher,
                                                     self.importance))]

    def selection(self) -> dict | None:
        """How S was chosen: the AUC it ranks by, and how often S came back under the bootstrap."""
        r = self.resampling
        return None if r is None else {"ranked_by": r.ranked_by, "stability": r.stability, "resamples": r.resamples}

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        _, meta, t = tensorfile.read(path, (KIND,))
        selection = meta.get("selection")
        resampling = None
        if selection and "auc_se" in t:
            resampling = Resampling(t["auc_lo"].numpy(), t["auc_hi"].numpy(), t["auc_se"].numpy(),
                                    float(selection["stability"]), t["logo_auc"].numpy(), selection["ranked_by"],
                                    int(selection["resamples"]))
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
            resampling=resampling,
        )


def _resampled(r: Resampling, i: int) -> dict:
    """A layer's resampling numbers for the metadata (JSON has no NaN: absent ones are null)."""
    def num(x):
        return None if np.isnan(x) else float(x)

    return {"auc_lo": num(r.auc_lo[i]), "auc_hi": num(r.auc_hi[i]), "auc_se": num(r.auc_se[i]),
            "logo_auc": num(r.logo_auc[i])}


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
    subsets = np.asarray([sample.items[i].subset for i in extracted.kept])
    resampling = resample_layers([_informative_columns(x) for x in feats], scores, labels, subsets, config, _probe)
    ranking = scores.auc if resampling.ranked_by == "out-of-fold" else resampling.logo_auc
    importance = importance_weights(ranking, config.gamma)
    critical = critical_layers(ranking, config.top_k)
    warn_if_noise(ranking, resampling, critical)
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
        resampling=resampling,
    )


def score_layers(features: list[np.ndarray], labels: np.ndarray, folds: int = 5, c: float = 1.0,
                 seed: int = 0) -> LayerScores:
    """Out-of-fold AUC, accuracy and Fisher ratio (separation of the class means over the class
    variances) of the decision values of a standardised L2 logistic probe per layer: every image
    is scored by a probe that did not see it, so none of the three rewards memorising."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    splits = list(splitter.split(np.zeros(len(labels)), labels))
    auc, acc, fisher, oofs = [], [], [], []
    for x in features:
        oof = np.zeros(len(labels))
        x = _informative_columns(x)
        oofs.append(oof)
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
    return LayerScores(np.asarray(auc), np.asarray(acc), np.asarray(fisher), np.stack(oofs) if oofs else None)


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
