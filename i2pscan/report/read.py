"""Reading scan reports back: counts, the top flagged files, and text lines of rows."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from i2pscan.errors import InputError, one_line, short_path
from i2pscan.report.schema import META_KEY


@dataclass
class ReportSummary:
    files: int
    synthetic: int
    real: int
    errors: int
    meta: dict
    top: list[dict]
    unknown: int = 0  # --metadata-only: nothing declared
    by_provenance: dict[str, int] | None = None  # None: a report written before provenance columns
    by_generator: dict[str, int] | None = None
    by_flagged_by: dict[str, int] | None = None  # None: a report written before flagged_by existed


class DatasetReport:
    """A dataset folder of part files (``scan -o DIR/``) read as one report, with the reading
    interface of ``pyarrow.parquet.ParquetFile`` that the summary and the review page use:
    ``schema_arrow`` (every part's columns, the first part's metadata), ``iter_batches`` and
    ``read``. A part written by an older i2pscan lacks newer columns: they read as nulls."""

    def __init__(self, parts: list[pq.ParquetFile]):
        self.parts = parts
        schemas = [p.schema_arrow for p in parts]
        self.schema_arrow = pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive") \
            .with_metadata(schemas[0].metadata)

    def iter_batches(self, batch_size: int = 65536, columns: list[str] | None = None):
        names = columns or self.schema_arrow.names
        for part in self.parts:
            have = [c for c in names if c in part.schema_arrow.names]
            for batch in part.iter_batches(batch_size=batch_size, columns=have):
                arrays = [batch.column(have.index(c)) if c in have else
                          pa.nulls(batch.num_rows, self.schema_arrow.field(c).type) for c in names]
                yield pa.RecordBatch.from_arrays(arrays, schema=pa.schema([self.schema_arrow.field(c) for c in names]))

    def read(self, columns: list[str] | None = None) -> pa.Table:
        names = columns or self.schema_arrow.names
        batches = list(self.iter_batches(columns=names))
        return pa.Table.from_batches(batches, schema=pa.schema([self.schema_arrow.field(c) for c in names]))


def report_parts(path: str) -> list[str]:
    """The part files of a dataset folder, in the order they were written (hidden names skipped)."""
    return sorted(os.path.join(path, n) for n in os.listdir(path)
                  if n.endswith(".parquet") and not n.startswith((".", "_")))


def open_report(path: str, required: tuple[str, ...] = ("path", "verdict")):
    """A report opened for reading in batches (a Parquet file, or a dataset folder of part files
    that ``scan -o DIR/`` writes, as a :class:`DatasetReport`), and its metadata (an empty dict
    when it has none or it cannot be parsed). Raises InputError for a missing, unreadable or
    foreign report."""
    if os.path.isdir(path):
        files = report_parts(path)
        if not files:
            raise InputError(f"{short_path(path)} is a folder with no report parts (part-*.parquet) in it")
        try:
            pf = DatasetReport([pq.ParquetFile(f) for f in files])
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(f"{short_path(path)} is not a readable Parquet dataset: {one_line(exc)}") from exc
    elif not os.path.isfile(path):
        raise InputError(f"report not found: {short_path(path)}")
    else:
        try:
            pf = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as exc:
            raise InputError(f"{short_path(path)} is not a readable Parquet report: {one_line(exc)}") from exc
    _check_columns(path, pf, required)
    return pf, _metadata(path, (pf.schema_arrow.metadata or {}).get(META_KEY))


# what a column of a report must hold to be read as one (another tool's file may hold anything)
_TYPES = {"path": (pa.types.is_string, pa.types.is_large_string), "verdict": (pa.types.is_string,
          pa.types.is_large_string), "score": (pa.types.is_floating,), "logit": (pa.types.is_floating,),
          "path_raw": (pa.types.is_binary, pa.types.is_large_binary)}


def _check_columns(path: str, pf: pq.ParquetFile, required: tuple[str, ...]) -> None:
    """Refuse, naming what is wrong, a file whose columns cannot be a report's: a required column
    missing or named twice, a column of the wrong type, rows without a path."""
    names = pf.schema_arrow.names
    missing = set(required) - set(names)
    if missing:
        raise InputError(f"{short_path(path)} is not an i2pscan report (no {', '.join(sorted(missing))} column)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(f"{short_path(path)} is not an i2pscan report: it has two columns named {twice[0]}")
    for name, accepted in _TYPES.items():
        kind = pf.schema_arrow.field(name).type if name in names else None
        if kind is not None and not any(check(kind) for check in accepted):
            raise InputError(f"{short_path(path)} is not an i2pscan report: its {name} column holds {kind}")
    try:
        nulls = pf.read(columns=["path"]).column("path").null_count if "path" in names else 0
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{short_path(path)} is not a readable Parquet report: {one_line(exc)}") from exc
    if nulls:
        raise InputError(f"{short_path(path)} is not an i2pscan report: {nulls:,} row(s) have no path")


def _metadata(path: str, raw: bytes | None) -> dict:
    """The report's i2pscan metadata: {} when it has none; InputError when it is not a JSON object."""
    if not raw:
        return {}
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InputError(f"{short_path(path)}: its i2pscan metadata is not readable JSON "
                         f"({one_line(exc, 80)})") from exc
    if not isinstance(meta, dict):
        raise InputError(f"{short_path(path)}: its i2pscan metadata is a JSON {type(meta).__name__}, not an object")
    return meta


def read_report(path: str, top: int = 20) -> ReportSummary:
    """Counts and the ``top`` highest-scoring flagged files of a report. Raises I2PError."""
    pf, meta = open_report(path, ("path", "verdict", "score"))
    try:
        table = pf.read()
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{short_path(path)} is not a readable Parquet report: {exc}") from exc
    counts = verdict_counts(table)
    flagged = table.filter(pc.equal(table.column("verdict"), "synthetic"))
    flagged = flagged.take(pc.sort_indices(flagged, sort_keys=[("score", "descending")])[:top])
    by_provenance = by_generator = None
    if "provenance" in table.column_names:
        by_provenance = _counts(table.column("provenance"))
        by_generator = _counts(table.column("generator")) if "generator" in table.column_names else {}
        by_generator.pop(None, None)
    by_flagged_by = None
    if "flagged_by" in table.column_names:
        by_flagged_by = _counts(table.column("flagged_by"))
        by_flagged_by.pop(None, None)
    return ReportSummary(table.num_rows, counts.get("synthetic", 0), counts.get("real", 0), counts.get("error", 0),
                         meta, flagged.to_pylist(), counts.get("unknown", 0), by_provenance, by_generator,
                         by_flagged_by)


def flagged_rows(path: str, batch_rows: int = 4096):
    """Every flagged row of a report (a file or a dataset folder), in report order, one at a time."""
    pf, _ = open_report(path)
    for batch in pf.iter_batches(batch_size=batch_rows):
        table = pa.Table.from_batches([batch])
        table = table.filter(pc.equal(table.column("verdict"), "synthetic"))
        yield from table.to_pylist()


def _counts(column) -> dict:
    vc = pc.value_counts(column)
    pairs = zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())
    return dict(sorted(pairs, key=lambda kv: (-kv[1], str(kv[0]))))


def verdict_counts(table: pa.Table) -> dict[str, int]:
    """{verdict: rows} of a report table."""
    vc = pc.value_counts(table.column("verdict"))
    return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))
