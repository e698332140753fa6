"""Report rows: one per input file, typed as the Parquet schema has them, and the verdict policy.

Every input file gives exactly one row: a score and a verdict, or an ``error`` verdict with a
message. With a model, the verdict is ``synthetic`` at or above the cut and ``real`` below it, and
(``evidence="all"``) a file whose own metadata declares AI is ``synthetic`` whatever its score;
without one (``--metadata-only``) metadata declaring AI gives ``synthetic``, a validating C2PA
capture ``real``, anything else ``unknown``.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Sequence, TypedDict

from i2pscan.errors import valid_text
from i2pscan.io.pool import Batch
from i2pscan.io.work import Item
from i2pscan.provenance.evidence import AI, unread
from i2pscan.report.schema import COLUMNS, mtime_of, path_columns

if TYPE_CHECKING:
    from i2pscan.model.detector import Cut, Detector
    from i2pscan.scan.options import ScanOptions


class Row(TypedDict):
    """One report row; the keys are the report schema's columns (report.schema.SCHEMA), in order."""

    path: str
    path_raw: bytes | None
    size_bytes: int | None
    mtime: datetime | None
    format: str | None
    width: int | None
    height: int | None
    score: float | None
    logit: float | None
    verdict: str
    flagged_by: str | None
    reason: str | None
    error: str | None
    sha256: str | None
    provenance: str | None
    generator: str | None
    c2pa: str | None
    provenance_detail: str | None


def make_row(path: str, item: Item, scored: tuple[float, float] | None, cut: float | None,
             evidence: str = "all", threshold: float | None = None) -> Row:
    """The row of ``path`` from what its worker read (``item``) and what the model made of it
    (``scored``: (logit, calibrated score), None when it was not scored). ``cut`` is the logit at
    or above which a file is flagged, ``threshold`` the same as a probability (for the reason);
    None for a --metadata-only row. ``flagged_by`` says what flagged the file (``model``,
    ``metadata``, ``both``, or None), ``reason`` why, in one sentence. Every string in the row is
    valid Unicode."""
    info = item.info
    text, raw = path_columns(path)
    columns = dict(info.provenance or unread())
    said = columns.pop("metadata_reason", None)
    declared = columns["provenance"]
    if cut is None:  # no model: the metadata decides, or says nothing
        readable = info.size_bytes is not None and info.error is None
        logit = score = None
        verdict = ("synthetic" if declared in AI else "real" if declared == "captured" else "unknown") if readable \
            else "error"
        error = None if readable else (info.error or "not read")
        flagged_by = "metadata" if verdict == "synthetic" else None
        reason = (said or "nothing in its metadata declares AI or a trusted capture") if readable else None
    else:
        ok = scored is not None and info.error is None and math.isfinite(scored[0])
        logit, score = scored if ok else (None, None)
        if scored is not None and not ok and info.error is None:
            info.error = "the model gave a non-finite score"
        by_model = ok and logit >= cut
        by_metadata = evidence == "all" and declared in AI  # declared AI flags the file; the row keeps the score
        verdict = "synthetic" if by_model or by_metadata else "real" if ok else "error"
        error = None if ok else (info.error or "not scored")
        flagged_by = "both" if by_model and by_metadata else "model" if by_model else "metadata" if by_metadata else None
        said_model = _score_sentence(score, threshold, by_model) if ok else None
        if by_metadata:
            reason = "; ".join(x for x in (said, said_model) if x)
        elif ok:
            ignored = declared in AI and said
            reason = said_model + (f"; its metadata declares AI, which --evidence model leaves out: {said}" if ignored
                                   else f"; {said}" if said and declared == "captured" else "")
        else:
            reason = None
    return Row(path=valid_text(text), path_raw=raw, size_bytes=info.size_bytes, mtime=mtime_of(info.mtime),
               format=_text(info.format), width=info.width, height=info.height, score=score, logit=logit,
               verdict=verdict, flagged_by=flagged_by, reason=_text(reason), error=_text(error),
               sha256=info.sha256, **columns)


def _text(value: str | None) -> str | None:
    return valid_text(value) if isinstance(value, str) else value


def _score_sentence(score: float, threshold: float | None, flagged: bool) -> str:
    if threshold is None:
        return f"model score {score:.3g}"
    digits = 3
    while digits < 8 and f"{score:.{digits}g}" == f"{threshold:.{digits}g}":
        digits += 1
    return f"model score {score:.{digits}g} {'≥' if flagged else '<'} threshold {threshold:.{digits}g}"


def batch_rows(detector: Detector | None, batch: Batch, paths: Sequence[str], options: ScanOptions,
               cut: Cut | None) -> list[Row]:
    """The rows of one decoded batch (``paths`` indexed by the items' positions), scored by
    ``detector`` at ``cut``: what every executor hands back."""
    scored: dict[int, tuple[float, float]] = {}
    if detector is not None and batch.encoded:  # --decode-on device: JPEGs decoded where the model runs
        from i2pscan.io.device_decode import decode_encoded
        from i2pscan.io.preprocess import CropTransform
        from i2pscan.io.work import FileWork

        transform = CropTransform(detector.preprocess, options.crops)
        batch = decode_encoded(batch, paths, transform, detector.device,
                               FileWork(transform, max_pixels=options.max_pixels, uint8=True))
    if detector is not None and batch.pixels is not None:
        from i2pscan.model.inference import score_batch

        logits, scores = score_batch(detector.model, batch.pixels, options.crops, options.combine, cut.temperature,
                                     batch.extents)
        scored = dict(zip(batch.ok, zip(logits, scores)))
    return [make_row(paths[item.index], item, scored.get(pos), None if cut is None else cut.logit, options.evidence,
                     None if cut is None else cut.threshold)
            for pos, item in enumerate(batch.items)]


@dataclass
class ScanSummary:
    """Counts and timing of one scan run (earlier runs of a resumed report not included)."""

    files: int = 0
    flagged: int = 0
    errors: int = 0
    skipped_done: int = 0  # already in the report (resume)
    seconds: float = 0.0
    threshold: float | None = 0.0  # None: a --metadata-only scan
    by_metadata: int = 0  # flagged by the file's own metadata alone (flagged_by "metadata")
    cut: float | None = None  # the logit at or above which a file is flagged
    flagged_by: dict[str, int] = field(default_factory=dict)  # model, metadata, both -> files
    not_scorable: dict[str, int] = field(default_factory=dict)  # format -> error rows of files no detector scores

    @property
    def images_per_second(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    def count(self, row: Row) -> None:
        """Add one row to the counts."""
        self.files += 1
        self.flagged += row["verdict"] == "synthetic"
        self.errors += row["verdict"] == "error"
        by = row.get("flagged_by")
        if by:
            self.flagged_by[by] = self.flagged_by.get(by, 0) + 1
        self.by_metadata += by == "metadata"
        if row["error"] and ": not scored;" in row["error"]:
            self.not_scorable[row["format"] or "?"] = self.not_scorable.get(row["format"] or "?", 0) + 1


def row_json(row: Row) -> str:
    """One JSON object per file (``--format jsonl``); raw path bytes, when present, as base64."""
    out = {k: row.get(k) for k in COLUMNS if k != "path_raw"}
    if out["mtime"] is not None:
        out["mtime"] = out["mtime"].isoformat()
    if isinstance(out.get("provenance_detail"), str):  # an object in the JSON line, not a string in a string
        out["provenance_detail"] = json.loads(out["provenance_detail"])
    for k in ("score", "logit"):
        if out[k] is not None:
            out[k] = None if math.isnan(out[k]) else round(float(out[k]), 6)
    if row.get("path_raw") is not None:
        out["path_raw_b64"] = base64.b64encode(row["path_raw"]).decode()
    return json.dumps(out, ensure_ascii=False)
