"""Detector files and the Detector that scores images (DESIGN §1.3, §2).

A detector file is safetensors: the head's tensors (``head.*``), and for every tuned backbone
tensor its flat indices and delta values (``delta.<name>.indices`` / ``delta.<name>.values``; a
dense delta has no indices), with JSON metadata that says everything needed to rebuild and trust
it. Loading checks all of it before any work and refuses a mismatch in one line.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from . import tensorfile
from .backbone import VIEWS, Backbone, load_backbone, recorded_weights
from .decode import CropTransform, decode, Preprocess
from .errors import I2PError
from .head import DetectorHead, HeadConfig
from .sensitivity import eligible_parameters
from .sparse import attach
from . import inference

KIND = "detector"
META_KEYS = {
    "i2pscan_version", "created", "backbone", "preprocessing", "view", "last_block", "head", "threshold",
    "threshold_logit", "temperature", "target_fpr", "mask", "training", "calibration",
}
OPTIONAL_META_KEYS = {"notes", "thresholds"}  # thresholds: {crop policy: {threshold, threshold_logit, temperature, ...}}


@dataclass(frozen=True)
class Cut:
    """How a scan with one crop policy decides: flag when the combined logit >= ``logit``;
    score = sigmoid(logit / ``temperature``). ``fitted``: fitted for this policy at finetune time."""

    policy: str
    logit: float
    threshold: float
    temperature: float
    fitted: bool
    source: str  # "detector" or "--threshold"

    def to_dict(self) -> dict:
        return {"policy": self.policy, "threshold": self.threshold, "threshold_logit": self.logit,
                "temperature": self.temperature, "fitted_for_policy": self.fitted, "source": self.source}


@dataclass
class Delta:
    """The change to one backbone tensor: values at flat ``indices`` (or dense when ``None``)."""

    indices: torch.Tensor | None
    values: torch.Tensor


def apply_delta(param: torch.Tensor, delta: Delta) -> None:
    """theta0 + scatter(delta), in place; entries outside the indices are untouched bit for bit."""
    values = delta.values.to(param.device, param.dtype)
    if delta.indices is None:
        param.data.add_(values)
    else:
        param.data.view(-1).index_add_(0, delta.indices.to(param.device, torch.long), values)


def write_detector(path: str | os.PathLike, meta: dict, head: DetectorHead, deltas: dict[str, Delta]) -> None:
    missing = META_KEYS - set(meta)
    if missing:
        raise ValueError(f"detector metadata lacks {sorted(missing)}")
    tensors = {f"head.{k}": v for k, v in head.state_dict().items()}
    for name, d in deltas.items():
        if d.indices is not None:
            small = d.indices.numel() == 0 or int(d.indices.max()) < 2**31
            tensors[f"delta.{name}.indices"] = d.indices.to(torch.int32 if small else torch.int64)
        tensors[f"delta.{name}.values"] = d.values.float()
    tensorfile.write(path, KIND, tensors, meta)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Detector:
    """A backbone cut after L* with its delta attached, and the head: images in, probabilities out.

    ``Detector.load(path)`` is the way in; ``score`` the way out.
    """

    def __init__(self, backbone: Backbone, head: DetectorHead, meta: dict, sha256: str, path: str):
        self.backbone = backbone
        self.head = head.eval()
        self.meta = meta
        self.sha256 = sha256
        self.path = path

    @property
    def id(self) -> str:
        """Content hash of the detector file: what reports record as the detector's identity."""
        return self.sha256

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def threshold_logit(self) -> float:
        """Flag when the head's logit is at least this (the probability threshold, exactly)."""
        return float(self.meta["threshold_logit"])

    @property
    def temperature(self) -> float:
        return float(self.meta["temperature"])

    @property
    def layers(self) -> list[int]:
        return list(self.head.config.layers)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.meta["preprocessing"])

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", pretrained: str | None = None) -> "Detector":
        """Read and verify a detector file, then build the model on ``device``.

        ``pretrained`` points at the backbone's weights when the recorded source is not available
        here (a local file on another machine, or an offline machine with a copy of the weights).
        Raises I2PError when the file is not a detector, is damaged, or does not match the backbone.
        """
        path = os.fspath(path)
        _, meta, tensors = tensorfile.read(path, (KIND,))
        unknown = set(meta) - META_KEYS - OPTIONAL_META_KEYS
        if unknown:
            raise I2PError(f"{path}: unknown metadata key(s) {', '.join(sorted(unknown))} "
                           f"(format {tensorfile.FORMAT_VERSION}): written by a newer i2pscan?")
        if META_KEYS - set(meta):
            raise I2PError(f"{path}: metadata lacks {', '.join(sorted(META_KEYS - set(meta)))}; not a complete detector")
        _validate(meta, tensors, path)
        recorded = meta["backbone"]
        backbone = load_backbone(recorded["name"], recorded_weights(recorded, pretrained), device=device,
                                 quick_gelu=bool(recorded.get("model_config", {}).get("quick_gelu", False)))
        if backbone.sha256 != recorded["sha256"]:
            raise I2PError(f"{path}: backbone weights differ from those it was trained on "
                           f"(sha256 {backbone.sha256[:12]}… here, {recorded['sha256'][:12]}… recorded)")
        if backbone.preprocessing()["crop_size"] != meta["preprocessing"]["crop_size"]:
            raise I2PError(f"{path}: crop size {meta['preprocessing']['crop_size']} does not match the backbone")
        last_block = int(meta["last_block"])
        if not 1 <= last_block <= backbone.num_blocks:
            raise I2PError(f"{path}: L* = {last_block} is outside the backbone's 1..{backbone.num_blocks} blocks")
        eligible = eligible_parameters(backbone, last_block)
        backbone.truncate(last_block)
        deltas = _deltas(tensors, path)
        for name, delta in deltas.items():
            if name not in eligible:
                raise I2PError(f"{path}: delta for {name}, which is not a tunable tensor of blocks 1..{last_block}")
            _check_delta(name, delta, eligible[name], path)
        # the delta stays a separate float32 term, as in validation (never merged into W0: see sparse.attach)
        attached = attach(backbone, eligible, {n: d.indices for n, d in deltas.items()})
        for name, module in attached.items():
            module.values.requires_grad_(False)
            module.values.data.copy_(deltas[name].values.reshape(module.values.shape))
        head = _build_head(meta, tensors, path, backbone.device)
        return cls(backbone, head, meta, file_sha256(path), path)

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw head logits of preprocessed crops [B, 3, S, S] (uncalibrated): ``inference.logits``."""
        return inference.logits(self.backbone, self.head, self.meta["view"], pixels)

    def probabilities(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Calibrated probability of being synthetic: sigmoid(logit / temperature)."""
        return torch.sigmoid(logits / (self.temperature if temperature is None else temperature))

    def cut(self, crops: int = 1, combine: str = "mean", threshold: float | None = None) -> Cut:
        """The threshold and temperature for a crop policy: those fitted for it at finetune time,
        else the centre-crop ones (``fitted`` False: the caller warns). ``threshold``: a probability
        given by the user, mapped through the policy's temperature."""
        key = inference.policy_key(crops, combine)
        fitted = self.meta.get("thresholds", {}).get(key)
        if fitted is None and key == inference.DEFAULT_POLICY:
            fitted = {"threshold": self.threshold, "threshold_logit": self.threshold_logit,
                      "temperature": self.temperature}
        record = fitted or {"threshold": self.threshold, "threshold_logit": self.threshold_logit,
                            "temperature": self.temperature}
        t = float(record["temperature"])
        if threshold is not None:
            return Cut(key, t * math.log(threshold / (1.0 - threshold)), float(threshold), t, fitted is not None,
                       "--threshold")
        return Cut(key, float(record["threshold_logit"]), float(record["threshold"]), t, fitted is not None,
                   "detector")

    def score(self, images: torch.Tensor | Sequence) -> np.ndarray:
        """Calibrated probabilities (float32) for a batch of preprocessed crops, or for a list of
        PIL images or file paths (centre crop; NaN for a file that cannot be decoded)."""
        if isinstance(images, torch.Tensor):
            return self.probabilities(self.logits(images)).cpu().numpy().astype(np.float32)
        transform = CropTransform(self.preprocess, 1)
        out = np.full(len(images), np.nan, np.float32)
        crops, where = [], []
        for i, image in enumerate(images):
            if isinstance(image, (str, os.PathLike)):
                image = decode(os.fspath(image)).image
            if image is not None:
                crops.append(transform(image.convert("RGB"), i))
                where.append(i)
        if crops:
            out[where] = self.score(torch.cat(crops))
        return out


def _validate(meta: dict, tensors: dict[str, torch.Tensor], path: str) -> None:
    """Types and ranges of everything scanning relies on, so that a damaged or hand-edited file is
    refused here, in one line, rather than failing half-way through a scan."""

    def bad(what: str) -> I2PError:
        return I2PError(f"{path}: {what}; the detector file is damaged or was edited")

    def number(key: str) -> float:
        v = meta[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(f"{key} is {v!r}, not a finite number")
        return float(v)

    if number("temperature") <= 0:
        raise bad("temperature must be positive")
    number("threshold_logit")
    if not 0 <= number("threshold") <= 1:
        raise bad("threshold must be a probability")
    thresholds = meta.get("thresholds", {})
    if not isinstance(thresholds, dict):
        raise bad("thresholds must map crop policies to thresholds")
    for key, record in thresholds.items():
        try:
            inference.parse_policy(key)
        except I2PError:
            raise bad(f"thresholds has {key!r}, not a crop policy N:mean or N:max") from None
        if not isinstance(record, dict):
            raise bad(f"thresholds[{key!r}] is not a record")
        for field_name in ("threshold", "threshold_logit", "temperature"):
            v = record.get(field_name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(f"thresholds[{key!r}].{field_name} is {v!r}, not a finite number")
        if record["temperature"] <= 0 or not 0 <= record["threshold"] <= 1:
            raise bad(f"thresholds[{key!r}] needs a positive temperature and a probability threshold")
    bb = meta["backbone"]
    if not isinstance(bb, dict) or not isinstance(bb.get("name"), str) or not isinstance(bb.get("sha256"), str):
        raise bad("backbone must record a name and a sha256")
    pp = meta["preprocessing"]
    if (not isinstance(pp, dict) or not isinstance(pp.get("crop_size"), int) or pp["crop_size"] < 1
            or len(pp.get("mean", ())) != 3 or len(pp.get("std", ())) != 3 or not all(x > 0 for x in pp["std"])):
        raise bad("preprocessing must give crop_size, 3 means and 3 positive stds")
    if meta["view"] not in VIEWS:
        raise bad(f"view {meta['view']!r} is not one of {', '.join(VIEWS)}")
    last_block = meta["last_block"]
    if isinstance(last_block, bool) or not isinstance(last_block, int):
        raise bad(f"last_block is {last_block!r}, not a block number")
    head = meta["head"]
    if not isinstance(head, dict) or not isinstance(head.get("config"), dict):
        raise bad("head configuration missing")
    layers = head["config"].get("layers")
    if not layers or not all(isinstance(b, int) and 1 <= b <= last_block for b in layers):
        raise bad(f"head layers {layers!r} must be blocks in 1..L* = {last_block}")
    recorded = meta["mask"].get("tensors") if isinstance(meta["mask"], dict) else None
    present = sorted({k[len("delta."):].rsplit(".", 1)[0] for k in tensors if k.startswith("delta.")})
    if recorded is None or sorted(recorded) != present:
        raise bad(f"its delta tensors ({len(present)}) do not match the tuned tensors it records")
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise bad(f"tensor {key} holds NaN or infinite values")


def _deltas(tensors: dict[str, torch.Tensor], path: str) -> dict[str, Delta]:
    deltas: dict[str, Delta] = {}
    for key in tensors:
        if key.startswith("delta.") and key.endswith(".values"):
            name = key[len("delta."):-len(".values")]
            deltas[name] = Delta(tensors.get(f"delta.{name}.indices"), tensors[key])
        elif key.startswith("delta.") and key.endswith(".indices"):
            if key[:-len(".indices")] + ".values" not in tensors:
                raise I2PError(f"{path}: {key} has no values")
        elif key.startswith("delta."):
            raise I2PError(f"{path}: unexpected tensor {key}")
    return deltas


def _check_delta(name: str, delta: Delta, param: torch.Tensor, path: str) -> None:
    if delta.indices is None:
        if delta.values.shape != param.shape:
            raise I2PError(f"{path}: dense delta for {name} has shape {tuple(delta.values.shape)}, "
                           f"the backbone's is {tuple(param.shape)}")
        return
    idx = delta.indices
    if idx.dtype not in (torch.int32, torch.int64) or idx.dim() != 1 or idx.shape != delta.values.shape:
        raise I2PError(f"{path}: delta for {name} has malformed indices")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= param.numel()):
        raise I2PError(f"{path}: delta indices for {name} fall outside the tensor")
    if idx.numel() != torch.unique(idx).numel():
        raise I2PError(f"{path}: delta indices for {name} repeat")


def _build_head(meta: dict, tensors: dict[str, torch.Tensor], path: str, device: torch.device) -> DetectorHead:
    head = DetectorHead(HeadConfig.from_dict(meta["head"]["config"]))
    state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise I2PError(f"{path}: head tensors do not match its recorded configuration") from exc
    return head.to(device)
