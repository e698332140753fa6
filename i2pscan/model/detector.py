"""The Detector: a verified detector file built into a model on a device (DESIGN §1.3, §2).

An I2P detector is the backbone cut after L* with its delta attached as a separate term (never
merged into W0: see sparse.attach) and the head over the critical layers; a published one (RINE,
UnivFD) is its authors' head on the whole backbone. Loading builds nothing until the file has
passed every check (detector_file.read_detector), then checks that the backbone matches what the
file records and that one neutral image gives a finite logit.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from i2pscan.errors import FileRefused, I2PError
from i2pscan.io.preprocess import CropTransform, Preprocess
from i2pscan.model import inference, published
from i2pscan.model.backbone import Backbone, load_backbone
from i2pscan.model.detector_file import DetectorFile, check_delta, read_detector
from i2pscan.model.device import check_precision
from i2pscan.model.policy import DEFAULT_POLICY, policy_key
from i2pscan.model.shipped import resolve, shipped_name
from i2pscan.model.head import DetectorHead, HeadConfig
from i2pscan.model.sparse import attach
from i2pscan.model.weights import recorded_weights


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
        self.pretrained: str | None = None  # the weights given at load, when the recorded ones were not used
        self.model = inference.Model(backbone, self.head, self.architecture, meta.get("view", "cls"), self.precision,
                                     Preprocess.from_dict(meta["preprocessing"]) if "preprocessing" in meta else None)

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
        return shipped_name(self.path) or self.path

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
        file = read_detector(resolve(path))
        if file.architecture == "i2p":
            backbone, head = _build_i2p(file, device, pretrained)
        else:
            backbone, head = _build_published(file, device, pretrained)
        detector = cls(backbone, head, file.meta, file.sha256, file.path, precision)
        detector.pretrained = pretrained
        detector._check_neutral()
        return detector

    def _check_neutral(self) -> None:
        """A detector that cannot score a mean-colour image is broken (huge or degenerate
        weights): refuse it now rather than blame every image of a scan."""
        size = self.preprocess.crop_size
        logit = self.logits(torch.zeros(1, 3, size, size))
        if not bool(torch.isfinite(logit).all()):
            raise FileRefused(f"{self.path}: gives no finite score for a neutral (mean-colour) image; its weights "
                              f"are broken")

    def logits(self, pixels) -> torch.Tensor:
        """Raw head logits of preprocessed crops [B, 3, S, S] (float, normalised; or uint8 as a scan
        moves them) (uncalibrated): ``inference.logits``, the function its validation used."""
        return inference.logits(self.model, pixels)

    def probabilities(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        """Calibrated probability of being synthetic: sigmoid(logit / temperature)."""
        return inference.probabilities(logits, self.temperature if temperature is None else temperature)

    def cut(self, crops: int = 1, combine: str = "mean", threshold: float | None = None) -> Cut:
        """The threshold and temperature for a crop policy: those fitted for it at finetune time,
        else the centre-crop ones (``fitted`` False: the caller warns). ``threshold``: a probability
        given by the user, mapped through the policy's temperature."""
        key = policy_key(crops, combine)
        fitted = self.meta.get("thresholds", {}).get(key)
        if fitted is None and key == DEFAULT_POLICY:
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
        """Calibrated probabilities (float32, centre crop) for a batch of preprocessed crops, or for
        a list of file paths (decoded as a scan decodes them; NaN for a file that cannot be decoded)
        or PIL images."""
        if isinstance(images, torch.Tensor):
            return self.probabilities(self.logits(images)).cpu().numpy().astype(np.float32)
        out = np.full(len(images), np.nan, np.float32)
        paths = [(i, os.fspath(p)) for i, p in enumerate(images) if isinstance(p, (str, os.PathLike))]
        if paths:
            try:
                z, kept = inference.file_logits(self.model, [p for _, p in paths], self.preprocess, description="score")
            except I2PError:  # none decodes
                z, kept = {}, []
            if kept:
                out[[paths[k][0] for k in kept]] = self.probabilities(torch.from_numpy(z[DEFAULT_POLICY])).numpy()
        pictures = [(i, im) for i, im in enumerate(images) if not isinstance(im, (str, os.PathLike))]
        if pictures:
            transform = CropTransform(self.preprocess, 1)
            crops = torch.cat([transform(im.convert("RGB"), i) for i, im in pictures])
            out[[i for i, _ in pictures]] = self.score(crops)
        return out


def _build_i2p(file: DetectorFile, device, pretrained) -> tuple[Backbone, DetectorHead]:
    meta, path = file.meta, file.path
    recorded = meta["backbone"]
    backbone = load_backbone(recorded["name"], recorded_weights(recorded, pretrained), device=device,
                             quick_gelu=bool(recorded["model_config"]["quick_gelu"]))
    if backbone.sha256 != recorded["sha256"]:
        raise FileRefused(f"{path}: backbone weights differ from those it was trained on "
                          f"(sha256 {backbone.sha256[:12]}… here, {recorded['sha256'][:12]}… recorded)")
    _check_backbone_shape(backbone, meta, path)
    last_block = int(meta["last_block"])
    if not 1 <= last_block <= backbone.num_blocks:
        raise FileRefused(f"{path}: L* = {last_block} is outside the backbone's 1..{backbone.num_blocks} blocks")
    eligible = backbone.tunable_parameters(last_block)
    backbone.truncate(last_block)
    deltas = file.deltas
    for name, delta in deltas.items():
        if name not in eligible:
            raise FileRefused(f"{path}: delta for {name}, which is not a tunable tensor of blocks 1..{last_block}")
        check_delta(name, delta, eligible[name], path)
    # the delta stays a separate float32 term, as in validation (never merged into W0: see sparse.attach)
    attached = attach(backbone, eligible, {n: d.indices for n, d in deltas.items()})
    for name, module in attached.items():
        module.values.requires_grad_(False)
        module.values.data.copy_(deltas[name].values.reshape(module.values.shape).to(module.values.device))
    return backbone, _build_head(file, backbone.device)


def _build_published(file: DetectorFile, device, pretrained) -> tuple[Backbone, torch.nn.Module]:
    architecture, meta, path = file.architecture, file.meta, file.path
    recorded = meta["backbone"]
    backbone = load_backbone(recorded["name"], recorded_weights(recorded, pretrained), device=device,
                             quick_gelu=bool(recorded["model_config"]["quick_gelu"]), want_hash=False)
    _check_backbone_shape(backbone, meta, path)
    config = meta["head"]["config"]
    if architecture == "rine" and (config["blocks"] != backbone.num_blocks or config["in_dim"] != backbone.width):
        raise FileRefused(f"{path}: RINE head for {config['blocks']} blocks of width {config['in_dim']}; the backbone "
                          f"has {backbone.num_blocks} of width {backbone.width}")
    out_dim = backbone.visual.proj.shape[1] if backbone.visual.proj is not None else backbone.width
    if architecture == "univfd" and config["in_dim"] != out_dim:
        raise FileRefused(f"{path}: UnivFD head for embeddings of {config['in_dim']}; the backbone gives {out_dim}")
    head = published.build_head(architecture, config)
    head.load_state_dict(file.head, strict=True)
    return backbone, head.to(backbone.device)


def _check_backbone_shape(backbone: Backbone, meta: dict, path: str) -> None:
    recorded = meta["backbone"]
    if (backbone.num_blocks, backbone.width) != (recorded["num_blocks"], recorded["width"]):
        raise FileRefused(f"{path}: records a backbone of {recorded['num_blocks']} blocks of width {recorded['width']}; "
                          f"{backbone.name} here has {backbone.num_blocks} of width {backbone.width}")
    if backbone.preprocessing()["crop_size"] != meta["preprocessing"]["crop_size"]:
        raise FileRefused(f"{path}: crop size {meta['preprocessing']['crop_size']} does not match the backbone")


def _build_head(file: DetectorFile, device: torch.device) -> DetectorHead:
    head = DetectorHead(HeadConfig.from_dict(file.meta["head"]["config"]))
    try:
        head.load_state_dict(file.head, strict=True)
    except RuntimeError as exc:
        raise FileRefused(f"{file.path}: head tensors do not match its recorded configuration") from exc
    return head.to(device)
