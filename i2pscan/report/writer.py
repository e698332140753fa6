"""Scan reports: Parquet rows written as closed shards while scanning, merged atomically at the end.

A Parquet file whose writer never closed cannot be read at all, so rows go to small, complete
shard files in ``REPORT.parts/`` beside the report (each written to a temporary name, then
renamed). A scan killed at any moment leaves only whole shards; ``--resume`` reads them, skips
the files they hold, and the final merge writes every file exactly once, sorted in discovery
order, to a temporary file that is then renamed over the report.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq

from i2pscan.errors import ConfigError, I2PError, OutputError, ReportBusy, one_line, short_path
from i2pscan.io.files import atomic_path, check_writable, remove_leftovers
from i2pscan.report.schema import META_KEY, SCHEMA, conform, read_meta, row_key, rows_table

log = logging.getLogger("i2pscan")

_OLD_DEFAULTS = {"evidence": "all", "metadata_only": False, "decode_on": "cpu"}  # reports older than these options
# a resumed scan's rows must come from the same pixels: --decode-on device is not bit-identical to the CPU path
SAME_OPTIONS = ("crops", "combine", "threshold", "max_pixels", "want_hash", "perturbation", "evidence",
                "metadata_only", "c2pa_trust", "decode_on")


def _same_arithmetic(a: dict | None, b: dict | None) -> bool:
    """Whether two scans' rows come from the same backbone precision (``scan.arithmetic``): unknown
    (an older report, a --metadata-only scan) and a Ray scan against a local one are not refused."""
    if not a or not b or (a.get("device") == "ray") != (b.get("device") == "ray"):
        return True
    return a.get("backbone") == b.get("backbone")


class ReportWriter:
    """Rows in, one Parquet report out; resumable.

    ``resume``: continue from the shards (and the finished report, if any) of an earlier scan with
    the same detector and scoring options; the finished report stays where it is until the new
    one replaces it. ``overwrite``: replace an existing report or abandoned shards. Without either,
    an existing report or work folder is an error, so nothing is ever lost silently. One writer
    at a time: a lock in the work folder refuses a second scan to the same report.
    """

    shard_prefix = "shard"  # shard files are <prefix>-NNNNNN.parquet

    def _start(self, path: str, parts: str, meta: dict, resume: bool, overwrite: bool,
               shard_rows: int, shard_seconds: float) -> None:
        """The state every writer starts from (a single report and a dataset folder alike)."""
        if resume and overwrite:
            raise ConfigError("`resume` and `overwrite` contradict each other")
        self.path, self.parts, self.meta = path, parts, meta
        self.shard_rows, self.shard_seconds = shard_rows, shard_seconds
        self._buffer: list[dict] = []
        self._last_flush = time.monotonic()
        self._done: dict[str, None] = {}
        self._base: str | None = None  # a finished report being extended (resume)

    def __init__(self, path: str, meta: dict, resume: bool = False, overwrite: bool = False,
                 shard_rows: int = 2048, shard_seconds: float = 30.0):
        path = os.fspath(path)
        self._start(path, path + ".parts", meta, resume, overwrite, shard_rows, shard_seconds)
        if os.path.isdir(self.path):
            raise OutputError(f"{short_path(self.path)} is a folder; `output` needs a file name (or DIR/, with the slash, "
                              f"for a dataset folder of part files)")
        check_writable(self.path)
        if os.path.lexists(self.parts) and not os.path.isdir(self.parts):
            raise OutputError(f"{short_path(self.parts)} exists and is not a folder: move it away")
        # The lock comes first: what is read below (shards, a finished report) cannot change under us.
        self._lock = _ReportLock(self.parts, self.path)
        try:
            remove_leftovers(self.path)  # what a scan killed in its final merge left
            for name in os.listdir(self.parts):  # only the lock's holder writes here: any temporary file is a leftover
                if name.startswith(".tmp-"):
                    os.unlink(os.path.join(self.parts, name))
            if resume:
                self._resume()
            else:
                if self._shards() and not overwrite:
                    raise OutputError(f"an interrupted scan left {short_path(self.parts)}: pass `resume` to finish it, "
                                      f"or `overwrite` to start over")
                if os.path.exists(self.path) and not overwrite:
                    raise OutputError(f"{short_path(self.path)} exists: pass `overwrite` to replace it, "
                                      f"or `resume` to extend it")
                for shard in self._shards():
                    os.unlink(shard)
        except BaseException:
            self._release()
            raise
        self._next_shard = 1 + max([_shard_number(n) for n in os.listdir(self.parts)] or [0])

    def _shards(self) -> list[str]:
        return sorted(os.path.join(self.parts, n) for n in os.listdir(self.parts) if n.startswith(self.shard_prefix + "-"))

    def _release(self) -> None:
        """Unlock; the work folder goes first when it holds no shard (so a waiting scan never
        locks a folder that is about to disappear)."""
        if not self._lock.closed:
            try:
                if not self._shards():
                    shutil.rmtree(self.parts, ignore_errors=True)
            except OSError:
                pass
            self._lock.close()

    def _resume(self) -> None:
        sources = []
        if os.path.isfile(self.path):
            self._base = self.path
            sources.append(self.path)
        sources += self._shards()
        for source in sources:
            self._check_compatible(source)
            for row in pq.read_table(source, columns=["path", "path_raw"]).to_pylist():
                self._done[row_key(row)] = None

    def _check_compatible(self, source: str) -> None:
        theirs = read_meta(source)
        if not theirs:
            raise ConfigError(f"cannot resume from {short_path(source)}: it is not an i2pscan report")
        if theirs.get("detector_id") != self.meta.get("detector_id"):
            raise ConfigError(f"cannot resume: {short_path(source)} was made by detector {str(theirs.get('detector_id'))[:12]}…, "
                           f"this scan uses {str(self.meta.get('detector_id'))[:12]}…; pass `overwrite` to start over")
        ours, old = self.meta.get("options", {}), theirs.get("options", {})
        differs = [k for k in SAME_OPTIONS if ours.get(k, _OLD_DEFAULTS.get(k)) != old.get(k, _OLD_DEFAULTS.get(k))]
        if differs:
            raise ConfigError(f"cannot resume: {short_path(source)} was scanned with other {', '.join(differs)} "
                              f"({', '.join(f'{k}={old.get(k)!r}' for k in differs)}); use the same options, "
                              f"or `overwrite` to start over")
        if not _same_arithmetic(theirs.get("arithmetic"), self.meta.get("arithmetic")):
            raise ConfigError(f"cannot resume: {short_path(source)} was scored as {theirs['arithmetic']}, this scan would "
                              f"score as {self.meta.get('arithmetic')} (`device`, `precision`); use the same, "
                              f"or `overwrite` to start over")

    @property
    def done(self) -> set[str]:
        """Files that earlier runs already wrote (resume)."""
        return set(self._done)

    def add(self, row: dict) -> None:
        self._buffer.append(row)
        if len(self._buffer) >= self.shard_rows or time.monotonic() - self._last_flush >= self.shard_seconds:
            self.flush()

    def flush(self) -> None:
        """Write buffered rows as one complete shard file. Raises I2PError when it cannot."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        table = rows_table(self._buffer)
        table = table.replace_schema_metadata({META_KEY: json.dumps(self.meta).encode()})
        name = os.path.join(self.parts, f"{self.shard_prefix}-{self._next_shard:06d}.parquet")
        _atomic_write(table, name)
        self._next_shard += 1
        self._buffer = []

    def abandon(self) -> int:
        """After a failure: keep what was scanned (for --resume), or leave no trace if nothing was.
        Returns how many rows the kept shards hold (0: nothing kept)."""
        try:
            self.flush()
        except I2PError as exc:  # the failure may be the very write that failed: keep the shards there are
            log.warning(f"{len(self._buffer)} row(s) could not be kept: {exc}")
        kept = 0
        try:
            for shard in self._shards():
                kept += pq.read_metadata(shard).num_rows
        except (OSError, pa.ArrowInvalid):
            pass
        self._release()
        return kept

    def close(self, order: dict[str, int], finished_meta: dict) -> pa.Table:
        """Merge every shard (and the report being extended) into the report, sorted by ``order``
        (unknown paths last), atomically. Raises I2PError when the report cannot be written (the
        shards stay, for --resume)."""
        self.flush()
        sources = ([self._base] if self._base else []) + self._shards()
        tables = [conform(pq.read_table(s).replace_schema_metadata(None)) for s in sources]
        table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
        keys = [row_key(r) for r in table.select(["path", "path_raw"]).to_pylist()]
        first = {}
        for i, k in enumerate(keys):  # a file written twice (killed between shard and bookkeeping) counts once
            first.setdefault(k, i)
        unknown = len(order)
        rows = sorted(first.values(), key=lambda i: (order.get(keys[i], unknown), keys[i]))
        table = table.take(pa.array(rows, pa.int64()))
        table = table.replace_schema_metadata({META_KEY: json.dumps({**self.meta, **finished_meta}).encode()})
        _atomic_write(table, self.path)
        shutil.rmtree(self.parts, ignore_errors=True)  # before unlocking: see _release
        self._lock.close()
        return table



class _ReportLock:
    """The lock of a report's work folder, held by this process only.

    A POSIX record lock (``lockf``): forked children (decoding workers) do not inherit it, so a
    scan killed with SIGKILL frees its report at once even while its workers wind down; an
    ``flock`` would stay held by them. Record locks do not exclude within one process, so a
    process also remembers the lock files it holds. The lock file records the holder's pid.
    """

    _held: set[tuple[int, int]] = set()

    def __init__(self, parts: str, report: str):
        self.closed = True
        name = os.path.join(parts, ".lock")
        for _ in range(50):
            os.makedirs(parts, exist_ok=True)
            try:
                st = os.stat(name)
                if (st.st_dev, st.st_ino) in self._held:
                    raise ReportBusy(f"another scan is writing {short_path(report)} right now (in this process)")
            except FileNotFoundError:
                pass
            try:
                fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except FileNotFoundError:  # the folder went away: a scan finished just now
                continue
            st = os.fstat(fd)
            try:
                _lockf(fd)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                who = f" (pid {holder})" if holder else ""
                raise ReportBusy(f"another scan{who} is writing {short_path(report)} right now; "
                                 f"wait for it to finish, or use another -o") from exc
            try:  # the holder before us may have removed the folder between our open and our lock
                same = os.stat(name).st_ino == st.st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd, self._key, self.closed = fd, (st.st_dev, st.st_ino), False
            self._held.add(self._key)
            return
        raise OutputError(f"cannot lock {short_path(parts)}: it keeps disappearing")

    def close(self) -> None:
        if not self.closed:
            self._held.discard(self._key)
            os.close(self._fd)  # closing releases the record lock
            self.closed = True


def _lockf(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        return
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


def _shard_number(name: str) -> int:
    try:
        return int(name.split("-", 1)[1].split(".", 1)[0])
    except (IndexError, ValueError):
        return 0


def _atomic_write(table: pa.Table, path: str) -> None:
    try:
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
    except OSError as exc:
        raise OutputError(f"cannot write {short_path(path)}: {write_failure(exc)}") from exc


def write_failure(exc: OSError) -> str:
    """Why a write failed, naming the file-size limit (``ulimit -f``) when that is the cause."""
    if exc.errno == errno.EFBIG or "File too large" in str(exc):  # pyarrow's errors carry no errno
        try:
            import resource

            limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
            if limit != resource.RLIM_INFINITY:
                return f"file too large: the file-size limit (ulimit -f) is {limit:,} bytes"
        except ImportError:
            pass
        return "file too large"
    return exc.strerror or one_line(exc)


# -- a Parquet dataset folder instead of one file (-o DIR/) -------------------------------------


def is_dataset_path(path: str) -> bool:
    """``-o`` ending in a path separator names a dataset folder of part files."""
    return path.endswith(("/", os.sep))


class DatasetWriter(ReportWriter):
    """Rows in, a Parquet dataset folder out: ``DIR/part-NNNNNN.parquet``, each a closed file with
    the report's schema and metadata, written atomically. Nothing is merged, so a report of any
    size never has to fit one file or one machine's memory; pyarrow, pandas, polars and DuckDB
    read the folder as one table (hidden names such as the lock are skipped). Resume, overwrite
    and the lock work as for a single report; rows are in input order within a part, parts in
    the order they were written. The folder is never removed, even when it stays empty.
    """

    shard_prefix = "part"

    def __init__(self, path: str, meta: dict, resume: bool = False, overwrite: bool = False,
                 shard_rows: int = 2048, shard_seconds: float = 30.0):
        path = os.fspath(path)
        self._start(path, path.rstrip("/" + os.sep) or path, meta, resume, overwrite, shard_rows, shard_seconds)
        if os.path.lexists(self.parts) and not os.path.isdir(self.parts):
            raise OutputError(f"{short_path(self.parts)} is a file; -o DIR/ needs a folder "
                              f"(or drop the / for one report file)")
        check_writable(os.path.join(self.parts, "probe") if os.path.isdir(self.parts) else self.parts)
        self._lock = _ReportLock(self.parts, self.path)
        try:
            for name in os.listdir(self.parts):  # only the lock's holder writes here
                if name.startswith(".tmp-"):
                    os.unlink(os.path.join(self.parts, name))
            existing = self._shards()
            if resume:
                for source in existing:
                    self._check_compatible(source)
                    for row in pq.read_table(source, columns=["path", "path_raw"]).to_pylist():
                        self._done[row_key(row)] = None
            elif existing and not overwrite:
                raise OutputError(f"{short_path(self.parts)} already holds a report: pass `resume` to finish or "
                                  f"extend it, or `overwrite` to start over")
            elif overwrite:
                for name in existing:
                    os.unlink(name)
        except BaseException:
            self._release()
            raise
        self._next_shard = 1 + max([_shard_number(os.path.basename(n)) for n in self._shards()] or [0])

    def _shards(self) -> list[str]:
        if not os.path.isdir(self.parts):
            return []
        return sorted(os.path.join(self.parts, n) for n in os.listdir(self.parts)
                      if n.startswith(self.shard_prefix + "-") and n.endswith(".parquet"))

    def _release(self) -> None:
        """Unlock; the folder stays (it is the report), the lock file goes."""
        if not self._lock.closed:
            try:
                os.unlink(os.path.join(self.parts, ".lock"))
            except OSError:
                pass
            self._lock.close()


    def close(self, order: dict[str, int] | None = None, finished_meta: dict | None = None) -> pa.Table:
        """Write the last part; return the verdicts of the whole folder (earlier runs included).
        ``order`` is not used: parts are never rewritten."""
        self.flush()
        parts = self._shards()
        table = (pa.concat_tables([pq.read_table(p, columns=["verdict"]) for p in parts]) if parts
                 else pa.table({"verdict": pa.array([], pa.string())}))
        self._release()
        return table



def open_writer(output: str, meta: dict, resume: bool = False, overwrite: bool = False,
                shard_rows: int = 2048) -> ReportWriter:
    """The writer ``output`` calls for: a dataset folder of part files for ``DIR/`` (a name ending
    in a path separator), else one report file. Takes the report's lock; raises I2PError."""
    writer_class = DatasetWriter if is_dataset_path(output) else ReportWriter
    return writer_class(output, meta, resume=resume, overwrite=overwrite, shard_rows=shard_rows)
