"""The calibrated side of a detector: a temperature for its probabilities and a threshold at a
target false-positive rate, per crop policy, fitted on validation logits.

The threshold is a conformal rank (split conformal prediction): with n real validation logits,
flag a logit above the m-th largest of them, m = floor(target (n + 1)). For a new real image
exchangeable with the validation reals, P(flagged) = m / (n + 1) <= target, in expectation over
validation sets; the in-sample order statistic used before (flag above the (floor(target n) + 1)-th
largest) gave (floor(target n) + 1) / (n + 1): 5.5 % at 200 reals for a 5 % target.

The temperature minimises the validation NLL. Validated on the training generators only
(in-distribution), logits are separated better than on any generator a scan will meet, and the
fitted temperature sharpens them (0.12 on the toy data: 8x): then the temperature is floored at 1
(``temperature_floor``), never sharpening.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize

from i2pscan.io.preprocess import Preprocess
from i2pscan.model.inference import Model, file_logits
from i2pscan.train.samples import LabelledSample

TEMPERATURE_BOUNDS = (0.05, 20.0)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The T minimising the BCE of sigmoid(logit / T) on held-out data (Guo et al. 2017), within bounds.

    The BCE is convex in 1/T, so it has one minimum in log T: a bounded scalar search finds it
    anywhere in the interval (a gradient method with T clamped to the bounds stopped at a bound
    when its first step overshot into the flat beyond it). No logits: T = 1 (within bounds)."""
    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.float64)
    if z.size == 0:
        return float(np.clip(1.0, bounds[0], bounds[1]))
    if bounds[0] == bounds[1]:
        return float(bounds[0])

    def nll(log_t: float) -> float:
        a = z / math.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, a) - y * a))

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    found = optimize.minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-9})
    best = min((float(found.x), lo, hi), key=nll)  # a minimum at a bound is the bound itself, exactly
    return float(np.clip(math.exp(best), bounds[0], bounds[1]))


def conformal_rank(n: int, fpr: float) -> int:
    """m: a logit above the m-th largest of n real validation logits is flagged (at least 1;
    n + 1 flags everything)."""
    return min(n + 1, max(1, int(math.floor(fpr * (n + 1) + 1e-9))))


def expected_fpr(n: int, fpr: float) -> float:
    """The expected false-positive rate of the conformal threshold on a new real image: m / (n + 1)
    (above ``fpr`` only when n + 1 < 1 / fpr, too few reals for any guarantee)."""
    return min(1.0, conformal_rank(n, fpr) / (n + 1))


def threshold_at_fpr(real_logits: np.ndarray, fpr: float) -> float:
    """The conformal threshold: flag a logit >= the returned value (float32), i.e. strictly above
    the m-th largest real logit (m = :func:`conformal_rank`). At most m - 1 of ``real_logits``
    are flagged; no reals: -inf (nothing can be flagged wrongly)."""
    z = np.sort(np.asarray(real_logits, np.float32))[::-1]
    m = conformal_rank(len(z), fpr)
    if len(z) == 0 or m > len(z):
        return float(np.float32(-np.inf))
    return float(np.nextafter(z[m - 1], np.float32(np.inf)))


def thresholds_for(logits: dict[str, np.ndarray], labels: np.ndarray, target_fpr: float,
                   temperature_floor: float | None = None) -> dict[str, dict]:
    """{policy: {threshold, threshold_logit, temperature, val_fpr, val_tpr, val_real, expected_fpr}}
    from each policy's validation logits: the threshold from the real images' logits only, the
    temperature from all (at least ``temperature_floor`` when given)."""
    labels = np.asarray(labels)
    bounds = (max(TEMPERATURE_BOUNDS[0], temperature_floor or 0.0), TEMPERATURE_BOUNDS[1])
    out = {}
    for policy, z in logits.items():
        temperature = fit_temperature(z, labels, bounds)
        real, fake = z[labels == 0], z[labels == 1]
        cut = threshold_at_fpr(real, target_fpr)
        probability = float(1.0 / (1.0 + math.exp(-cut / temperature))) if math.isfinite(cut) else 0.0
        out[policy] = {"threshold": probability, "threshold_logit": cut, "temperature": temperature,
                       "val_fpr": float(np.mean(real >= np.float32(cut))) if len(real) else 0.0,
                       "val_tpr": float(np.mean(fake >= np.float32(cut))) if len(fake) else 0.0,
                       "val_real": int(len(real)), "expected_fpr": expected_fpr(len(real), target_fpr)}
    return out


def fit_thresholds(backbone, head, val: LabelledSample, view: str, config, temperature_floor: float | None = None
                   ) -> tuple[dict[str, dict], dict[str, np.ndarray], list[int]]:
    """For every crop policy of ``config``: the temperature and the threshold at ``target_fpr``,
    fitted on the validation logits a scan with that policy computes (the detector as it will be
    saved). Returns (:func:`thresholds_for`'s records, {policy: logits}, positions in ``val`` of
    the images that decoded)."""
    preprocess = Preprocess.from_dict(backbone.preprocessing())
    logits, kept = file_logits(Model(backbone, head, "i2p", view), val.paths, preprocess, config.crop_policies,
                               config.batch_size, config.workers, description="thresholds")
    return thresholds_for(logits, val.labels[kept], config.target_fpr, temperature_floor), logits, kept
