"""What a scan does, resolved once: the options given, then the detector's, then the defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from i2pscan.errors import ConfigError
from i2pscan.io.decode import DEFAULT_MAX_PIXELS
from i2pscan.io.formats import SCANNED_EXTENSIONS
from i2pscan.io.pool import DEFAULT_FILE_TIMEOUT_S, default_workers
from i2pscan.model.policy import COMBINE

EVIDENCE = ("all", "model")
DECODE_ON = ("cpu", "device")
# options that only a model uses: given with metadata_only, they are refused
MODEL_OPTIONS = ("threshold", "crops", "combine", "pretrained", "precision", "max_pixels", "decode_on",
                 "force_policy")


@dataclass(frozen=True)
class ScanOptions:
    crops: int = 1
    combine: str = "mean"
    threshold: float | None = None  # a probability overriding the detector's threshold
    batch_size: int = 32
    workers: int = 0
    want_hash: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    file_timeout_s: float = DEFAULT_FILE_TIMEOUT_S  # a worker silent this long on one file is stopped
    perturbation: str | None = None  # evaluation only: degrade each image first (io.pixels.perturb)
    evidence: str = "all"  # "all": metadata declaring AI flags a file whatever its score; "model": score only
    c2pa_trust: str | None = None  # a PEM bundle of C2PA trust anchors (path)
    metadata_only: bool = False  # no model at all: verdicts from provenance evidence alone
    read_provenance: bool = True  # False: skip the evidence reader (a benchmark's baseline; the columns stay null)
    decode_on: str = "cpu"  # "device": JPEGs decoded where the model runs (nvjpeg on CUDA; not bit-identical)
    force_policy: bool = False  # scan with a crop policy the detector has no threshold for (centre-crop one)

    def __post_init__(self):
        if self.evidence not in EVIDENCE:
            raise ConfigError(f"`evidence` must be one of {', '.join(EVIDENCE)}")
        if self.crops < 1:
            raise ConfigError("`crops` must be at least 1")
        if self.combine not in COMBINE:
            raise ConfigError(f"`combine` must be one of {', '.join(COMBINE)}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ConfigError("`threshold` must be a probability strictly between 0 and 1")
        if self.decode_on not in DECODE_ON:
            raise ConfigError(f"`decode_on` must be one of {', '.join(DECODE_ON)}")
        if self.metadata_only and self.evidence == "model":
            raise ConfigError("`metadata_only` and `evidence` model contradict each other")

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_options(batch_size_default: int = 32, **given) -> ScanOptions:
    """ScanOptions from what was given (None: not given), with the defaults where nothing was:
    ``batch_size_default`` (the device's), the CPU count's decoding workers. Raises I2PError for
    an unknown option."""
    known = {f.name for f in fields(ScanOptions)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ConfigError(f"unknown scan option {unknown[0]!r}", f"options: {', '.join(sorted(known))}")
    chosen = {k: v for k, v in given.items() if v is not None}
    chosen.setdefault("batch_size", batch_size_default)
    chosen.setdefault("workers", default_workers())
    return ScanOptions(**chosen)


def check_metadata_only(given: dict) -> None:
    """Refuse, naming it, an option that only a model uses in a scan that runs none."""
    used = [name for name in MODEL_OPTIONS if given.get(name) is not None]
    if used:
        raise ConfigError(f"`{used[0]}` needs a model; `metadata_only` runs none")


def default_extensions(metadata_only: bool = False) -> tuple[str, ...]:
    """The extensions picked up in folders, model scan or not: every image extension, those the
    detectors cannot score (camera raw, SVG) included, so that each such file gets a row saying
    why rather than being left out silently (io.formats)."""
    return SCANNED_EXTENSIONS
