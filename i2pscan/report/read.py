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


def open_report(path: str, required: tuple[str, ...] = ("path", "verdict")) -> tuple[pq.ParquetFile, dict]:
    """A report file opened for reading in batches, and its metadata (an empty dict when it has
    none or it cannot be parsed). Raises InputError for a missing, unreadable or foreign file."""
    if not os.path.isfile(path):
        raise InputError(f"report not found: {short_path(path)}")
    try:
        pf = pq.ParquetFile(path)
        raw = (pf.schema_arrow.metadata or {}).get(META_KEY)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"{short_path(path)} is not a readable Parquet report: {one_line(exc)}") from exc
    _check_columns(path, pf, required)
    return pf, _metadata(path, raw)


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
    return ReportSummary(table.num_rows, counts.get("synthetic", 0), counts.get("real", 0), counts.get("error", 0),
                         meta, flagged.to_pylist(), counts.get("unknown", 0), by_provenance, by_generator)


def _counts(column) -> dict:
    vc = pc.value_counts(column)
    pairs = zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist())
    return dict(sorted(pairs, key=lambda kv: (-kv[1], str(kv[0]))))


def verdict_counts(table: pa.Table) -> dict[str, int]:
    """{verdict: rows} of a report table."""
    vc = pc.value_counts(table.column("verdict"))
    return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))
