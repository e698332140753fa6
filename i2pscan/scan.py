"""The batch scanner: find files, decode them in worker processes, score them, yield one row each.

Every input file gives exactly one row: a score and a verdict, or an ``error`` verdict with a
message. Rows come out in discovery order. A decoder that crashes or hangs its worker process
costs that one file an error row (pool.DecodePool knows which file each worker holds), never the run.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Callable, Sequence


from i2pscan import __version__, console
from i2pscan.model import inference
from i2pscan.io.preprocess import CropTransform
from i2pscan.io.decode import DEFAULT_MAX_PIXELS
from i2pscan.io.pool import Batch, DEFAULT_FILE_TIMEOUT_S, scan_batches
from i2pscan.io.work import FileWork, Item
from i2pscan.model.detector import Cut, Detector
from i2pscan.errors import I2PError
from i2pscan.provenance.evidence import AI, EvidenceReader, unread
from i2pscan.report.writer import ReportWriter
from i2pscan.report.schema import mtime_of, path_columns

COMBINE = ("mean", "max")
EVIDENCE = ("all", "model")


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
    perturbation: str | None = None  # evaluation only: degrade each image first (data.perturb)
    evidence: str = "all"  # "all": metadata declaring AI flags a file whatever its score; "model": score only
    c2pa_trust: str | None = None  # a PEM bundle of C2PA trust anchors (path)
    metadata_only: bool = False  # no model at all: verdicts from provenance evidence alone
    read_provenance: bool = True  # False: skip the evidence reader (a benchmark's baseline; the columns stay null)

    def __post_init__(self):
        if self.evidence not in EVIDENCE:
            raise I2PError(f"--evidence must be one of {', '.join(EVIDENCE)}")
        if self.crops < 1:
            raise I2PError("--crops must be at least 1")
        if self.combine not in COMBINE:
            raise I2PError(f"--combine must be one of {', '.join(COMBINE)}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise I2PError("--threshold must be a probability strictly between 0 and 1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ScanSummary:
    files: int = 0
    flagged: int = 0
    errors: int = 0
    skipped_done: int = 0  # already in the report (resume)
    seconds: float = 0.0
    threshold: float | None = 0.0  # None: a --metadata-only scan
    by_metadata: int = 0  # flagged because the file's own metadata declares AI

    @property
    def images_per_second(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """The one-line summary printed after a scan."""
        why = ("by their metadata" if self.threshold is None
               else f"(threshold {self.threshold:.4f}" + (f"; {self.by_metadata} by their metadata)" if self.by_metadata
                                                          else ")"))
        text = (f"{self.files} file(s) scanned in {self.seconds:.1f} s ({self.images_per_second:.1f}/s): "
                f"{self.flagged} flagged as synthetic {why}, {self.errors} unreadable")
        return text + (f"; {self.skipped_done} already in the report" if self.skipped_done else "")


def report_metadata(detector: Detector | None, options: ScanOptions, inputs: Sequence[str],
                    on_ray: bool = False) -> dict:
    """What a report records about how it was made, the threshold and the arithmetic actually used
    included (``detector`` None: a --metadata-only scan; ``on_ray``: scored by Ray actors)."""
    if detector is None:
        return {"i2pscan_version": __version__, "detector_id": None, "detector_path": None, "detector": {},
                "options": options.to_dict(), "inputs": list(inputs), "started": now(), "threshold": None}
    return {"i2pscan_version": __version__, "detector_id": detector.id, "detector_path": os.path.abspath(detector.path),
            "detector": detector.meta, "options": options.to_dict(), "inputs": list(inputs), "started": now(),
            "threshold": choose_cut(detector, options).to_dict(), "arithmetic": arithmetic(detector, on_ray)}


def arithmetic(detector: Detector, on_ray: bool = False) -> dict:
    """Where the backbone ran and in what: ``bf16`` only on CUDA with a bf16 detector, else ``fp32``.
    Ray scorers use the cluster's GPUs where it has them, so both cases are recorded."""
    if on_ray:
        return {"device": "ray", "backbone": {"cuda": detector.precision, "cpu": "fp32"}}
    return {"device": str(detector.device),
            "backbone": "bf16" if detector.device.type == "cuda" and detector.precision == "bf16" else "fp32"}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def choose_cut(detector: Detector, options: ScanOptions) -> Cut:
    """The threshold and temperature fitted for the scan's crop policy (``Detector.cut``)."""
    return detector.cut(options.crops, options.combine, options.threshold)


def warn_if_unfitted(cut: Cut) -> None:
    if not cut.fitted:
        console.warn(f"the detector has no threshold fitted for --crops {cut.policy.replace(':', ' --combine ')}: "
                     f"using the centre-crop one, whose false-positive rate may differ; "
                     f"finetune with --crop-policies {cut.policy} to fit one")


def threshold_logit(detector: Detector, threshold: float | None, crops: int = 1, combine: str = "mean") -> float:
    """The logit at or above which a file is flagged: the policy's, or the given probability's."""
    return detector.cut(crops, combine, threshold).logit


def scan(detector: Detector | None, paths: Sequence[str], options: ScanOptions = ScanOptions(),
         writer: ReportWriter | None = None, on_row: Callable[[dict], None] | None = None,
         evidence: EvidenceReader | None = None) -> ScanSummary:
    """Score ``paths`` (skipping those ``writer`` already holds) and send each row to ``writer``
    and ``on_row``, in input order. Returns counts and timing.

    Every file's provenance evidence is read from the bytes decoding reads (``evidence``, or a
    reader built from ``options.c2pa_trust``). With ``options.metadata_only`` (``detector`` None)
    nothing is decoded and no model runs: the verdict is ``synthetic`` for metadata declaring AI,
    ``real`` for a validating C2PA capture, ``unknown`` otherwise; score and logit are null.
    """
    if (detector is None) != options.metadata_only:
        raise ValueError("a detector is needed unless metadata_only, and only then")
    evidence = evidence or EvidenceReader.from_trust_file(options.c2pa_trust)
    done = writer.done if writer is not None else set()
    todo = [p for p in paths if p not in done]
    summary = ScanSummary(skipped_done=len(paths) - len(todo))
    chosen = None
    if detector is not None:
        chosen = choose_cut(detector, options)
        warn_if_unfitted(chosen)
    cut = None if chosen is None else chosen.logit
    summary.threshold = None if chosen is None else chosen.threshold
    work = file_work(detector, options, evidence)
    started = time.monotonic()
    with console.progress(len(todo), "scan") as bar:
        for batch in scan_batches(todo, work, options.batch_size, options.workers,
                                  pin_memory=detector is not None and detector.device.type == "cuda",
                                  timeout_s=options.file_timeout_s):
            logits = _batch_logits(detector, batch, options, chosen.temperature) if chosen is not None else {}
            for pos, item in enumerate(batch.items):
                row = _row(todo[item.index], item, logits.get(pos), cut, options.evidence)
                count_row(summary, row, cut)
                if writer is not None:
                    writer.add(row)
                if on_row is not None:
                    on_row(row)
            bar.advance(len(batch.items), postfix=f"{summary.flagged} flagged, {summary.errors} errors")
    summary.seconds = time.monotonic() - started
    return summary


def file_work(detector: Detector | None, options: ScanOptions, evidence: EvidenceReader | None) -> FileWork:
    """What decoding workers do with each file for this scan (``detector`` None: --metadata-only)."""
    if detector is None:
        return FileWork(None, options.want_hash, evidence=evidence, header_only=True)
    return FileWork(CropTransform(detector.preprocess, options.crops), want_hash=options.want_hash,
                    max_pixels=options.max_pixels, perturbation=options.perturbation,
                    evidence=evidence if options.read_provenance else None)


def count_row(summary: ScanSummary, row: dict, cut: float | None) -> None:
    """Add one row to the summary's counts."""
    summary.files += 1
    summary.flagged += row["verdict"] == "synthetic"
    summary.errors += row["verdict"] == "error"
    below_cut = cut is None or row["logit"] is None or row["logit"] < cut
    summary.by_metadata += row["verdict"] == "synthetic" and row["provenance"] in AI and below_cut


def _batch_logits(detector: Detector, batch: Batch, options: ScanOptions,
                  temperature: float | None = None) -> dict[int, tuple[float, float]]:
    """{position in batch: (combined logit, calibrated score)} for the items that decoded."""
    if batch.pixels is None:
        return {}
    import torch

    combined = inference.combine(detector.logits(torch.as_tensor(batch.pixels)), options.crops, options.combine)
    scores = detector.probabilities(combined, temperature)
    return dict(zip(batch.ok, zip(combined.cpu().tolist(), scores.cpu().tolist())))


def _row(path: str, item: Item, scored: tuple[float, float] | None, cut: float | None, evidence: str = "all") -> dict:
    """One report row. ``cut`` None: a --metadata-only row."""
    info = item.info
    text, raw = path_columns(path)
    evidence_columns = info.provenance or unread()
    declared = evidence_columns["provenance"]
    if cut is None:  # no model: the metadata decides, or says nothing
        readable = info.size_bytes is not None and info.error is None
        logit = score = None
        verdict = ("synthetic" if declared in AI else "real" if declared == "captured" else "unknown") if readable \
            else "error"
        error = None if readable else (info.error or "not read")
    else:
        ok = scored is not None and info.error is None and math.isfinite(scored[0])
        logit, score = scored if ok else (None, None)
        if scored is not None and not ok and info.error is None:
            info.error = "the model gave a non-finite score"
        verdict = ("synthetic" if logit >= cut else "real") if ok else "error"
        error = None if ok else (info.error or "not scored")
        if evidence == "all" and declared in AI:  # declared AI flags the file; the row keeps the score
            verdict = "synthetic"
    return {
        "path": text,
        "path_raw": raw,
        "size_bytes": info.size_bytes,
        "mtime": mtime_of(info.mtime),
        "format": info.format,
        "width": info.width,
        "height": info.height,
        "score": score,
        "logit": logit,
        "verdict": verdict,
        "error": error,
        "sha256": info.sha256,
        **evidence_columns,
    }
