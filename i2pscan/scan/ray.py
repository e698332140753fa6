"""The Ray executor: the same scan on a Ray cluster. The only module that imports ray.

Ray Core, two stages, with back-pressure between them:

* **decode tasks** (1 CPU each) take a block of paths and return one item per path, decoded and
  cropped by the same per-file work as a local scan, inside a one-worker :class:`DecodePool`, so
  a decoder that crashes or hangs costs exactly its file an error row there too (not Ray's
  ``read_images``, where one corrupt file fails a whole task);
* **scorer actors** hold the detector (one GPU each where the cluster has GPUs, else one CPU) and
  turn a decoded block into report rows, exactly as a local scan builds them.

The driver streams the file list in blocks, keeps a bounded number of blocks in flight, and hands
the rows back in input order to the scan session, which counts, writes and resumes them exactly
as for a local scan: the same rows, exit codes, resume and Parquet report. A Ray worker process killed mid-scan costs nothing:
Ray re-runs its decode task, or restarts the scorer actor and re-runs the block; a block's rows
reach the writer once, when its result first arrives at the driver.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import warnings
from contextlib import contextmanager
from typing import Iterable, Iterator

from i2pscan.errors import EnvironmentFailure, MissingDependency, one_line
from i2pscan.io.pool import DecodePool, collate
from i2pscan.io.work import FileWork, Item
from i2pscan.model.detector import Cut, Detector
from i2pscan.scan.options import ScanOptions
from i2pscan.scan.rows import Row, batch_rows

ray = None  # imported on first use: an optional extra (pip install 'i2pscan[ray]')

DEFAULT_BLOCK_FILES = 64
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _need_ray() -> None:
    """Import ray (an optional extra)."""
    global ray
    if ray is not None:
        return
    try:
        import ray as _ray
    except ImportError as exc:
        raise MissingDependency("`ray` needs Ray: pip install 'i2pscan[ray]'") from exc
    ray = _ray


@contextmanager
def connect(address: str) -> Iterator[None]:
    """Attach to the Ray cluster at ``address`` for the duration of the block.

    ``auto`` (the running cluster that ``ray start`` or RAY_ADDRESS names), ``HOST:PORT`` (a
    cluster's GCS), ``ray://HOST:PORT`` (Ray Client) or ``local`` (a private instance for this
    run, stopped after). A driver already attached (``ray.init`` earlier in this process) is used
    as it is. Raises I2PError when the cluster cannot be reached.
    """
    with _loopback(address == "local"):
        _need_ray()
        if ray.is_initialized():
            yield
            return
        kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Ray Client warns on stderr before raising what we report
                _init(address, kwargs)
        except Exception as exc:  # ConnectionError, ValueError, RuntimeError, depending on the form
            raise EnvironmentFailure(f"cannot connect to the Ray cluster at {address}: {one_line(exc, 200)}") from exc
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def _loopback(private: bool) -> Iterator[None]:
    """For a private instance, the variable with which Ray listens on 127.0.0.1 only (as it does
    on a laptop), set while Ray is imported and started (its processes inherit it), then put back."""
    if not private or LOOPBACK_ENV in os.environ:
        yield
        return
    os.environ[LOOPBACK_ENV] = "0"
    try:
        yield
    finally:
        os.environ.pop(LOOPBACK_ENV, None)


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
        self.cut = self.detector.cut(options.crops, options.combine, options.threshold)

    def score(self, paths: list[str], items: list[Item]) -> list[Row]:
        batch_size = self.options.batch_size
        rows = []
        for start in range(0, len(items), batch_size):
            batch = collate(items[start:start + batch_size])
            if self.detector.device.type == "cuda":
                batch.pin_memory()
            rows += batch_rows(self.detector, batch, paths, self.options, self.cut)
        return rows

    def pid(self) -> int:
        return os.getpid()


def _blocks(paths: Iterable[str], size: int) -> Iterator[list[str]]:
    it = iter(paths)
    while block := list(itertools.islice(it, size)):
        yield block


class RayExecutor:
    """Decode tasks and scorer actors on the Ray cluster at ``address`` (see :func:`connect`).

    ``scorers``: model actors (default: one per GPU of the cluster, or one per 8 CPUs on a
    CPU-only cluster). The detector file's bytes travel to the scorers through the object store,
    so nodes need i2pscan and the backbone weights, not the file. ``pretrained``: the backbone's
    weights on the nodes when the detector's recorded source is not there.
    """

    def __init__(self, address: str, detector: Detector, options: ScanOptions, work: FileWork, cut: Cut,
                 block_files: int = DEFAULT_BLOCK_FILES, scorers: int | None = None, pretrained: str | None = None):
        self.address, self.detector, self.options, self.work, self.cut = address, detector, options, work, cut
        self.block_files, self.scorers = block_files, scorers
        self.pretrained = pretrained if pretrained is not None else detector.pretrained
        self._connection = None

    def __enter__(self) -> RayExecutor:
        self._connection = connect(self.address)
        self._connection.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._connection.__exit__(*exc)

    def rows(self, paths: Iterable[str]) -> Iterator[list[Row]]:
        """Rows of ``paths`` (read once, ``block_files`` at a time), one list per block, in order."""
        detector, options = self.detector, self.options
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        n_scorers = self.scorers or (gpus if gpus else max(1, cpus // 8))
        with open(detector.path, "rb") as fh:
            detector_ref = ray.put(fh.read())
        scorer_class = ray.remote(max_restarts=-1, max_task_retries=-1)(_Scorer)
        actors = [scorer_class.options(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1).remote(
            [detector_ref], os.path.basename(detector.path), self.pretrained, options, bool(gpus), detector.precision)
            for _ in range(n_scorers)]
        decode_task = ray.remote(num_cpus=1, max_retries=3)(_decode_block)
        work_ref = ray.put(self.work)
        max_in_flight = max(4, 2 * cpus)
        cwd = os.getcwd()
        in_flight: dict = {}  # ObjectRef of a block's rows -> block number
        finished: dict[int, list[Row]] = {}
        next_emit = 0

        def collect() -> Iterator[list[Row]]:
            nonlocal next_emit
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=None)
            for ref in ready:
                finished[in_flight.pop(ref)] = ray.get(ref)
            while next_emit in finished:
                next_emit += 1
                yield finished.pop(next_emit - 1)

        try:
            for number, block in enumerate(_blocks(paths, self.block_files)):
                while len(in_flight) >= max_in_flight:
                    yield from collect()
                # workers do not share the driver's working directory: they get absolute paths
                # (on a cluster, PATHS must name the same files on every node: a shared file system)
                where = [os.path.join(cwd, p) for p in block]
                decoded = decode_task.remote(where, work_ref, options.file_timeout_s)
                in_flight[actors[number % n_scorers].score.remote(block, decoded)] = number
            while in_flight:
                yield from collect()
        finally:
            for ref in in_flight:
                try:
                    ray.cancel(ref)
                except Exception:  # already finished or gone: nothing to stop
                    pass
            for actor in actors:
                ray.kill(actor, no_restart=True)
