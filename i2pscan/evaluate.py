"""Accuracy, AP and friends per subset (generator), as the field reports them.

Scores come from the same pipeline as ``scan`` (same crops, same decoding). Per subset and
overall: accuracy on real, on fake and their mean at the detector's threshold and at 0.5,
average precision, ROC AUC, the best-threshold ("oracle") mean accuracy, TPR at 1% and 5% FPR and
at the detector's own target FPR, the FPR its threshold gives, and its recorded embedding drift;
plus the unweighted mean over subsets, as GenImage and RINE report it. Files that cannot be
decoded are counted and left out of the metrics.

A fair comparison (issue 18) reads every detector the same way: AP and TPR at the target FPR
need no threshold; ACC at 0.5 is the published detectors' own rule; ACC at the detector's own
threshold (``acc``) is I2P's. ``fakes:jpeg:Q`` re-encodes only the fakes (GenImage's reals are
JPEG, its fakes PNG: a shortcut a detector can learn); ``Scores.unpadded`` marks the files at
least one crop in size, whose rows (:func:`rows_for`) carry no zero-padding size cue.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace

from typing import TYPE_CHECKING

import numpy as np

from i2pscan.errors import ConfigError

if TYPE_CHECKING:
    from i2pscan.model.detector import Detector
    from i2pscan.scan.options import ScanOptions
    from i2pscan.train.samples import LabelledSample

# i2pscan/__init__.py imports this module at start-up (``i2pscan.evaluate`` is this module and the
# API function): its module-level imports stay light; the rest is imported where it is used.

METRICS = ("acc_real", "acc_fake", "acc", "acc_real_05", "acc_fake_05", "acc_05", "ap", "auc", "oracle_acc",
           "tpr_at_fpr_1", "tpr_at_fpr_5", "fpr", "tpr_at_target")
CLEAN = "none"
FAKES_ONLY = "fakes:"  # a perturbation applied to the fake images only (JPEG-aligned evaluation: fakes:jpeg:Q)


@dataclass
class Scores:
    """Per-file results of one evaluation pass (decodable files only)."""

    perturbation: str
    subsets: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    errors: dict[str, int] = field(default_factory=dict)  # subset -> files that could not be decoded
    ai_meta: np.ndarray | None = None  # per scored file: its own metadata declares AI (generated/ai-edited)
    ai_meta_counts: dict[str, int] = field(default_factory=dict)  # subset -> files (scored or not) declaring AI
    unpadded: np.ndarray | None = None  # per scored file: at least the crop size both ways (no padding, no size cue)


@dataclass
class EvalResult:
    rows: list[dict]  # one per (perturbation, subset), then "overall" and "mean" per perturbation
    scores: list[Scores]
    threshold_logit: float
    by_detector: list[tuple[str, "EvalResult"]] = field(default_factory=list)  # several detectors: each one's
    target_fpr: float = 0.05
    drift: float = math.nan  # the detector's recorded embedding drift (mean 1 - cos); NaN where none applies


def metrics(labels: np.ndarray, logits: np.ndarray, cut: float, target_fpr: float = 0.05) -> dict:
    """Every metric of METRICS for one group; NaN where a class is missing. ``cut``: the detector's
    own threshold (flag when logit >= cut); ``fpr`` is the share of reals it flags; ``tpr_at_target``
    the best TPR of any threshold whose FPR is at most ``target_fpr`` (the detector's target)."""
    labels = np.asarray(labels, bool)
    logits = np.asarray(logits, np.float64)
    real, fake = logits[~labels], logits[labels]
    out = {
        "acc_real": _mean(real < cut), "acc_fake": _mean(fake >= cut),
        "acc_real_05": _mean(real < 0.0), "acc_fake_05": _mean(fake >= 0.0),
    }
    out["acc"] = (out["acc_real"] + out["acc_fake"]) / 2
    out["fpr"] = 1.0 - out["acc_real"]
    out["acc_05"] = (out["acc_real_05"] + out["acc_fake_05"]) / 2
    if len(real) and len(fake):
        from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

        out["ap"] = float(average_precision_score(labels, logits))
        out["auc"] = float(roc_auc_score(labels, logits))
        fpr, tpr, thresholds = roc_curve(labels, logits, drop_intermediate=False)
        out["oracle_acc"] = float(np.max((tpr + 1 - fpr) / 2))
        out["tpr_at_fpr_1"] = float(tpr[fpr <= 0.01].max())
        out["tpr_at_fpr_5"] = float(tpr[fpr <= 0.05].max())
        out["tpr_at_target"] = float(tpr[fpr <= target_fpr + 1e-12].max())
    else:
        out.update(ap=math.nan, auc=math.nan, oracle_acc=math.nan, tpr_at_fpr_1=math.nan, tpr_at_fpr_5=math.nan,
                   tpr_at_target=math.nan)
    return out


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else math.nan


def evaluate(detector: Detector, sample: LabelledSample, options: ScanOptions | None = None,
             perturbations: tuple[str, ...] = (CLEAN,)) -> EvalResult:
    """Score ``sample`` once per perturbation (``none`` is clean) and compute the metrics."""
    from i2pscan.provenance.evidence import AI
    from i2pscan.report.schema import row_key
    from i2pscan.scan.options import ScanOptions
    from i2pscan.scan.session import run_scan

    options = options or ScanOptions()
    cut = detector.cut(options.crops, options.combine, options.threshold).logit
    target = float(detector.meta.get("target_fpr", 0.05))
    drift = float(detector.meta.get("training", {}).get("retention", {}).get("drift_mean", math.nan))
    crop = detector.preprocess.crop_size
    subset_of = {it.path: it.subset for it in sample.items}
    label_of = {it.path: it.label for it in sample.items}
    rows, all_scores = [], []
    for perturbation in perturbations:
        collected: list[dict] = []
        # metrics measure the model: verdicts from scores alone; the evidence is counted beside them
        fakes_only = perturbation.startswith(FAKES_ONLY)
        spec = perturbation[len(FAKES_ONLY):] if fakes_only else perturbation
        opts = replace(options, perturbation=None if spec == CLEAN else spec, evidence="model")
        if fakes_only:  # reals as they are, fakes perturbed; rows back in the sample's order
            by_path: dict[str, dict] = {}
            for label, o in ((0, replace(opts, perturbation=None)), (1, opts)):
                paths = [p for p in sample.paths if label_of[p] == label]
                run_scan(paths, None, detector, o, on_row=lambda r: by_path.__setitem__(row_key(r), r))
            collected = [by_path[p] for p in sample.paths if p in by_path]
        else:
            run_scan(sample.paths, None, detector, opts, on_row=collected.append)
        ok = [r for r in collected if r["verdict"] != "error"]
        errors: dict[str, int] = {}
        for r in collected:
            if r["verdict"] == "error":
                errors[subset_of[row_key(r)]] = errors.get(subset_of[row_key(r)], 0) + 1
        ai_counts: dict[str, int] = {}
        for r in collected:
            if r.get("provenance") in AI:
                ai_counts[subset_of[row_key(r)]] = ai_counts.get(subset_of[row_key(r)], 0) + 1
        s = Scores(perturbation, np.asarray([subset_of[row_key(r)] for r in ok]),
                   np.asarray([label_of[row_key(r)] for r in ok], np.int64),
                   np.asarray([r["logit"] for r in ok], np.float64), errors,
                   np.asarray([r.get("provenance") in AI for r in ok], bool), ai_counts,
                   np.asarray([min(r.get("width") or 0, r.get("height") or 0) >= crop for r in ok], bool))
        all_scores.append(s)
        rows.extend(_rows(s, cut, target, drift))
    return EvalResult(rows, all_scores, cut, target_fpr=target, drift=drift)


def parse_perturbations(specs) -> tuple[str, ...]:
    """Validated perturbation specs (``none``, ``jpeg:Q``, ``blur:S``, ``resize:F``, each also as
    ``fakes:...``); none given: clean only. Raises I2PError for a bad one."""
    from i2pscan.io.pixels import parse_perturbation

    out = []
    for p in specs:
        fakes = p.startswith(FAKES_ONLY)
        spec = p[len(FAKES_ONLY):] if fakes else p
        out.append((FAKES_ONLY if fakes else "") + (CLEAN if spec == CLEAN else parse_perturbation(spec)))
    return tuple(out) or (CLEAN,)


def evaluate_detectors(specs, load, sample: LabelledSample, options: ScanOptions | None = None,
                       perturbations: tuple[str, ...] = (CLEAN,)) -> list[tuple[str, EvalResult]]:
    """Evaluate several detectors (names or files) on one sample, one detector in memory at a
    time: ``load(spec)`` builds each. Returns (detector name, result) pairs in the given order."""
    out = []
    for spec in specs:
        detector = load(spec)
        out.append((detector.name, evaluate(detector, sample, options, perturbations)))
        del detector
    return out


def combine(results: list[tuple[str, EvalResult]]) -> EvalResult:
    """One table of several detectors' results: each row gains a ``detector`` column (name or
    file), rows grouped by perturbation, then subset (the mean last), then detector."""
    if len(results) == 1:
        return results[0][1]
    order = {}
    for _, r in results:
        for row in r.rows:
            order.setdefault((row["perturbation"], row["subset"]), len(order))
    rows = [{"detector": name, **row} for name, r in results for row in r.rows]
    rows.sort(key=lambda row: order[(row["perturbation"], row["subset"])])  # stable: detectors keep their order
    return EvalResult(rows, [s for _, r in results for s in r.scores], results[0][1].threshold_logit, list(results))


def _rows(s: Scores, cut: float, target_fpr: float = 0.05, drift: float = math.nan) -> list[dict]:
    out = []
    names = sorted(set(s.subsets.tolist()) | set(s.errors))
    for name in names:
        sel = s.subsets == name
        out.append(_row(s.perturbation, name, s.labels[sel], s.logits[sel], s.errors.get(name, 0), cut,
                        _ai(s, sel), s.ai_meta_counts.get(name, 0), target_fpr))
    if len(names) > 1:
        out.append(_row(s.perturbation, "overall", s.labels, s.logits, sum(s.errors.values()), cut,
                        _ai(s, np.ones(len(s.labels), bool)), sum(s.ai_meta_counts.values()), target_fpr))
        mean = {"perturbation": s.perturbation, "subset": "mean",
                "n_real": sum(r["n_real"] for r in out[:len(names)]),
                "n_fake": sum(r["n_fake"] for r in out[:len(names)]), "errors": sum(s.errors.values()),
                "ai_meta": sum(r["ai_meta"] for r in out[:len(names)])}
        for m in METRICS + ("acc_no_meta",):
            values = [r[m] for r in out[:len(names)] if not math.isnan(r[m])]
            mean[m] = float(np.mean(values)) if values else math.nan
        out.append(mean)
    for row in out:
        row["drift"] = drift
    return out


def rows_for(s: Scores, keep: np.ndarray, cut: float, target_fpr: float = 0.05, drift: float = math.nan) -> list[dict]:
    """The rows of :func:`evaluate` for the files ``keep`` selects (e.g. ``s.unpadded``: a
    padding-free subset, without the size cue of small images)."""
    return _rows(Scores(s.perturbation, s.subsets[keep], s.labels[keep], s.logits[keep], {},
                        None if s.ai_meta is None else s.ai_meta[keep], {}), cut, target_fpr, drift)


def _ai(s: Scores, sel: np.ndarray) -> np.ndarray:
    return s.ai_meta[sel] if s.ai_meta is not None and len(s.ai_meta) == len(s.labels) else np.zeros(int(sel.sum()), bool)


def _row(perturbation, subset, labels, logits, errors, cut, ai=None, ai_count=0, target_fpr=0.05) -> dict:
    """Metrics of one group, plus how many of its files declare AI in their own metadata and the
    model's accuracy (mean of real and fake) on the files that do not."""
    ai = np.zeros(len(labels), bool) if ai is None else ai
    rest = metrics(labels[~ai], logits[~ai], cut, target_fpr) if len(labels) else {"acc": math.nan}
    return {"perturbation": perturbation, "subset": subset, "n_real": int((labels == 0).sum()),
            "n_fake": int((labels == 1).sum()), "errors": errors, **metrics(labels, logits, cut, target_fpr),
            "ai_meta": int(ai_count), "acc_no_meta": rest["acc"]}


# -- output --------------------------------------------------------------------------------------

HEADERS = {"detector": "detector", "perturbation": "perturbation", "subset": "subset", "n_real": "real", "n_fake": "fake",
            "errors": "errors", "acc_real": "acc real", "acc_fake": "acc fake", "acc": "acc", "acc_05": "acc@0.5",
            "ap": "AP", "auc": "AUC", "oracle_acc": "oracle acc", "tpr_at_fpr_1": "TPR@1%FPR",
            "tpr_at_fpr_5": "TPR@5%FPR", "ai_meta": "AI metadata", "acc_no_meta": "acc w/o AI metadata",
            "fpr": "FPR", "tpr_at_target": "TPR@target", "drift": "drift"}
def write_result(result: EvalResult, path: str) -> None:
    """``.parquet``, ``.csv`` or ``.md``, chosen by the suffix; one row per (perturbation, subset)."""
    columns = ["perturbation", "subset", "n_real", "n_fake", "errors", *METRICS, "ai_meta", "acc_no_meta", "drift"]
    if result.rows and "detector" in result.rows[0]:
        columns.insert(0, "detector")
    lower = path.lower()
    if lower.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist([{c: r[c] for c in columns} for r in result.rows]), path)
    elif lower.endswith(".csv"):
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(result.rows)
    elif lower.endswith(".md"):
        with open(path, "w") as fh:
            fh.write("| " + " | ".join(HEADERS.get(c, c) for c in columns) + " |\n")
            fh.write("|" + "---|" * len(columns) + "\n")
            for r in result.rows:
                fh.write("| " + " | ".join(_md(r[c]) for c in columns) + " |\n")
    else:
        raise ConfigError(f"`out` {path}: use a .parquet, .csv or .md file name")


def _md(v) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4f}" if v == 0 or abs(v) >= 1e-3 else f"{v:.3g}"
    return str(v)
