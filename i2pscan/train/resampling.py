"""Does the layer choice survive resampling? (DESIGN §1.1; issue 18.)

Once in-distribution probe AUCs saturate (0.9986-0.9998 over all six blocks of the tiny backbone,
and CLIP on SD v1.4 alike), the top-k by AUC is noise: the critical set changed in 4 of 5
bootstrap resamples, and the in-distribution ranking did not predict the held-out-generator one.
So calibration also reports, per layer, a bootstrap interval of its AUC and how often the chosen S
comes back under resampling; ranks layers by leave-one-generator-out AUC when the sample holds two
generators or more; and warns when the layers' AUCs are within their standard errors of each other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

log = logging.getLogger("i2pscan")


@dataclass
class Resampling:
    """How far the layer choice survives resampling (DESIGN §1.1): a bootstrap of the images
    (``auc_lo``/``auc_hi``: 95 % interval of each layer's AUC, ``auc_se`` its standard error,
    ``stability``: the share of resamples whose top-k is S), and, when the sample holds two
    generators or more, each layer's leave-one-generator-out AUC (``logo_auc``: the mean over
    generators of the AUC on a generator of a probe fitted on the others; NaN otherwise)."""

    auc_lo: np.ndarray
    auc_hi: np.ndarray
    auc_se: np.ndarray
    stability: float
    logo_auc: np.ndarray
    ranked_by: str  # "leave-one-generator-out" or "out-of-fold"
    resamples: int


def aucs(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUC of each row of ``values`` [L, n] against binary ``labels`` (Mann-Whitney, ties halved);
    NaN where a class is missing."""
    labels = np.asarray(labels, bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if not n1 or not n0:
        return np.full(len(values), np.nan)
    ranks = rankdata(values, axis=1)
    return (ranks[:, labels].sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _grouped_aucs(values: np.ndarray, labels: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Per-row AUC, or (``groups``) the mean over groups of the per-group AUC."""
    if groups is None:
        return aucs(values, labels)
    per = [aucs(values[:, groups == g], labels[groups == g]) for g in np.unique(groups)]
    return np.nanmean(np.stack(per), axis=0)


def top_k(ranking: np.ndarray, k: int) -> tuple[int, ...]:
    """The k best layers (1-based, ties to the shallower), ascending: calibrate's S."""
    order = sorted(range(len(ranking)), key=lambda i: (-ranking[i], i))
    return tuple(sorted(i + 1 for i in order[:min(k, len(ranking))]))


def logo_values(features: list[np.ndarray], labels: np.ndarray, subsets: np.ndarray, c: float, seed: int,
                probe) -> np.ndarray:
    """[L, n]: each image's decision value from a probe of its layer fitted on the other generators."""
    out = np.zeros((len(features), len(labels)))
    for i, x in enumerate(features):
        for g in np.unique(subsets):
            test = subsets == g
            model = probe(c, seed).fit(x[~test], labels[~test])
            out[i, test] = model.decision_function(x[test])
    return out


def _usable_generators(labels: np.ndarray, subsets: np.ndarray) -> bool:
    """Two generators or more, each with both classes (a held-out generator needs its own reals)."""
    names = np.unique(subsets)
    return len(names) >= 2 and all(len(np.unique(labels[subsets == g])) == 2 for g in names)


def resample_layers(features: list[np.ndarray], scores, labels: np.ndarray, subsets: np.ndarray, config,
                    probe) -> Resampling:
    """Bootstrap intervals and selection stability of the layer AUCs, and leave-one-generator-out
    AUCs when the sample allows (and ``config.logo``); see :class:`Resampling`. ``features``: each
    layer's informative columns; ``probe(c, seed)``: the probe calibrate fits."""
    n_layers = len(features)
    logo = config.logo and _usable_generators(labels, subsets)
    if logo:
        values = logo_values([x if x.shape[1] else np.zeros((len(labels), 1)) for x in features], labels,
                             subsets, config.probe_c, config.seed, probe)
        groups = subsets
    else:
        values, groups = scores.oof, None
    point = _grouped_aucs(values, labels, groups)
    chosen = top_k(point, config.top_k)
    rng = np.random.default_rng(config.seed)
    boots, same = [], 0
    for _ in range(config.bootstrap):
        idx = rng.integers(0, len(labels), len(labels))
        b = _grouped_aucs(values[:, idx], labels[idx], None if groups is None else groups[idx])
        boots.append(b)
        same += top_k(np.nan_to_num(b, nan=0.5), config.top_k) == chosen
    if boots:
        boots = np.stack(boots)
        lo, hi = np.nanpercentile(boots, 2.5, axis=0), np.nanpercentile(boots, 97.5, axis=0)
        se = np.nanstd(boots, axis=0)
        stability = same / len(boots)
    else:
        lo = hi = se = np.full(n_layers, np.nan)
        stability = float("nan")
    return Resampling(lo, hi, se, float(stability), point if logo else np.full(n_layers, np.nan),
                      "leave-one-generator-out" if logo else "out-of-fold", config.bootstrap)


def warn_if_noise(ranking: np.ndarray, r: Resampling, critical: list[int]) -> None:
    """A warning when the layer choice is noise: the spread of the layers' AUCs within two
    standard errors, or the chosen S back in fewer than half of the bootstrap resamples."""
    if not r.resamples or np.all(np.isnan(r.auc_se)):
        return
    spread = float(np.nanmax(ranking) - np.nanmin(ranking))
    se = float(np.nanmean(r.auc_se))
    if spread <= 2 * se or r.stability < 0.5:
        log.warning(f"the layers' {r.ranked_by} AUCs ({np.nanmin(ranking):.4f}-{np.nanmax(ranking):.4f}, standard "
                    f"error {se:.4f}) do not tell the layers apart: S = {critical} came back in "
                    f"{r.stability:.0%} of {r.resamples} bootstrap resamples; calibrate on several generators "
                    f"(leave-one-generator-out), or finetune with `head` rine (a gate over all blocks)")
