"""The same scan on a Ray cluster: the only module that imports ray.

Ray Core, two stages, with back-pressure between them:

* **decode tasks** (1 CPU each) take a block of paths and return one item per path, decoded and
  cropped by the same per-file work as a local scan, inside a one-worker :class:`DecodePool`, so
  a decoder that crashes or hangs costs exactly its file an error row there too (not Ray's
  ``read_images``, where one corrupt file fails a whole task);
* **scorer actors** hold the detector (one GPU each where the cluster has GPUs, else one CPU) and
  turn a decoded block into report rows, exactly as a local scan builds them.

The driver streams the file list in blocks, keeps a bounded number of blocks in flight, and
emits rows in input order to the same report writer and row callback as a local scan: the same
rows, exit codes, resume and Parquet report. A Ray worker process killed mid-scan costs nothing:
Ray re-runs its decode task, or restarts the scorer actor and re-runs the block; a block's rows
reach the writer once, when its result first arrives at the driver.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from i2pscan import console
from i2pscan.model.detector import Detector
from i2pscan.errors import I2PError, one_line
from i2pscan.io.pool import DecodePool, collate
from i2pscan.io.work import FileWork, Item
from i2pscan.report.writer import ReportWriter
from i2pscan.provenance.evidence import EvidenceReader
from i2pscan.scan import (ScanOptions, ScanSummary, _batch_logits, _row, choose_cut, count_row, file_work, warn_if_unfitted)

ray = None  # imported on first use: an optional extra (pip install 'i2pscan[ray]')

DEFAULT_BLOCK_FILES = 64
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _need_ray(loopback: bool = False) -> None:
    """Import ray. ``loopback``: a private instance listens on 127.0.0.1 only (Ray picks the
    loopback address when this variable is 0, as it does on a laptop); it must be set before the
    first import."""
    global ray
    if ray is not None:
        return
    if loopback:
        os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray as _ray
    except ImportError as exc:
        raise I2PError("--ray needs Ray: pip install 'i2pscan[ray]'") from exc
    ray = _ray


@contextmanager
def connect(address: str) -> Iterator[None]:
    """Attach to the Ray cluster at ``address`` for the duration of the block.

    ``auto`` (the running cluster that ``ray start`` or RAY_ADDRESS names), ``HOST:PORT`` (a
    cluster's GCS), ``ray://HOST:PORT`` (Ray Client) or ``local`` (a private instance for this
    run, stopped after). A driver already attached (``ray.init`` earlier in this process) is used
    as it is. Raises I2PError when the cluster cannot be reached.
    """
    _need_ray(loopback=address == "local")
    if ray.is_initialized():
        yield
        return
    kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray Client warns on stderr before raising what we report
            _init(address, kwargs)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError, depending on the form
        raise I2PError(f"cannot connect to the Ray cluster at {address}: {one_line(exc, 200)}") from exc
    try:
        yield
    finally:
        ray.shutdown()


def _init(address: str, kwargs: dict) -> None:
    if address == "local":
        ray.init(address="local", _node_ip_address="127.0.0.1", **kwargs)
    else:
        ray.init(address=address, **kwargs)


def _decode_block(paths: list[str], work: FileWork, timeout_s: float) -> list[Item]:
    """One decode task: items (crops as arrays) for ``paths``, in order, one per path."""
    return list(DecodePool(work, workers=1, timeout_s=timeout_s).items(paths))


class _Scorer:
    """A detector on one device, turning decoded blocks into report rows."""

    def __init__(self, detector_bytes: list, name: str, pretrained: str | None, options: ScanOptions,
                 gpu: bool, precision: str = "auto"):
        import torch

        # the file's bytes come as a reference inside a list: a top-level object-store argument
        # would make Ray warn that a restarted actor may not find it (we hold it for the scan)
        _need_ray()
        detector_bytes = ray.get(detector_bytes[0])
        torch.set_num_threads(1)
        folder = tempfile.mkdtemp(prefix="i2pscan-detector-")
        path = os.path.join(folder, name)
        with open(path, "wb") as fh:
            fh.write(detector_bytes)
        self.detector = Detector.load(path, device="cuda" if gpu else "cpu", pretrained=pretrained, precision=precision)
        self.options = options
        self.cut = choose_cut(self.detector, options)

    def score(self, paths: list[str], items: list[Item]) -> list[dict]:
        batch_size = self.options.batch_size
        rows = []
        for start in range(0, len(items), batch_size):
            batch = collate(items[start:start + batch_size])
            if self.detector.device.type == "cuda":
                batch.pin_memory()
            logits = _batch_logits(self.detector, batch, self.options, self.cut.temperature)
            rows += [_row(paths[start + pos], item, logits.get(pos), self.cut.logit, self.options.evidence)
                     for pos, item in enumerate(batch.items)]
        return rows

    def pid(self) -> int:
        return os.getpid()


def _blocks(paths: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(paths)
    while block := list(itertools.islice(it, size)):
        yield block


def scan_on(address: str, detector: Detector, paths: Iterable[str], **kwargs) -> ScanSummary:
    """:func:`scan` on the cluster at ``address`` (see :func:`connect`)."""
    with connect(address):
        return scan(detector, paths, **kwargs)


def scan(detector: Detector, paths: Iterable[str], options: ScanOptions = ScanOptions(),
         writer: ReportWriter | None = None, on_row: Callable[[dict], None] | None = None,
         total: int | None = None, block_files: int = DEFAULT_BLOCK_FILES,
         scorers: int | None = None, pretrained: str | None = None, evidence: EvidenceReader | None = None,
         work: FileWork | None = None) -> ScanSummary:
    """:func:`i2pscan.scan.scan` on the Ray cluster this process is attached to (see
    :func:`connect`): the same rows, in input order, to ``writer`` and ``on_row``.

    ``paths`` may be a lazy iterable (read once, ``block_files`` at a time); ``total``, when known,
    sizes the progress bar. ``scorers``: model actors (default: one per GPU of the cluster, or one
    per 8 CPUs on a CPU-only cluster). The detector file's bytes travel to the scorers through the
    object store, so nodes need i2pscan and the backbone weights, not the file. ``work``: the
    per-file work of the decode tasks (default: the crops ``options`` and the detector ask for,
    with provenance read by ``evidence``, or a reader built from ``options.c2pa_trust``).
    """
    _need_ray()
    if not ray.is_initialized():
        raise I2PError("not attached to a Ray cluster (use distributed.connect)")
    done = writer.done if writer is not None else set()
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    n_scorers = scorers or (gpus if gpus else max(1, cpus // 8))
    with open(detector.path, "rb") as fh:
        detector_ref = ray.put(fh.read())
    scorer_class = ray.remote(max_restarts=-1, max_task_retries=-1)(_Scorer)
    actors = [scorer_class.options(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1).remote(
        [detector_ref], os.path.basename(detector.path), pretrained, options, bool(gpus), detector.precision)
        for _ in range(n_scorers)]
    decode_task = ray.remote(num_cpus=1, max_retries=3)(_decode_block)
    work = work or file_work(detector, options, evidence or EvidenceReader.from_trust_file(options.c2pa_trust))
    work_ref = ray.put(work)
    max_in_flight = max(4, 2 * cpus)
    chosen = choose_cut(detector, options)
    warn_if_unfitted(chosen)
    summary = ScanSummary(threshold=chosen.threshold)
    cut = chosen.logit
    skipped = [0]

    def todo() -> Iterator[str]:
        for p in paths:
            if p in done:
                skipped[0] += 1
            else:
                yield p

    cwd = os.getcwd()
    in_flight: dict = {}  # ObjectRef of a block's rows -> block number
    finished: dict[int, list[dict]] = {}
    next_emit = 0
    started = time.monotonic()
    with console.progress(total, "scan") as bar:

        def collect(block_until_one: bool) -> None:
            nonlocal next_emit
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=None if block_until_one else 0)
            for ref in ready:
                finished[in_flight.pop(ref)] = ray.get(ref)
            while next_emit in finished:
                rows = finished.pop(next_emit)
                next_emit += 1
                for row in rows:
                    count_row(summary, row, cut)
                    if writer is not None:
                        writer.add(row)
                    if on_row is not None:
                        on_row(row)
                bar.advance(len(rows), postfix=f"{summary.flagged} flagged, {summary.errors} errors")

        try:
            for number, block in enumerate(_blocks(todo(), block_files)):
                while len(in_flight) >= max_in_flight:
                    collect(True)
                # workers do not share the driver's working directory: they get absolute paths
                # (on a cluster, PATHS must name the same files on every node: a shared file system)
                where = [os.path.join(cwd, p) for p in block]
                decoded = decode_task.remote(where, work_ref, options.file_timeout_s)
                in_flight[actors[number % n_scorers].score.remote(block, decoded)] = number
            while in_flight:
                collect(True)
        finally:
            for ref in in_flight:
                try:
                    ray.cancel(ref)
                except Exception:  # already finished or gone: nothing to stop
                    pass
            for actor in actors:
                ray.kill(actor, no_restart=True)
    summary.skipped_done = skipped[0]
    summary.seconds = time.monotonic() - started
    return summary
