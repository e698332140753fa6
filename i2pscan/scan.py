"""The batch scanner: find files, decode them in worker processes, score them, yield one row each.

Every input file gives exactly one row: a score and a verdict, or an ``error`` verdict with a
message. Rows come out in discovery order. A decoder that crashes or hangs its worker process
costs that one file an error row (pool.DecodePool knows which file each worker holds), never the run.
"""

from __future__ import annotations

import fnmatch
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator, Sequence


from . import __version__, console, inference
from .decode import CropTransform, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from .pool import Batch, DEFAULT_FILE_TIMEOUT_S, FileWork, Item, scan_batches
from .detector import Cut, Detector
from .errors import I2PError, short_path
from .provenance import AI, EvidenceReader, unread
from .report import ReportWriter, mtime_of, path_columns

COMBINE = ("mean", "max")
EVIDENCE = ("all", "model")


@dataclass(frozen=True)
class DiscoverOptions:
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    hidden: bool = False
    follow_symlinks: bool = False
    exclude: tuple[str, ...] = ()


def discover(inputs: Sequence[str], options: DiscoverOptions = DiscoverOptions(),
             stdin: Iterable[bytes] | None = None) -> list[str]:
    """Expand files, folders (recursively, sorted) and ``-`` (paths on stdin) into a file list.

    A file named explicitly (argument or stdin) is scanned whatever its extension, and a symlink
    named explicitly is followed (as ``find -H`` does); in folders, files are picked by extension
    (case-insensitive), hidden names are skipped unless ``hidden``, symlinks are not followed
    unless ``follow_symlinks`` (then without loops), and ``exclude`` globs match the path below the
    folder or the bare name. Each file appears once. A folder named explicitly that holds no image
    file gets a warning line. Raises I2PError, before any work, for an argument that does not
    exist; a missing path read from stdin, or a folder that cannot be listed, is kept so that it
    becomes an error row.
    """
    return list(iter_discover(inputs, options, stdin))


def iter_discover(inputs: Sequence[str], options: DiscoverOptions = DiscoverOptions(),
                  stdin: Iterable[bytes] | None = None) -> Iterator[str]:
    """:func:`discover`, streamed: paths come out as folders are listed, so a tree of millions of
    files is never held as a list (only one folder's entries at a time, plus, when several
    inputs could overlap, the set of paths already given). Arguments are checked first."""
    for item in inputs:
        if item != "-" and not os.path.lexists(item):
            raise I2PError(f"no such file or folder: {short_path(item)}")
    return _discovered(inputs, options, stdin)


def _discovered(inputs: Sequence[str], options: DiscoverOptions, stdin: Iterable[bytes] | None) -> Iterator[str]:
    seen: set[str] | None = None if len(inputs) == 1 and inputs[0] != "-" else set()
    extensions = tuple(e.lower().lstrip(".") for e in options.extensions)
    for item in inputs:  # paths read from stdin are data: one that is missing becomes an error row
        for path in (_stdin_paths(stdin) if item == "-" else [item]):
            folder = os.path.isdir(path)
            images = 0
            for f in (_walk(path, extensions, options) if folder else [path]):
                images += 1
                if seen is None:
                    yield f
                elif f not in seen:
                    seen.add(f)
                    yield f
            if folder and not images:
                console.warn(f"{short_path(path)} is a folder with no image files to scan "
                             f"(--ext, --hidden change what is picked up)")


def _stdin_paths(stdin: Iterable[bytes] | None) -> list[str]:
    """Paths on stdin, NUL-separated when the input holds a NUL, else one per line. Names are
    kept byte for byte: a ``\\r`` before the newline is part of the name (convert CRLF lists with
    ``tr -d '\\r'``); empty lines are skipped."""
    data = (stdin if stdin is not None else sys.stdin.buffer).read()
    sep = b"\0" if b"\0" in data else b"\n"
    return [os.fsdecode(p) for p in data.split(sep) if p]


def _walk(root: str, extensions: tuple[str, ...], options: DiscoverOptions) -> Iterator[str]:
    seen: set[tuple[int, int]] = set()

    def excluded(rel: str, name: str) -> bool:
        return any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(name, g) for g in options.exclude)

    def visit(folder: str, rel_folder: str) -> Iterator[str]:
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:  # a symlink loop, or a folder reached twice
                return
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            console.warn(f"cannot list {short_path(folder)}: {exc.strerror or exc}")
            yield folder  # an error row, so that the scan's exit code says something was unreadable
            return
        for entry in entries:
            name = entry.name
            rel = os.path.join(rel_folder, name) if rel_folder else name
            if (name.startswith(".") and not options.hidden) or excluded(rel, name):
                continue
            try:
                is_link = entry.is_symlink()
                if is_link and not options.follow_symlinks:
                    continue
                if entry.is_dir(follow_symlinks=True):
                    yield from visit(entry.path, rel)
                elif os.path.splitext(name)[1][1:].lower() in extensions:
                    yield entry.path
            except OSError:
                yield entry.path  # unreadable entry: let decoding report it as an error row

    yield from visit(root, "")


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
    combined = inference.combine(detector.logits(batch.pixels), options.crops, options.combine)
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
