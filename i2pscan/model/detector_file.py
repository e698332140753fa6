"""Detector files (DESIGN §2): writing them, and reading them back verified before anything is built.

A detector file is safetensors: the head's tensors (``head.*``), and for every tuned backbone
tensor its flat indices and delta values (``delta.<name>.indices`` / ``delta.<name>.values``; a
dense delta has no indices), with JSON metadata that says everything needed to rebuild and trust
it. Published detectors (``architecture`` ``rine`` or ``univfd``, see published.py) hold their
authors' head tensors under ``rine.*`` / ``univfd.*``.

Reading checks, cheapest first, before any model is built: the header size and the content
checksum (tensorfile), the metadata schema (schema.py), and every tensor's name, dtype, shape and
finiteness against what the metadata claims (shapes computed on the meta device, so a file
claiming a huge head allocates nothing). Any mismatch is refused in one line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from i2pscan.errors import FileRefused, I2PError
from i2pscan.io.files import file_sha256
from i2pscan.model import published, tensorfile
from i2pscan.model.head import DetectorHead, HeadConfig
from i2pscan.model.schema import check_detector_meta

KIND = "detector"
META_KEYS = {
    "i2pscan_version", "created", "backbone", "preprocessing", "view", "last_block", "head", "threshold",
    "threshold_logit", "temperature", "target_fpr", "mask", "training", "calibration",
}
PREFIX = {"i2p": "head.", "rine": "rine.", "univfd": "univfd."}


@dataclass
class Delta:
    """The change to one backbone tensor: values at flat ``indices`` (or dense when ``None``)."""

    indices: torch.Tensor | None
    values: torch.Tensor


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


@dataclass
class DetectorFile:
    """A detector file that passed every check that needs no backbone."""

    path: str
    architecture: str  # i2p, rine or univfd
    meta: dict
    head: dict[str, torch.Tensor]  # the head's state dict (prefix removed)
    deltas: dict[str, Delta]  # i2p: by backbone parameter name
    sha256: str  # of the file's bytes: the detector's identity in reports


def read_detector(path: str | os.PathLike) -> DetectorFile:
    """Read and verify a detector file (see the module docstring). Raises I2PError."""
    path = os.fspath(path)
    _, meta, tensors = tensorfile.read(path, (KIND,))
    architecture = check_detector_meta(meta, path)
    _check_tensors(architecture, meta, tensors, path)
    prefix = PREFIX[architecture]
    head = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    deltas = _deltas(tensors, path) if architecture == "i2p" else {}
    return DetectorFile(path, architecture, meta, head, deltas, file_sha256(path))


def check_delta(name: str, delta: Delta, param: torch.Tensor, path: str) -> None:
    """Refuse a delta that does not fit the backbone tensor ``param`` it claims to change."""
    if delta.indices is None:
        if delta.values.shape != param.shape:
            raise FileRefused(f"{path}: dense delta for {name} has shape {tuple(delta.values.shape)}, "
                              f"the backbone's is {tuple(param.shape)}")
        return
    idx = delta.indices
    if idx.dtype not in (torch.int32, torch.int64) or idx.dim() != 1 or idx.shape != delta.values.shape:
        raise FileRefused(f"{path}: delta for {name} has malformed indices")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= param.numel()):
        raise FileRefused(f"{path}: delta indices for {name} fall outside the tensor")
    if idx.numel() != torch.unique(idx).numel():
        raise FileRefused(f"{path}: delta indices for {name} repeat")


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


def _deltas(tensors: dict[str, torch.Tensor], path: str) -> dict[str, Delta]:
    deltas: dict[str, Delta] = {}
    for key in tensors:
        if key.startswith("delta.") and key.endswith(".values"):
            name = key[len("delta."):-len(".values")]
            deltas[name] = Delta(tensors.get(f"delta.{name}.indices"), tensors[key])
        elif key.startswith("delta.") and key.endswith(".indices"):
            if key[:-len(".indices")] + ".values" not in tensors:
                raise FileRefused(f"{path}: {key} has no values")
        elif key.startswith("delta."):
            raise FileRefused(f"{path}: unexpected tensor {key}")
    return deltas
