"""The scan report's schema (DESIGN §3): its columns, how a path is stored, the metadata key, and
how a table written by an older i2pscan is brought to today's schema."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from i2pscan.errors import InputError, one_line, short_path, valid_text

log = logging.getLogger("i2pscan")

SCHEMA = pa.schema([
    pa.field("path", pa.string(), nullable=False),
    pa.field("path_raw", pa.binary()),
    pa.field("size_bytes", pa.int64()),
    pa.field("mtime", pa.timestamp("us", tz="UTC")),
    pa.field("format", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("score", pa.float32()),
    pa.field("logit", pa.float32()),
    pa.field("verdict", pa.string(), nullable=False),
    pa.field("flagged_by", pa.string()),  # model, metadata, both, or null (not flagged); reports before 0.2 lack it
    pa.field("reason", pa.string()),  # one sentence: why the verdict
    pa.field("error", pa.string()),
    pa.field("sha256", pa.string()),
    # provenance evidence (provenance.py); reports written before these columns existed lack them
    pa.field("provenance", pa.string()),
    pa.field("generator", pa.string()),
    pa.field("c2pa", pa.string()),
    pa.field("provenance_detail", pa.string()),
])
PROVENANCE_COLUMNS = ("provenance", "generator", "c2pa", "provenance_detail")
COLUMNS = SCHEMA.names
META_KEY = b"i2pscan"


def path_columns(path: str) -> tuple[str, bytes | None]:
    """(``path`` as text, ``path_raw``): a name that is not valid UTF-8 keeps its exact bytes in
    ``path_raw`` and shows them backslash-escaped in ``path``."""
    raw = os.fsencode(path)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), raw


def row_key(row: dict) -> str:
    """The identity of a row's file, as discovery spells it (surrogate-escaped str)."""
    raw = row.get("path_raw")
    return os.fsdecode(raw) if raw is not None else row["path"]


def mtime_of(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc)



def conform(table: pa.Table) -> pa.Table:
    """A report table in today's schema: columns an older i2pscan did not write are added as nulls."""
    for name in SCHEMA.names:
        if name not in table.column_names:
            table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
    return table.select(SCHEMA.names).cast(SCHEMA)


def read_meta(path: str) -> dict:
    try:
        raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(f"cannot read {short_path(path)}: {exc}") from exc
    return json.loads(raw) if raw else {}


def rows_table(rows: list[dict]) -> pa.Table:
    """The rows as a table of the report's schema. A row that Arrow refuses (text that is not valid
    Unicode, a value of the wrong type) becomes an error row for its file, naming why; the other
    rows are written as they are, so that one file never costs a scan its report."""
    try:
        return pa.Table.from_pylist(rows, schema=SCHEMA)
    except (pa.ArrowException, UnicodeError, ValueError, TypeError, OverflowError):
        pass
    tables = []
    for row in rows:
        try:
            tables.append(pa.Table.from_pylist([row], schema=SCHEMA))
        except (pa.ArrowException, UnicodeError, ValueError, TypeError, OverflowError) as exc:
            log.warning(f"{valid_text(str(row.get('path')))}: its row could not be written ({one_line(exc, 160)}); "
                        f"it is kept as an error row")
            tables.append(pa.Table.from_pylist([unwritable_row(row, exc)], schema=SCHEMA))
    return pa.concat_tables(tables)


def unwritable_row(row: dict, exc: BaseException) -> dict:
    """The error row of a file whose row could not be written: its identity, and why."""
    def keep(name, kind):
        value = row.get(name)
        return value if isinstance(value, kind) else None

    path = row.get("path")
    return {"path": valid_text(path) if isinstance(path, str) else repr(path), "path_raw": keep("path_raw", bytes),
            "size_bytes": keep("size_bytes", int), "mtime": None, "verdict": "error",
            "error": valid_text(f"the row could not be written to the report: {one_line(exc, 200)}")}
