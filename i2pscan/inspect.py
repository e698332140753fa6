"""``i2pscan info``: what a detector or calibration file holds, for a user deciding to trust it."""

from __future__ import annotations

import json
import os

from . import console, tensorfile

KINDS = ("detector", "calibration")


def describe(path: str, as_json: bool = False) -> dict:
    """Print a file's provenance and contents to stdout; returns its metadata."""
    kind, meta = tensorfile.read_meta(path, KINDS)
    if as_json:
        console.stdout.print_json(json.dumps({"kind": kind, **meta}))
        return meta
    rows = [["file", path], ["kind", kind], ["size", f"{os.path.getsize(path):,} bytes"]]
    rows += _common_rows(meta)
    rows += _detector_rows(meta) if kind == "detector" else _calibration_rows(meta)
    console.table(None, ["", ""], rows, to_stdout=True)
    if kind == "calibration":
        layer_rows = [[r["block"], r["auc"], r["accuracy"], r["fisher"], r["importance"],
                       "critical" if r["block"] in meta["critical_layers"] else ""] for r in meta["per_layer"]]
        console.table("per layer", ["block", "AUC", "accuracy", "Fisher", "importance", ""], layer_rows,
                      to_stdout=True)
    return meta


def _common_rows(meta: dict) -> list[list]:
    bb = meta["backbone"]
    pp = meta["preprocessing"]
    return [
        ["made by", f"i2pscan {meta.get('i2pscan_version', '?')} on {meta.get('created', '?')}"],
        ["backbone", f"{bb['name']} ({bb.get('pretrained')}), {bb['num_blocks']} blocks, width {bb['width']}"
                     f"{', QuickGELU' if bb.get('model_config', {}).get('quick_gelu') else ''}"],
        ["backbone sha256", bb["sha256"]],
        ["preprocessing", f"crop {pp['crop_size']} px without resizing, mean {_fmt(pp['mean'])}, std {_fmt(pp['std'])}"],
    ]


def _calibration_rows(meta: dict) -> list[list]:
    sample = meta["sample"]
    counts = sample["counts"]
    return [
        ["critical layers S", str(meta["critical_layers"])],
        ["L*", str(meta["last_block"])],
        ["view", meta["view"]],
        ["sample", f"{counts['real']} real, {counts['fake']} fake in {len(counts['subsets'])} subset(s); "
                   f"{len(sample['skipped'])} skipped"],
        ["sample fingerprint", sample["fingerprint"]],
    ]


def _detector_rows(meta: dict) -> list[list]:
    head, train, mask = meta["head"], meta["training"], meta["mask"]
    counts = train["counts"]
    val = train.get("validation", {})
    rows = [
        ["critical layers S", str(head["layers"])],
        ["L* (last block run)", str(meta["last_block"])],
        ["layer weights", ", ".join(f"{b}: {w:.3f}" for b, w in zip(head["layers"], head["gate"]))],
        ["mask", f"{mask['strategy']}, rho {mask['rho']}, q {mask['q']}: {mask['trainable']:,} of "
                 f"{mask['eligible']:,} eligible backbone weights tuned"],
        ["threshold", f"{meta['threshold']:.4f} (at most {meta['target_fpr']:.1%} of validation real images flagged)"],
        ["temperature", f"{meta['temperature']:.4f}"],
        ["training data", f"{counts['train']['real']} real + {counts['train']['fake']} fake; validation "
                          f"{counts['val']['real']} real + {counts['val']['fake']} fake"],
        ["training fingerprint", train["fingerprint"]],
        ["best epoch", f"{train['best_epoch']} of {train['epochs']}"],
    ]
    if val:
        rows.append(["validation", ", ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float))])
    return rows


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"
