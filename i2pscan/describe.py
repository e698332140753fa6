"""What a detector or calibration file says about itself, as (label, value) rows: the text of
``i2pscan info``, kept apart from how render.py shows it."""

from __future__ import annotations

import os


def file_rows(path: str, kind: str, meta: dict) -> list[list]:
    """The rows of ``info``: the file, how it was made, and what its kind records."""
    rows = [["file", path], ["kind", kind], ["size", f"{os.path.getsize(path):,} bytes"]] + _common_rows(meta)
    if kind == "detector" and meta.get("architecture", "i2p") != "i2p":
        return rows + _published_rows(meta)
    return rows + (_detector_rows(meta) if kind == "detector" else _calibration_rows(meta))


def _common_rows(meta: dict) -> list[list]:
    bb, pp = meta["backbone"], meta["preprocessing"]
    crop = ("centre crop (torchvision rounding, black padding)" if pp.get("crop_mode") == "torchvision" else "crop")
    return [
        ["made by", f"i2pscan {meta.get('i2pscan_version', '?')} on {meta.get('created', '?')}"],
        ["backbone", f"{bb['name']} ({bb.get('pretrained')}), {bb['num_blocks']} blocks, width {bb['width']}"
                     f"{', QuickGELU' if bb.get('model_config', {}).get('quick_gelu') else ''}"],
        ["backbone sha256", bb["sha256"] or f"none recorded: a published detector runs open_clip {bb['name']} "
                                              f"{bb.get('pretrained')} as its authors did, whose weights could not be "
                                              "hashed where it was converted; they are not checked at load"],
        ["preprocessing", f"{crop} {pp['crop_size']} px without resizing, mean {_vec(pp['mean'])}, std {_vec(pp['std'])}"],
    ]


def _published_rows(meta: dict) -> list[list]:
    card, config = meta["published"], meta["head"]["config"]
    arch = (f"RINE: ln_2 class tokens of all {config.get('blocks')} blocks, proj1, softmax(alpha) over blocks, proj2, head"
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
    head, train, m = meta["head"], meta["training"], meta["mask"]
    counts, val, kind = train["counts"], train.get("validation", {}), head["config"].get("kind", "i2p")
    centre = meta.get("thresholds", {}).get("1:mean", {})
    expected = (f"; a new real image is flagged with probability {centre['expected_fpr']:.1%} in expectation "
                f"(conformal rank of {centre['val_real']} validation reals)" if "expected_fpr" in centre else "")
    how = (f"; sensitivity normalised: {m['normalisation']}, candidates by {m['select_by']}, saliency against the "
           f"{m['saliency_head']} head" if "normalisation" in m else "")
    rows = [
        ["critical layers S", str(head["layers"]) + ("" if kind == "i2p" else f" ({kind}-style head)")],
        ["L* (last block run)", str(meta["last_block"])],
        ["layer weights", ", ".join(f"{b}: {w:.3f}" for b, w in zip(head["layers"], head["gate"]))],
        ["mask", f"{m['strategy']}, rho {m['rho']}, q {m['q']}: {m['trainable']:,} of {m['eligible']:,} eligible "
                 f"backbone weights tuned{how}"],
        ["threshold", f"{meta['threshold']:.4f} (target false-positive rate {meta['target_fpr']:.1%}{expected})"],
        ["policies fitted", ", ".join(sorted(meta.get("thresholds", {}))) or "1:mean"],
        ["temperature", f"{meta['temperature']:.4f}"],
        ["training data", f"{counts['train']['real']} real + {counts['train']['fake']} fake; validation "
                          f"{counts['val']['real']} real + {counts['val']['fake']} fake"],
        ["training fingerprint", train["fingerprint"]],
        ["best epoch", f"{train['best_epoch']} of {train['epochs']}"],
    ]
    sel = train.get("selection")
    if sel:
        rows.append(["epoch, temperature, threshold", f"chosen on {_names(sel['val_subsets'])} " + (
            f"(held-out generators; trained on {_names(sel['train_subsets'])})" if sel["validation"] == "held-out generators"
            else f"(in-distribution: temperature floored at {sel['temperature_floor']:g})")])
    if val:
        rows.append(["validation", ", ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float))])
    kept = train.get("retention")
    if kept:
        drift = (f"embedding drift (1 - cos) mean {kept['drift_mean']:.3g}, max {kept['drift_max']:.3g} over "
                 f"{kept['drift_images']} held-out real images; " if "drift_mean" in kept else "drift not measured; ")
        rows.append(["retention", f"{drift}|delta|/|W0| {kept['delta_rel']:.3g}, largest |delta| "
                                  f"{kept['delta_max']:.3g} ({kept['delta_max_rel']:.3g} of its tensor's RMS)"])
    return rows


def _vec(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _names(subsets) -> str:
    return ", ".join(map(str, subsets)) if isinstance(subsets, (list, tuple)) else str(subsets)
