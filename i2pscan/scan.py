"""The batch scanner: find files, decode them in worker processes, score them, yield one row each.

Every input file gives exactly one row: a score and a verdict, or an ``error`` verdict with a
message. Rows come out in discovery order. A decoder that crashes its worker process costs that
one file an error row (the batch it was in is retried file by file), never the run.
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

import torch

from . import __version__, console, inference
from .decode import CropTransform, Decoded, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from .pool import Batch, collate, HeaderFiles, ImageFiles, Item, loader, PREFETCH_FACTOR
from .detector import Cut, Detector
from .errors import I2PError, one_line, short_path
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
    found: dict[str, None] = {}
    for item in inputs:
        if item != "-" and not os.path.lexists(item):
            raise I2PError(f"no such file or folder: {short_path(item)}")
    expanded: list[str] = []
    for item in inputs:  # paths read from stdin are data: one that is missing becomes an error row
        expanded.extend(_stdin_paths(stdin) if item == "-" else [item])
    extensions = tuple(e.lower().lstrip(".") for e in options.extensions)
    for path in expanded:
        if os.path.isdir(path):
            images = 0
            for f in _walk(path, extensions, options):
                found.setdefault(f, None)
                images += 1
            if not images:
                console.warn(f"{short_path(path)} is a folder with no image files to scan "
                             f"(--ext, --hidden change what is picked up)")
        else:
            found.setdefault(path, None)
    return list(found)


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
    batch_timeout_s: float = 600.0
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


def report_metadata(detector: Detector | None, options: ScanOptions, inputs: Sequence[str]) -> dict:
    """What a report records about how it was made, the threshold actually used included
    (``detector`` None: a --metadata-only scan)."""
    if detector is None:
        return {"i2pscan_version": __version__, "detector_id": None, "detector_path": None, "detector": {},
                "options": options.to_dict(), "inputs": list(inputs), "started": now(), "threshold": None}
    return {"i2pscan_version": __version__, "detector_id": detector.id, "detector_path": os.path.abspath(detector.path),
            "detector": detector.meta, "options": options.to_dict(), "inputs": list(inputs), "started": now(),
            "threshold": choose_cut(detector, options).to_dict()}


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
    if detector is None:
        cut = None
        summary.threshold = None
        dataset = HeaderFiles(todo, evidence, want_hash=options.want_hash)
    else:
        chosen = choose_cut(detector, options)
        warn_if_unfitted(chosen)
        cut = chosen.logit
        summary.threshold = chosen.threshold
        dataset = ImageFiles(todo, CropTransform(detector.preprocess, options.crops), want_hash=options.want_hash,
                             max_pixels=options.max_pixels, perturbation=options.perturbation,
                             evidence=evidence if options.read_provenance else None)
        if options.workers > 0 and todo:
            crop = detector.preprocess.crop_size
            check_shared_memory(min(options.batch_size, len(todo)) * options.crops * 3 * crop * crop * 4)
    started = time.monotonic()
    with console.progress(len(todo), "scan") as bar:
        for batch in robust_batches(dataset, options.batch_size, options.workers,
                                    pin_memory=detector is not None and detector.device.type == "cuda",
                                    timeout_s=options.batch_timeout_s):
            logits = _batch_logits(detector, batch, options, chosen.temperature) if chosen is not None else {}
            for pos, item in enumerate(batch.items):
                row = _row(todo[item.index], item, logits.get(pos), cut, options.evidence)
                summary.files += 1
                summary.flagged += row["verdict"] == "synthetic"
                summary.errors += row["verdict"] == "error"
                below_cut = cut is None or row["logit"] is None or row["logit"] < cut
                summary.by_metadata += row["verdict"] == "synthetic" and row["provenance"] in AI and below_cut
                if writer is not None:
                    writer.add(row)
                if on_row is not None:
                    on_row(row)
            bar.advance(len(batch.items), postfix=f"{summary.flagged} flagged, {summary.errors} errors")
    summary.seconds = time.monotonic() - started
    return summary


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


def check_shared_memory(nbytes: int) -> None:
    """Raise I2PError, before any work, when a batch of ``nbytes`` cannot go through shared
    memory, as decoding workers hand it over: under a file-size limit (``ulimit -f``, which
    workers inherit) smaller than a batch, or without a usable /dev/shm, every worker would fail
    where nobody sees it and the scan would wait on batches that never come."""
    fix = "raise the limit, lower --batch-size, or decode in this process with --workers 0"
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    except ImportError:
        limit = None
    if limit is not None and limit != resource.RLIM_INFINITY and limit < nbytes:
        raise I2PError(f"decoding workers cannot hand over a batch of {nbytes:,} bytes through shared memory: "
                       f"the file-size limit (ulimit -f) is {limit:,} bytes; {fix}")
    try:
        torch.empty(4096, dtype=torch.uint8).share_memory_()
    except (RuntimeError, OSError) as exc:
        raise I2PError(f"decoding workers cannot hand over batches through shared memory: {one_line(exc, 200)}; "
                       f"{fix}") from exc


# -- decoding that survives a crashing decoder ------------------------------------------------------


class _Subset(torch.utils.data.Dataset):
    """Some files of an ImageFiles; items keep their index in the whole dataset."""

    def __init__(self, dataset: ImageFiles, indices: list[int]):
        self.dataset, self.indices = dataset, indices

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]


def robust_batches(dataset: ImageFiles, batch_size: int, workers: int, pin_memory: bool = False,
                   timeout_s: float = 600.0) -> Iterator[Batch]:
    """Batches of ``dataset`` in order. If a worker process dies (a decoder crash) or stalls past
    ``timeout_s``, every file that may have been in flight is retried alone in a fresh worker;
    the one that fails again becomes an error row and the scan goes on. With ``workers=0`` there
    is no isolation: a crash in the decoder ends the process."""
    pending = list(range(len(dataset)))
    if workers == 0:
        for batch in loader(_Subset(dataset, pending), batch_size, 0, pin_memory):
            yield batch
        return
    in_flight = batch_size * workers * PREFETCH_FACTOR
    while pending:
        position = 0
        try:
            for batch in loader(_Subset(dataset, pending), batch_size, workers, pin_memory, timeout_s=timeout_s):
                yield batch
                position += len(batch.items)
            return
        except RuntimeError as exc:
            if "DataLoader" not in str(exc):
                raise
            suspects = pending[position:position + in_flight]
            pending = pending[position + in_flight:]
            console.warn(f"a decoding worker failed ({one_line(exc, 160)}); retrying {len(suspects)} file(s) one by one")
            for index in suspects:
                yield _alone(dataset, index, pin_memory, timeout_s)


def _alone(dataset: ImageFiles, index: int, pin_memory: bool, timeout_s: float) -> Batch:
    """One file decoded in its own worker process; an error row if that process dies or hangs."""
    try:
        for batch in loader(_Subset(dataset, [index]), 1, 1, pin_memory, timeout_s=timeout_s):
            return batch
    except RuntimeError as exc:
        if "DataLoader" not in str(exc):
            raise
    info = Decoded(image=None, error="the decoder crashed or hung on this file")
    try:
        st = os.stat(dataset.paths[index])
        info.size_bytes, info.mtime = st.st_size, st.st_mtime
    except OSError:
        pass
    return collate([Item(index=index, pixels=None, info=info)])

