"""The calibrated side of a detector: a temperature for its probabilities and a threshold at a
target false-positive rate, per crop policy, fitted on validation logits."""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize

from i2pscan.io.preprocess import Preprocess
from i2pscan.model.inference import Model, file_logits
from i2pscan.train.samples import LabelledSample


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The T minimising the BCE of sigmoid(logit / T) on held-out data (Guo et al. 2017), within bounds.

    The BCE is convex in 1/T, so it has one minimum in log T: a bounded scalar search finds it
    anywhere in the interval (a gradient method with T clamped to the bounds stopped at a bound
    when its first step overshot into the flat beyond it). No logits: T = 1."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    if z.size == 0:
        return 1.0

    def nll(log_t: float) -> float:
        a = z / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, a) - y * a))

    found = optimize.minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                                     options={"xatol": 1e-9})
    return float(np.clip(math.exp(found.x), bounds[0], bounds[1]))


def threshold_at_fpr(real_logits: np.ndarray, fpr: float) -> float:
    """The lowest logit threshold (flag when logit >= it, in float32) that flags at most ``fpr`` of
    ``real_logits``."""
    z = np.sort(np.asarray(real_logits, np.float32))[::-1]
    k = int(math.floor(fpr * len(z)))
    if k >= len(z):
        return float(np.float32(-np.inf))
    return float(np.nextafter(z[k], np.float32(np.inf)))



def fit_thresholds(backbone, head, val: LabelledSample, view: str, config
                   ) -> tuple[dict[str, dict], dict[str, np.ndarray], list[int]]:
    """For every crop policy of ``config``: the temperature and the threshold at ``target_fpr``,
    fitted on the validation logits a scan with that policy computes (the detector as it will be
    saved). Returns ({policy: {threshold, threshold_logit, temperature, val_fpr, val_real}},
    {policy: logits}, positions in ``val`` of the images that decoded)."""
    preprocess = Preprocess.from_dict(backbone.preprocessing())
    logits, kept = file_logits(Model(backbone, head, "i2p", view), val.paths, preprocess, config.crop_policies,
                               config.batch_size, config.workers, description="thresholds")
    labels = val.labels[kept]
    out = {}
    for policy, z in logits.items():
        temperature = fit_temperature(z, labels)
        cut = threshold_at_fpr(z[labels == 0], config.target_fpr)
        probability = float(1.0 / (1.0 + math.exp(-cut / temperature))) if math.isfinite(cut) else 0.0
        out[policy] = {"threshold": probability, "threshold_logit": cut, "temperature": temperature,
                       "val_fpr": float(np.mean(z[labels == 0] >= np.float32(cut))),
                       "val_real": int(np.sum(labels == 0))}
    return out, logits, kept
