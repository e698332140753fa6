"""One scan: files in, one report row each, out to a report and a callback; resumable.

``run_scan`` owns everything a scan's life needs: which writer the output calls for (one report
file, or a dataset folder for ``DIR/``), its lock, resuming (skipping what the report holds), the
one loop that counts, writes and hands on every row, keeping the scored rows when anything stops
the scan, and the outcome from which the CLI's exit code follows. Where files are decoded and
scored is the executor's business: this machine's decode pool (:class:`LocalExecutor`) or a Ray
cluster (scan/ray.py); both hand back rows in input order.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from i2pscan.version import __version__
from i2pscan.progress import progress
from i2pscan.errors import ConfigError, I2PError, short_path
from i2pscan.io.pool import scan_batches
from i2pscan.io.work import FileWork
from i2pscan.provenance.evidence import EvidenceReader
from i2pscan.scan.options import ScanOptions
from i2pscan.scan.rows import Row, ScanSummary, batch_rows

if TYPE_CHECKING:
    from i2pscan.model.detector import Cut, Detector

log = logging.getLogger("i2pscan")


class StopScan(Exception):
    """Raised by an ``on_row`` callback to end a scan early without an error (a reader that left)."""


class ScanStopped(I2PError):
    """A scan stopped before the end (``cause``: what stopped it, an interruption included); the
    ``kept`` rows it scored are in ``parts``, and the same scan with ``resume`` finishes it."""

    def __init__(self, cause: BaseException, kept: int, parts: str):
        self.cause, self.kept, self.parts = cause, kept, parts
        what = str(cause) if isinstance(cause, I2PError) else f"stopped ({type(cause).__name__})"
        super().__init__(what, f"{kept} scored row(s) are kept in {short_path(parts)}: run the same command with "
                               f"`resume` to finish")


@dataclass
class ScanOutcome:
    """What a scan did. ``flagged`` and ``errors`` answer for the whole report when one was
    written (earlier runs of a resumed report included), else for the rows handed out."""

    summary: ScanSummary
    flagged: int
    errors: int
    report: str | None = None
    stopped: bool = False  # an on_row callback ended it early (StopScan)
    files: list[str] = field(default_factory=list, repr=False)


def run_scan(files: Sequence[str], output: str | None = None, detector: Detector | None = None,
             options: ScanOptions = ScanOptions(), *, resume: bool = False, overwrite: bool = False,
             on_row: Callable[[Row], None] | None = None, ray: str | None = None,
             inputs: Sequence[str] | None = None, flush_rows: int = 2048,
             evidence: EvidenceReader | None = None, work: FileWork | None = None,
             executor: Callable | None = None) -> ScanOutcome:
    """Scan ``files`` (already discovered) with ``detector`` (None: ``options.metadata_only``) and
    write a report to ``output`` (None: none; ending in ``/``: a dataset folder of part files).

    ``on_row(row)`` gets every row in input order (it may raise :class:`StopScan`). ``ray``: a Ray
    cluster address to scan on (scan/ray.py). ``inputs``: what the user named, for the report's
    metadata. ``evidence``: the provenance reader (default: one with ``options.c2pa_trust``);
    ``work``: the per-file work of the workers (default: :func:`file_work`); ``executor``: a
    factory ``(detector, options, work, cut) -> executor`` to use instead of the local or Ray one
    (e.g. a RayExecutor with other block sizes). Raises I2PError
    before any work for a conflicting request, a report in the way or busy; :class:`ScanStopped`
    when the scan stops early with scored rows kept.
    """
    if (detector is None) != options.metadata_only:
        raise ValueError("a detector is needed unless metadata_only, and only then")
    if resume and not output:
        raise ConfigError("`resume` needs `output` REPORT.parquet")
    if options.metadata_only and ray:
        raise ConfigError("`metadata_only` runs no model; scan it without `ray`")
    if detector is not None:
        check_policy(detector, options)
    evidence = evidence or EvidenceReader.from_trust_file(options.c2pa_trust)
    writer = None
    if output:
        from i2pscan.report.writer import open_writer

        writer = open_writer(output, report_metadata(detector, options, inputs or files, on_ray=bool(ray)),
                             resume=resume, overwrite=overwrite, shard_rows=flush_rows)
    try:
        if executor is None and ray:
            from i2pscan.scan.ray import RayExecutor

            executor = lambda *args: RayExecutor(ray, *args)  # noqa: E731
        summary, stopped = _loop(files, detector, options, writer, on_row, executor or LocalExecutor,
                                 work or file_work(detector, options, evidence))
        table = writer.close({p: i for i, p in enumerate(files)}, {"finished": now()}) if writer and not stopped else None
    except BaseException as exc:
        kept = writer.abandon() if writer is not None else 0  # whatever stopped the scan, keep what was scored
        if kept:
            raise ScanStopped(exc, kept, writer.parts) from exc
        raise
    flagged, errors = summary.flagged, summary.errors
    if table is not None:  # a resumed scan answers for the whole report, earlier runs included
        from i2pscan.report.read import verdict_counts

        counts = verdict_counts(table)
        flagged, errors = counts.get("synthetic", 0), counts.get("error", 0)
    return ScanOutcome(summary, flagged, errors, output, stopped, list(files))


def _loop(files, detector, options, writer, on_row, make_executor, work) -> tuple[ScanSummary, bool]:
    done = writer.done if writer is not None else set()
    todo = [p for p in files if p not in done]
    cut = None
    if detector is not None:
        cut = detector.cut(options.crops, options.combine, options.threshold)
        if not cut.fitted and cut.source == "detector":
            log.warning(f"the detector has no threshold fitted for --crops {cut.policy.replace(':', ' --combine ')}: "
                        f"using the centre-crop one, as forced; its false-positive rate may differ")
    summary = ScanSummary(skipped_done=len(files) - len(todo), threshold=None if cut is None else cut.threshold,
                          cut=None if cut is None else cut.logit)
    executor = make_executor(detector, options, work, cut)
    started = time.monotonic()
    stopped = False
    with progress(len(todo), "scan") as bar, executor:
        for rows in executor.rows(todo):
            for row in rows:
                summary.count(row)
                if writer is not None:
                    writer.add(row)
                if on_row is not None and not stopped:
                    try:
                        on_row(row)
                    except StopScan:
                        stopped = True
            bar.advance(len(rows), postfix=f"{summary.flagged} flagged, {summary.errors} errors")
            if stopped and writer is None:
                break
    summary.seconds = time.monotonic() - started
    return summary, stopped and writer is None


def check_policy(detector: Detector, options: ScanOptions) -> None:
    """Refuse a crop policy the detector has no threshold for: the centre-crop threshold applied to
    9 crops combined by max flagged 95 % of held-out reals at a 5 % target. ``force_policy`` (or a
    threshold given explicitly) scans anyway, with a warning."""
    cut = detector.cut(options.crops, options.combine, options.threshold)
    if cut.fitted or options.force_policy or options.threshold is not None:
        return
    fitted = sorted(detector.meta.get("thresholds", {})) or ["1:mean"]
    raise ConfigError(f"the detector has no threshold fitted for `crops` {options.crops} `combine` "
                      f"{cut.policy.split(':')[1]} (it has {', '.join(fitted)})",
                      f"finetune with `crop_policies` {cut.policy} to fit one, or pass `force_policy` to use the "
                      f"centre-crop threshold, whose false-positive rate may differ")


def file_work(detector: Detector | None, options: ScanOptions, evidence: EvidenceReader | None) -> FileWork:
    """What decoding workers do with each file for this scan (``detector`` None: --metadata-only)."""
    if detector is None:
        return FileWork(None, options.want_hash, evidence=evidence, header_only=True)
    from i2pscan.io.preprocess import CropTransform

    return FileWork(CropTransform(detector.preprocess, options.crops), want_hash=options.want_hash,
                    max_pixels=options.max_pixels, perturbation=options.perturbation,
                    evidence=evidence if options.read_provenance else None, uint8=True,
                    encoded_jpeg=options.decode_on == "device")


class LocalExecutor:
    """Decodes in this machine's decode pool (``options.workers`` processes) and scores on the
    detector's device, the next batches decoding while one is scored."""

    def __init__(self, detector: Detector | None, options: ScanOptions, work: FileWork, cut: Cut | None):
        self.detector, self.options, self.work, self.cut = detector, options, work, cut

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def rows(self, paths: list[str]) -> Iterator[list[Row]]:
        o = self.options
        cuda = self.detector is not None and self.detector.device.type == "cuda"
        for batch in scan_batches(paths, self.work, o.batch_size, o.workers, pin_memory=cuda, timeout_s=o.file_timeout_s):
            yield batch_rows(self.detector, batch, paths, o, self.cut)


def report_metadata(detector: Detector | None, options: ScanOptions, inputs: Sequence[str],
                    on_ray: bool = False) -> dict:
    """What a report records about how it was made, the threshold and the arithmetic actually used
    included (``detector`` None: a --metadata-only scan; ``on_ray``: scored by Ray actors)."""
    if detector is None:
        return {"i2pscan_version": __version__, "detector_id": None, "detector_path": None, "detector": {},
                "options": options.to_dict(), "inputs": list(inputs), "started": now(), "threshold": None}
    cut = detector.cut(options.crops, options.combine, options.threshold)
    return {"i2pscan_version": __version__, "detector_id": detector.id, "detector_path": os.path.abspath(detector.path),
            "detector": detector.meta, "options": options.to_dict(), "inputs": list(inputs), "started": now(),
            "threshold": cut.to_dict(), "arithmetic": arithmetic(detector, on_ray)}


def arithmetic(detector: Detector, on_ray: bool = False) -> dict:
    """Where the backbone ran and in what: ``bf16`` only on CUDA with a bf16 detector, else ``fp32``.
    Ray scorers use the cluster's GPUs where it has them, so both cases are recorded."""
    if on_ray:
        return {"device": "ray", "backbone": {"cuda": detector.precision, "cpu": "fp32"}}
    return {"device": str(detector.device),
            "backbone": "bf16" if detector.device.type == "cuda" and detector.precision == "bf16" else "fp32"}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
