"""Detector files and the Detector that scores images (DESIGN §1.3, §2).

A detector file is safetensors: the head's tensors (``head.*``), and for every tuned backbone
tensor its flat indices and delta values (``delta.<name>.indices`` / ``delta.<name>.values``; a
dense delta has no indices), with JSON metadata that says everything needed to rebuild and trust
it. Loading checks all of it before any work and refuses a mismatch in one line.

Published detectors (``architecture`` ``rine`` or ``univfd``, see published.py) hold their
authors' head tensors under ``rine.*`` / ``univfd.*`` and run the whole backbone.

Loading order, cheapest first, nothing built until everything that can be checked is: the header
size and the content checksum (tensorfile), the metadata schema (schema.py), every tensor's name,
dtype, shape and finiteness against what the metadata claims (shapes computed on the meta device,
so a file claiming a huge head allocates nothing), then the backbone, the head, and one neutral
image that must give a finite logit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from i2pscan import published, tensorfile
from i2pscan.io.files import file_sha256
from i2pscan.backbone import Backbone, load_backbone, recorded_weights
from i2pscan.io.preprocess import CropTransform, Preprocess
from i2pscan.io.decode import decode
from i2pscan.errors import I2PError
from i2pscan.features import autocast, check_precision
from i2pscan.head import DetectorHead, HeadConfig
from i2pscan.schema import check_detector_meta
from i2pscan.sensitivity import eligible_parameters
from i2pscan.sparse import attach
from i2pscan import inference

KIND = "detector"
META_KEYS = {
    "i2pscan_version", "created", "backbone", "preprocessing", "view", "last_block", "head", "threshold",
    "threshold_logit", "temperature", "target_fpr", "mask", "training", "calibration",
}
PREFIX = {"i2p": "head.", "rine": "rine.", "univfd": "univfd."}


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
    meta = {"architecture": "i2p", **meta}
    tensors = {f"head.{k}": v for k, v in head.state_dict().items()}
    for name, d in deltas.items():
        if d.indices is not None:
            small = d.indices.numel() == 0 or int(d.indices.max()) < 2**31
            tensors[f"delta.{name}.indices"] = d.indices.to(torch.int32 if small else torch.int64)
        tensors[f"delta.{name}.values"] = d.values.float()
    tensorfile.write(path, KIND, tensors, meta)



class Detector:
    """A backbone cut after L* with its delta attached, and the head: images in, probabilities out.

    ``Detector.load(path)`` is the way in; ``score`` the way out.
    """

    def __init__(self, backbone: Backbone, head: torch.nn.Module, meta: dict, sha256: str, path: str,
                 precision: str = "auto"):
        self.backbone = backbone
        self.head = head.eval()
        self.meta = meta
        self.sha256 = sha256
        self.path = path
        self.architecture = meta.get("architecture", "i2p")
        self.precision = self._default_precision() if check_precision(precision) == "auto" else precision

    def _default_precision(self) -> str:
        """The arithmetic a detector's numbers were made in: a published detector's parity with its
        authors' model holds in fp32; an I2P detector's threshold was fitted on the logits of its
        training device (bf16 on CUDA, fp32 on a CPU; files from before this was recorded: bf16).
        It matters only on CUDA (a CPU always computes in fp32)."""
        if self.architecture != "i2p":
            return "fp32"
        return self.meta.get("training", {}).get("arithmetic", "bf16")

    @property
    def name(self) -> str:
        """The shipped name (``rine-2class``) or the file path: what tables and logs call it."""
        return published.shipped_name(self.path) or self.path

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
        return list(self.head.config.layers) if self.architecture == "i2p" else []

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.meta["preprocessing"])

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", pretrained: str | None = None,
             precision: str = "auto") -> "Detector":
        """Read and verify a detector file (or a shipped detector by name), then build the model on
        ``device``. ``precision`` (``auto``, ``bf16``, ``fp32``): the backbone's arithmetic on CUDA;
        ``auto`` is fp32 for published detectors (their authors' numbers) and, for I2P ones, the
        arithmetic their threshold was fitted in (``training.arithmetic``).

        ``pretrained`` points at the backbone's weights when the recorded source is not available
        here (a local file on another machine, or an offline machine with a copy of the weights).
        Raises I2PError when the file is not a detector, is damaged, or does not match the backbone.
        """
        check_precision(precision)
        path = published.resolve(path)
        _, meta, tensors = tensorfile.read(path, (KIND,))
        architecture = check_detector_meta(meta, path)
        _check_tensors(architecture, meta, tensors, path)
        if architecture == "i2p":
            backbone, head = _build_i2p(meta, tensors, path, device, pretrained)
        else:
            backbone, head = _build_published(architecture, meta, tensors, path, device, pretrained)
        detector = cls(backbone, head, meta, file_sha256(path), path, precision)
        detector._check_neutral()
        return detector

    def _check_neutral(self) -> None:
        """A detector that cannot score a mean-colour image is broken (huge or degenerate
        weights): refuse it now rather than blame every image of a scan."""
        size = self.preprocess.crop_size
        logit = self.logits(torch.zeros(1, 3, size, size))
        if not bool(torch.isfinite(logit).all()):
            raise I2PError(f"{self.path}: gives no finite score for a neutral (mean-colour) image; its weights "
                           f"are broken")

    @torch.no_grad()
    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Raw head logits of preprocessed crops [B, 3, S, S] (uncalibrated). An I2P detector goes
        through ``inference.logits``, the function its validation used."""
        if self.architecture == "i2p":
            return inference.logits(self.backbone, self.head, self.meta["view"], pixels, self.precision)
        pixels = torch.as_tensor(pixels).to(self.device, non_blocking=True)
        with autocast(self.device, self.precision):
            features = (self.backbone.ln2_class_tokens(pixels) if self.architecture == "rine"
                        else self.backbone.embed(pixels))
        with torch.autocast(self.device.type, enabled=False):  # heads run in fp32, as I2P's do
            return self.head(features.float()).float()

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
                image = decode(os.fspath(image), rgb=self.preprocess.rgb_mode).image
            if image is not None:
                crops.append(transform(image.convert("RGB"), i))
                where.append(i)
        if crops:
            out[where] = self.score(torch.cat(crops))
        return out


def _check_tensors(architecture: str, meta: dict, tensors: dict[str, torch.Tensor], path: str) -> None:
    """Every tensor as finetune (or the conversion script) writes it: the expected names, float32
    heads and values, int32 indices (int64 only where int32 cannot hold them), the shapes the
    metadata's configuration implies, finite values. Nothing is allocated for the check."""

    def bad(what: str) -> I2PError:
        return I2PError(f"{path}: {what}; the detector file is damaged or was edited")

    prefix = PREFIX[architecture]
    for key in tensors:
        if not key.startswith(prefix) and not (architecture == "i2p" and key.startswith("delta.")):
            raise bad(f"unexpected tensor {key} in a {architecture} detector")
    with torch.device("meta"):
        if architecture == "i2p":
            try:
                expected = DetectorHead(HeadConfig.from_dict(meta["head"]["config"])).state_dict()
            except (I2PError, ValueError, TypeError) as exc:
                raise bad(f"head configuration: {exc}") from None
        else:
            expected = published.build_head(architecture, meta["head"]["config"]).state_dict()
    present = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
    missing, extra = sorted(set(expected) - set(present)), sorted(set(present) - set(expected))
    if missing or extra:
        raise bad(f"head tensors do not match its configuration (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, want in expected.items():
        t = present[name]
        if t.dtype != torch.float32:
            raise bad(f"tensor {prefix}{name} is {str(t.dtype).replace('torch.', '')}, not float32")
        if t.shape != want.shape:
            raise bad(f"tensor {prefix}{name} has shape {tuple(t.shape)}, its configuration says {tuple(want.shape)}")
    for key, t in tensors.items():
        if key.endswith(".values") and t.dtype != torch.float32:
            raise bad(f"tensor {key} is {str(t.dtype).replace('torch.', '')}, not float32")
        if key.endswith(".indices"):
            if t.dtype not in (torch.int32, torch.int64) or t.dim() != 1:
                raise bad(f"tensor {key} is not a 1-D int32 index list")
            if t.dtype == torch.int64 and t.numel() and int(t.max()) < 2**31:
                raise bad(f"tensor {key} is int64 although its indices fit int32 (not as i2pscan writes it)")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise bad(f"tensor {key} holds NaN or infinite values")
    if architecture == "i2p":
        recorded = meta["mask"]["tensors"]
        deltas = sorted({k[len("delta."):].rsplit(".", 1)[0] for k in tensors if k.startswith("delta.")})
        if sorted(recorded) != deltas:
            raise bad(f"its delta tensors ({len(deltas)}) do not match the tuned tensors it records ({len(recorded)})")


def _build_i2p(meta: dict, tensors: dict[str, torch.Tensor], path: str, device, pretrained) -> tuple[Backbone, DetectorHead]:
    recorded = meta["backbone"]
    backbone = load_backbone(recorded["name"], recorded_weights(recorded, pretrained), device=device,
                             quick_gelu=bool(recorded["model_config"]["quick_gelu"]))
    if backbone.sha256 != recorded["sha256"]:
        raise I2PError(f"{path}: backbone weights differ from those it was trained on "
                       f"(sha256 {backbone.sha256[:12]}… here, {recorded['sha256'][:12]}… recorded)")
    _check_backbone_shape(backbone, meta, path)
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
        module.values.data.copy_(deltas[name].values.reshape(module.values.shape).to(module.values.device))
    return backbone, _build_head(meta, tensors, path, backbone.device)


def _build_published(architecture: str, meta: dict, tensors: dict[str, torch.Tensor], path: str, device,
                     pretrained) -> tuple[Backbone, torch.nn.Module]:
    recorded = meta["backbone"]
    backbone = load_backbone(recorded["name"], recorded_weights(recorded, pretrained), device=device,
                             quick_gelu=bool(recorded["model_config"]["quick_gelu"]), want_hash=False)
    _check_backbone_shape(backbone, meta, path)
    config = meta["head"]["config"]
    if architecture == "rine" and (config["blocks"] != backbone.num_blocks or config["in_dim"] != backbone.width):
        raise I2PError(f"{path}: RINE head for {config['blocks']} blocks of width {config['in_dim']}; the backbone "
                       f"has {backbone.num_blocks} of width {backbone.width}")
    out_dim = backbone.visual.proj.shape[1] if backbone.visual.proj is not None else backbone.width
    if architecture == "univfd" and config["in_dim"] != out_dim:
        raise I2PError(f"{path}: UnivFD head for embeddings of {config['in_dim']}; the backbone gives {out_dim}")
    head = published.build_head(architecture, config)
    prefix = PREFIX[architecture]
    head.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()}, strict=True)
    return backbone, head.to(backbone.device)


def _check_backbone_shape(backbone: Backbone, meta: dict, path: str) -> None:
    recorded = meta["backbone"]
    if (backbone.num_blocks, backbone.width) != (recorded["num_blocks"], recorded["width"]):
        raise I2PError(f"{path}: records a backbone of {recorded['num_blocks']} blocks of width {recorded['width']}; "
                       f"{backbone.name} here has {backbone.num_blocks} of width {backbone.width}")
    if backbone.preprocessing()["crop_size"] != meta["preprocessing"]["crop_size"]:
        raise I2PError(f"{path}: crop size {meta['preprocessing']['crop_size']} does not match the backbone")


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
