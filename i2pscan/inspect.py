"""``i2pscan info``: what a detector or calibration file holds, for a user deciding to trust it."""

from __future__ import annotations

import json
import os

from i2pscan import console
from i2pscan.model import tensorfile

KINDS = ("detector", "calibration")


def describe(path: str, as_json: bool = False) -> dict:
    """Print a file's provenance and contents to stdout; returns its metadata."""
    kind, meta = tensorfile.read_meta(path, KINDS)
    if as_json:
        console.stdout.print_json(json.dumps({"kind": kind, **meta}))
        return meta
    rows = [["file", path], ["kind", kind], ["size", f"{os.path.getsize(path):,} bytes"]]
    rows += _common_rows(meta)
    if kind == "detector" and meta.get("architecture", "i2p") != "i2p":
        rows += _published_rows(meta)
    else:
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
        ["backbone sha256", bb["sha256"] or f"none recorded: a published detector runs open_clip {bb['name']} "
                                              f"{bb.get('pretrained')} as its authors did, whose weights could not be "
                                              "hashed where it was converted; they are not checked at load"],
        ["preprocessing", f"{'centre crop (torchvision rounding, black padding)' if pp.get('crop_mode') == 'torchvision' else 'crop'} "
                          f"{pp['crop_size']} px without resizing, mean {_fmt(pp['mean'])}, std {_fmt(pp['std'])}"],
    ]


def _published_rows(meta: dict) -> list[list]:
    card = meta["published"]
    config = meta["head"]["config"]
    arch = ("RINE: ln_2 class tokens of all " f"{config.get('blocks')} blocks, proj1, softmax(alpha) over blocks, proj2, head"
            if meta["architecture"] == "rine" else "UnivFD: one linear layer on the projected CLIP image embedding")
    return [
        ["detector", f"{card['name']}: {card.get('title', '')}"],
        ["architecture", arch],
        ["paper", card["paper"]],
        ["source", card["source"]],
        ["licence", f"{card['licence']} (THIRD_PARTY_NOTICES)"],
        ["training data", card["training_data"]],
        ["reported accuracy", card["reported"]],
        ["original file", f"{card.get('original_file', '?')}, sha256 {card['original_sha256']}"],
        ["threshold", f"{meta['threshold']:.4f} (the authors': sigmoid(logit) > 0.5), temperature {meta['temperature']:g}"],
    ]


def list_shipped() -> list[dict]:
    """Print the shipped detectors (name, what, licence, backbone) to stdout; returns their cards."""
    from i2pscan.model.published import DEFAULT_DETECTOR, SHIPPED, shipped_path

    cards, rows = [], []
    for name in SHIPPED:
        _, meta = tensorfile.read_meta(shipped_path(name), ("detector",))
        card = meta["published"]
        cards.append(card)
        bb = meta["backbone"]
        rows.append([name + (" (default)" if name == DEFAULT_DETECTOR else ""), card.get("title", ""), card["licence"],
                     f"{bb['name']} {bb['pretrained']}"])
    console.table(None, ["name", "detector", "licence", "backbone"], rows, to_stdout=True)
    return cards


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
