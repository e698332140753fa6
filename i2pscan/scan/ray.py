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
import sys
import tempfile
import warnings
from contextlib import contextmanager, nullcontext
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
    as it is. While attached (see :func:`_session`): a loopback cluster is reached on loopback, a
    token that is on this machine is presented, and Ray's own C++ log lines go to a file, not to
    the terminal. Raises EnvironmentFailure when the cluster cannot be reached, naming the token
    when that is why.
    """
    with _session(address) as ray_log:
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
            raise _connect_failure(address, exc, ray_log) from exc
        try:
            yield
        finally:
            ray.shutdown()


TOKEN_ENV, TOKEN_PATH_ENV, AUTH_MODE_ENV = "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"


def token_here() -> str | None:
    """Where a Ray authentication token is on this machine, as Ray looks for one: the
    RAY_AUTH_TOKEN variable, the file RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token."""
    if os.environ.get(TOKEN_ENV):
        return TOKEN_ENV
    for path in (os.environ.get(TOKEN_PATH_ENV), os.path.join(os.path.expanduser("~"), ".ray", "auth_token")):
        if path and os.path.isfile(path):
            return path
    return None


@contextmanager
def _session(address: str) -> Iterator[str | None]:
    """What a Ray session needs from this process, set for the session only and put back after:

    - a private instance, or a cluster on a loopback address, is reached on 127.0.0.1 (Ray
      listens on the loopback address only when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is 0, and a
      driver without it rewrites 127.0.0.1 to the machine's address);
    - with a token on this machine and RAY_AUTH_MODE unset, the driver presents it (``ray start``
      turns token authentication on when a token exists, and a driver must then say so);
    - Ray's C++ log lines, which go straight to file descriptor 2, go to a file (its path is
      yielded), so that ``--quiet`` is quiet and a terminal shows i2pscan's own lines; Python's
      ``sys.stderr`` keeps writing to the terminal. I2PSCAN_DEBUG=1 leaves descriptor 2 alone.
    """
    host = address.rsplit(":", 1)[0].replace("ray://", "").strip("[]")
    env = {}
    if address == "local" or host in ("localhost", "::1") or host.startswith("127."):
        env[LOOPBACK_ENV] = "0"
    if token_here():
        env[AUTH_MODE_ENV] = "token"
    env = {k: v for k, v in env.items() if k not in os.environ}
    os.environ.update(env)
    redirect = None if os.environ.get("I2PSCAN_DEBUG") else _StderrToFile()
    try:
        with redirect or nullcontext():
            yield redirect.path if redirect else None
    finally:
        for key in env:
            os.environ.pop(key, None)


class _StderrToFile:
    """File descriptor 2 into a temporary file for the duration of a block; ``sys.stderr``, when
    it writes to descriptor 2, keeps writing where descriptor 2 went before."""

    def __enter__(self) -> "_StderrToFile":
        fd, self.path = tempfile.mkstemp(prefix="i2pscan-ray-", suffix=".log")
        sys.stderr.flush()
        self._saved = os.dup(2)
        os.dup2(fd, 2)
        os.close(fd)
        self._stderr = None
        try:
            on_fd2 = sys.stderr.fileno() == 2
        except (AttributeError, ValueError, OSError):
            on_fd2 = False
        if on_fd2:
            self._stderr = sys.stderr
            sys.stderr = open(os.dup(self._saved), "w", encoding=sys.stderr.encoding, errors=sys.stderr.errors,
                              buffering=1)
        return self

    def __exit__(self, *exc) -> None:
        if self._stderr is not None:
            sys.stderr.close()
            sys.stderr = self._stderr
        os.dup2(self._saved, 2)
        os.close(self._saved)


def _connect_failure(address: str, exc: Exception, ray_log: str | None) -> EnvironmentFailure:
    """Why the cluster could not be reached, in one line; a token problem says so, and what to do."""
    logged = ""
    if ray_log:
        try:
            with open(ray_log, errors="replace") as fh:
                logged = fh.read(1 << 20)
        except OSError:
            pass
    if "InvalidAuthToken" in logged or "Unauthenticated" in logged or "AuthenticationError" in type(exc).__name__:
        token = token_here()
        if token:
            return EnvironmentFailure(f"the Ray cluster at {address} refused this machine's token ({token})",
                                      "it needs the token of that cluster (`ray get-auth-token` on its head node)")
        return EnvironmentFailure(f"the Ray cluster at {address} uses token authentication and there is no token on "
                                  f"this machine", "copy the cluster's token (`ray get-auth-token` on its head node) "
                                  "to ~/.ray/auth_token, or set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")
    return EnvironmentFailure(f"cannot connect to the Ray cluster at {address}: {one_line(exc, 200)}")


def _init(address: str, kwargs: dict) -> None:
    if address == "local":
        ray.init(address="local", _node_ip_address="127.0.0.1", **kwargs)
    else:
        ray.init(address=address, **kwargs)


def _decode_block(paths: list[str], work: FileWork, timeout_s: float) -> list[Item]:
    """One decode task: items (crops as arrays) for ``paths``, in order, one per path."""
    return list(DecodePool(work, workers=1, timeout_s=timeout_s).items(paths))


class _Scorer:
    """A detector on one device, turning decoded blocks into report rows.

    The detector file's bytes come with each block, as an object-store reference inside a list
    (so that Ray does not fetch them for every call), and are loaded on the first block: an actor
    built from object-store arguments could not be restarted once they were gone (Ray warns so),
    while one that loads on its first call rebuilds itself after a restart."""

    def __init__(self, name: str, pretrained: str | None, options: ScanOptions, gpu: bool, precision: str = "auto"):
        self.name, self.pretrained, self.options, self.gpu, self.precision = name, pretrained, options, gpu, precision
        self.detector = self.cut = None

    def _load(self, detector_bytes: list) -> None:
        import torch

        _need_ray()
        torch.set_num_threads(1)
        folder = tempfile.mkdtemp(prefix="i2pscan-detector-")
        path = os.path.join(folder, self.name)
        with open(path, "wb") as fh:
            fh.write(ray.get(detector_bytes[0]))
        self.detector = Detector.load(path, device="cuda" if self.gpu else "cpu", pretrained=self.pretrained,
                                      precision=self.precision)
        self.cut = self.detector.cut(self.options.crops, self.options.combine, self.options.threshold)

    def score(self, paths: list[str], items: list[Item], detector_bytes: list) -> list[Row]:
        if self.detector is None:
            self._load(detector_bytes)
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
            os.path.basename(detector.path), self.pretrained, options, bool(gpus), detector.precision)
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
                in_flight[actors[number % n_scorers].score.remote(block, decoded, [detector_ref])] = number
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
