"""The detector file's metadata schema: every field, its type and range, in one place.

A detector file comes from strangers by design (shared between teams, downloaded), so loading it
checks the whole metadata record against this JSON Schema before anything is built, and names the
first problem in one line. Unknown keys are refused everywhere the format is ours; sizes are capped
so that a small file cannot claim a huge model. Cross-field rules that a JSON Schema cannot say
(threshold vs. threshold_logit, layers vs. L*) are in :func:`check_detector_meta`.
"""

from __future__ import annotations

import json
import math

from i2pscan.errors import I2PError

ARCHITECTURES = ("i2p", "rine", "univfd")
MAX_META_BYTES = 256 * 1024  # a finetune detector's metadata is a few KB
MAX_NOTES = 10_000
MAX_DIM = 16_384
MAX_BLOCKS = 256
TEMPERATURE_RANGE = (0.05, 20.0)
MAX_ABS_LOGIT = 1e4

_str = {"type": "string", "maxLength": 4096}
_short = {"type": "string", "maxLength": 256}
_opt_str = {"type": ["string", "null"], "maxLength": 4096}
_num = {"type": "number"}
_prob = {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
_count = {"type": "integer", "minimum": 0}
_nonneg = {"type": "number", "minimum": 0}
_dim = {"type": "integer", "minimum": 1, "maximum": MAX_DIM}
_block = {"type": "integer", "minimum": 1, "maximum": MAX_BLOCKS}
_sha = {"type": "string", "pattern": "^[0-9a-f]{64}$"}


def _obj(properties: dict, required=None, extra=False) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required,
            "additionalProperties": extra}


def _array(items: dict, n: int | None = None, max_items: int = MAX_BLOCKS, unique: bool = False) -> dict:
    a = {"type": "array", "items": items, "maxItems": n if n is not None else max_items, "uniqueItems": unique}
    if n is not None:
        a["minItems"] = n
    return a


_PREPROCESSING = _obj({
    "crop_size": {"type": "integer", "minimum": 1, "maximum": 4096},
    "mean": _array({"type": "number", "minimum": -10, "maximum": 10}, 3),
    "std": _array({"type": "number", "exclusiveMinimum": 0, "maximum": 10}, 3),
    "crop_mode": {"enum": ["i2p", "torchvision"]},
}, required=["crop_size", "mean", "std"])

_MODEL_CONFIG = {"type": "object", "properties": {"quick_gelu": {"type": "boolean"}}, "required": ["quick_gelu"],
                 "maxProperties": 64}


def _backbone(hashed: bool) -> dict:
    return _obj({
        "name": _short,
        "pretrained": {"type": ["string", "null"], "maxLength": 1024},
        "pretrained_path": _opt_str,
        "sha256": _sha if hashed else {"type": "null"},
        "num_blocks": _block,
        "width": _dim,
        "model_config": _MODEL_CONFIG,
    })


_COMMON = {
    "i2pscan_version": _short,
    "created": _short,
    "architecture": {"enum": list(ARCHITECTURES)},
    # a probability; 0 or 1 only where sigmoid(threshold_logit / temperature) rounds to it (checked below)
    "threshold": {"type": "number", "minimum": 0, "maximum": 1},
    "threshold_logit": {"type": "number", "minimum": -MAX_ABS_LOGIT, "maximum": MAX_ABS_LOGIT},
    "temperature": {"type": "number", "minimum": TEMPERATURE_RANGE[0], "maximum": TEMPERATURE_RANGE[1]},
    "notes": {"type": "string", "maxLength": MAX_NOTES},
}

I2P_SCHEMA = _obj({
    **_COMMON,
    "backbone": _backbone(hashed=True),
    "preprocessing": _PREPROCESSING,
    "view": {"enum": ["cls", "cls+patchmean"]},
    "last_block": _block,
    "head": _obj({
        "config": _obj({
            "layers": {**_array(_block, unique=True), "minItems": 1},
            "in_dim": _dim, "proj_dim": _dim, "hidden_dim": _dim,
            "gate_init": {**_array({"type": "number", "exclusiveMinimum": 0, "maximum": 1}), "minItems": 1},
            "kind": {"enum": ["i2p", "rine", "univfd"]},
            "dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
        }, required=["layers", "in_dim", "proj_dim", "hidden_dim", "gate_init"]),
        "layers": _array(_block, unique=True),
        "gate": _array({"type": "number", "minimum": 0, "maximum": 1}),
    }),
    "target_fpr": _prob,
    "thresholds": {"type": "object", "maxProperties": 64, "propertyNames": {"pattern": "^[1-9][0-9]{0,2}:(mean|max)$"},
                   "additionalProperties": _obj({
                       "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                       "threshold_logit": {"type": "number", "minimum": -MAX_ABS_LOGIT, "maximum": MAX_ABS_LOGIT},
                       "temperature": {"type": "number", "minimum": TEMPERATURE_RANGE[0],
                                       "maximum": TEMPERATURE_RANGE[1]},
                       "val_fpr": {"type": "number", "minimum": 0, "maximum": 1},
                       "val_tpr": {"type": "number", "minimum": 0, "maximum": 1},
                       "val_real": _count,
                       # the conformal threshold's false-positive rate on a new real image, in expectation
                       "expected_fpr": {"type": "number", "minimum": 0, "maximum": 1},
                   }, required=["threshold", "threshold_logit", "temperature"])},
    "mask": _obj({
        "strategy": {"enum": ["i2p", "low-sensitivity", "task-fisher", "random", "head-only", "full"]},
        "rho": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "q": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "trainable": _count, "eligible": _count,
        "per_block": {"type": "object", "maxProperties": MAX_BLOCKS,
                      "additionalProperties": _obj({"trainable": _count, "eligible": _count})},
        "tensors": _array(_short, max_items=4096, unique=True),
        "normalisation": {"enum": ["none", "tensor", "group"]},
        "select_by": {"enum": ["saliency", "ratio"]},
        "saliency_head": {"enum": ["probe", "warmup"]},
    }, required=["strategy", "rho", "q", "trainable", "eligible", "per_block", "tensors"]),
    "training": _obj({
        "config": {"type": "object", "maxProperties": 128},
        "counts": {"type": "object", "maxProperties": 16},
        "fingerprint": _short, "val_fingerprint": _short,
        "val_in_calibration": {"type": ["integer", "boolean", "null"]},
        "best_epoch": _count, "epochs": _count, "steps": _count,
        "validation": {"type": "object", "maxProperties": 64, "additionalProperties": {"type": ["number", "null"]}},
        "skipped": _count,
        "arithmetic": {"enum": ["bf16", "fp32"]},
        # how epoch, temperature and threshold were chosen (train/validation.py); files before issue 18 have none
        "selection": _obj({
            "validation": {"enum": ["held-out generators", "in-distribution"]},
            "train_subsets": _array(_str, max_items=4096), "val_subsets": _array(_str, max_items=4096),
            "temperature_floor": {"type": ["number", "null"], "minimum": 0},
        }, required=["validation"]),
        # how far training moved the representation (train/retention.py); files before issue 18 have none
        "retention": _obj({
            "drift_mean": _nonneg, "drift_max": _nonneg, "delta_rel": _nonneg, "delta_max": _nonneg,
            "delta_max_rel": _nonneg, "drift_images": _count,
        }, required=["drift_images"]),
    }, required=["counts", "fingerprint", "best_epoch", "epochs"], extra=False),
    "calibration": _obj({
        "critical_layers": _array(_block, unique=True),
        "fingerprint": {"type": ["string", "null"], "maxLength": 256},
        "importance": _array({"type": "number", "minimum": 0, "maximum": 1}),
    }),
}, required=["i2pscan_version", "created", "backbone", "preprocessing", "view", "last_block", "head", "threshold",
             "threshold_logit", "temperature", "target_fpr", "mask", "training", "calibration"])
# ``thresholds`` (optional): per crop policy "N:mean|max", the threshold and temperature fitted for it

_PUBLISHED_INFO = _obj({
    "name": _short, "title": _str, "paper": _str, "source": _str, "licence": _short, "training_data": _str,
    "reported": _str, "original_file": _str, "original_sha256": _sha, "converted_by": _short,
}, required=["name", "paper", "source", "licence", "training_data", "reported", "original_sha256"])

RINE_SCHEMA = _obj({
    **_COMMON,
    "backbone": _backbone(hashed=False),
    "preprocessing": _PREPROCESSING,
    "head": _obj({"config": _obj({"blocks": _block, "in_dim": _dim, "proj_dim": _dim,
                                  "nproj": {"type": "integer", "minimum": 1, "maximum": 16}})}),
    "published": _PUBLISHED_INFO,
}, required=["i2pscan_version", "created", "architecture", "backbone", "preprocessing", "head", "threshold",
             "threshold_logit", "temperature", "published"])

UNIVFD_SCHEMA = _obj({
    **_COMMON,
    "backbone": _backbone(hashed=False),
    "preprocessing": _PREPROCESSING,
    "head": _obj({"config": _obj({"in_dim": _dim})}),
    "published": _PUBLISHED_INFO,
}, required=RINE_SCHEMA["required"])

SCHEMAS = {"i2p": I2P_SCHEMA, "rine": RINE_SCHEMA, "univfd": UNIVFD_SCHEMA}


def architecture_of(meta: dict) -> str:
    """The architecture a detector's metadata declares (files without the key are I2P's)."""
    return meta.get("architecture", "i2p") if isinstance(meta, dict) else "i2p"


def check_detector_meta(meta: dict, path: str) -> str:
    """Validate a detector's whole metadata record; returns its architecture.

    Raises I2PError with one line naming the first problem: its place in the record and what is
    wrong. Checks types, ranges, unknown keys, sizes, and the rules between fields.
    """
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    def bad(what: str) -> I2PError:
        return I2PError(f"{path}: {what}; the detector file is damaged, edited or not made by i2pscan")

    if not isinstance(meta, dict):
        raise bad("its metadata is not a JSON object")
    size = len(json.dumps(meta))
    if size > MAX_META_BYTES:
        raise bad(f"its metadata is {size:,} bytes (at most {MAX_META_BYTES:,})")
    architecture = meta.get("architecture", "i2p")
    if architecture not in SCHEMAS:
        raise bad(f"architecture {architecture!r} is not one of {', '.join(ARCHITECTURES)} (a newer i2pscan?)")
    error = best_match(Draft202012Validator(SCHEMAS[architecture]).iter_errors(meta))
    if error is not None:
        where = _where(error.absolute_path)
        message = error.message if len(error.message) <= 200 else error.message[:200] + "…"
        raise bad(f"metadata {where or 'record'}: {message}")
    where = _non_finite(meta, ())
    if where is not None:
        raise bad(f"metadata {where} is not a finite number")
    _check_cut(meta, "", bad)
    for policy, record in meta.get("thresholds", {}).items():
        _check_cut(record, f"thresholds.{policy}: ", bad)
    if architecture == "i2p":
        _check_i2p(meta, bad)
    return architecture


def _check_cut(record: dict, where: str, bad) -> None:
    """threshold_logit must be temperature * logit(threshold): the two ways a scan states its cut."""
    p = record["threshold"]
    expected = record["temperature"] * math.log(p / (1 - p)) if 0 < p < 1 else math.copysign(math.inf, p - 0.5)
    z = record["threshold_logit"] / record["temperature"]
    probability = 1 / (1 + math.exp(-z)) if z > -700 else 0.0  # compared both ways: near 1, 1 - p loses digits
    if not (math.isclose(expected, record["threshold_logit"], rel_tol=1e-5, abs_tol=1e-5)
            or abs(probability - p) <= 1e-9):
        raise bad(f"{where}threshold_logit {record['threshold_logit']:.6g} disagrees with threshold "
                  f"{p:.6g} at temperature {record['temperature']:.6g} (expected {expected:.6g})")


def _check_i2p(meta: dict, bad) -> None:
    config = meta["head"]["config"]
    layers, last_block = config["layers"], meta["last_block"]
    if last_block > meta["backbone"]["num_blocks"]:
        raise bad(f"L* = {last_block} is beyond the backbone's {meta['backbone']['num_blocks']} blocks")
    if any(b > last_block for b in layers):
        raise bad(f"head layers {layers} must be blocks in 1..L* = {last_block}")
    if meta["head"]["layers"] != layers:
        raise bad("head layers disagree with the head configuration")
    if len(config["gate_init"]) != len(layers):
        raise bad(f"{len(config['gate_init'])} gate weights for {len(layers)} layers")
    if not math.isclose(sum(config["gate_init"]), 1.0, abs_tol=1e-3):
        raise bad("gate weights do not sum to 1")
    width = meta["backbone"]["width"] * (2 if meta["view"] == "cls+patchmean" else 1)
    if config["in_dim"] != width:
        raise bad(f"head input width {config['in_dim']} does not match the backbone's features ({width})")


def _non_finite(value, path: tuple):
    """The place of the first NaN or infinity (validation metrics may be NaN), or None."""
    if isinstance(value, float) and not math.isfinite(value) and path[:2] != ("training", "validation"):
        return _where(path)
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, path + (key,))
        if found is not None:
            return found
    return None


def _where(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
