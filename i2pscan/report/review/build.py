"""Build the review page of a scan report in bounded memory: the report is read in batches of rows
three times (survey, thumbnails, page), and only the thumbnail candidates (at most ``max_thumbs``)
are held at once.

Every string from the report is untrusted. In the page it travels as JSON inside
``<script type="application/json">`` with ``<``, ``>`` and ``&`` escaped (so no value can close
the element), and the script builds the DOM with ``textContent`` only. The histograms are made
here, with every label escaped. The Content-Security-Policy allows no network at all: images from
the page's folder and local files (the large view shows the original), script and style only by
the hashes of the inline blocks.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import re
import shutil
import tempfile
import time
import webbrowser
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, ContextManager, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from i2pscan.version import __version__
from i2pscan.errors import OutputError
from i2pscan.report.read import open_report
from i2pscan.report.schema import row_key
from i2pscan.io.files import atomic_path, current_umask
import i2pscan.report.review.header as header
import i2pscan.report.review.thumbs as thumbs_mod

DEFAULT_MAX_THUMBS = 5000
BATCH_ROWS = 16384
MAX_CLASSES = 12
MARK = "i2pscan review page"
# Per file, in this order, in the page's JSON (then any other report column, then the thumbnail's
# name and why there is none); the page reads the order from its metadata.
FIELDS = ("path", "verdict", "flagged_by", "reason", "score", "logit", "format", "width", "height", "size_bytes",
          "mtime", "sha256", "error", "provenance", "generator", "c2pa", "provenance_detail", "path_raw")
THUMB_FIELDS = ("thumb", "thumb_note")


def _fields(names: list[str]) -> list[str]:
    """The page's fields for a report with these columns: the known ones, then the others."""
    extra = [c for c in names if c not in FIELDS and c not in THUMB_FIELDS]
    return list(FIELDS) + extra + list(THUMB_FIELDS)


@dataclass
class PageSummary:
    """What a build made: the page, its row count and how many files got a thumbnail."""

    index: str
    rows: int
    thumbs: int
    thumb_failures: dict[str, int] = field(default_factory=dict)  # reason -> files
    seconds: float = 0.0


@dataclass
class Survey:
    rows: int = 0
    verdicts: dict = field(default_factory=dict)
    histograms: dict = field(default_factory=dict)  # class -> counts per bin
    no_score: int = 0
    # thumbnail candidates, best first after _keep_best: rank class, -score, row index, file path
    cls: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))
    neg_score: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    index: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    source: np.ndarray = field(default_factory=lambda: np.empty(0, object))


def build_page(report: str, out_dir: str, max_thumbs: int = DEFAULT_MAX_THUMBS, root: str | None = None,
               workers: int = 1, progress: Callable[[int, str], ContextManager] | None = None) -> PageSummary:
    """Write ``out_dir/index.html`` and ``out_dir/thumbs/`` for the scan report ``report``.

    ``root``: the folder the report's relative paths are relative to (default: the current
    folder); it locates files for thumbnails, the large view and the exported decisions, whose
    paths are absolute so that the CSV works from wherever it is saved. Thumbnails go to the
    ``max_thumbs`` files first in review order (flagged by score, then the rest by score; error
    rows get none). ``out_dir`` must be new, empty, or an earlier review page (replaced).
    ``workers`` isolated decoding processes (at least one: a decoder that crashes or hangs costs its
    file a placeholder, as in a scan); ``progress(total, description)``, a
    context manager yielding an object with ``advance()`` (as console.progress), follows the
    thumbnails. Raises I2PError for an unreadable report or an unusable folder.
    """
    started = time.monotonic()
    pf, meta = open_report(report)
    root = os.path.abspath(root or os.getcwd())
    _prepare_folder(out_dir)
    names = pf.schema_arrow.names
    survey = _survey(pf, names, max_thumbs, root)

    # a page being replaced stays whole until the new one is complete
    new_thumbs = tempfile.mkdtemp(prefix=".thumbs-", dir=out_dir)
    try:
        jobs = list(zip(survey.index.tolist(), survey.source.tolist()))
        with (progress or _no_progress)(len(jobs), "thumbnails") as ticker:
            notes = thumbs_mod.make_thumbs(jobs, new_thumbs, workers, on_done=ticker.advance)
        failures: dict[str, int] = {}
        for note in notes.values():
            if note is not None:
                failures[note] = failures.get(note, 0) + 1
        page_meta = _page_meta(report, meta, survey, names, root, len(notes) - sum(failures.values()))
        index = os.path.join(out_dir, "index.html")
        with atomic_path(index) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="\n") as out:
                _write_page(out, pf, names, page_meta, survey, notes)
            os.chmod(new_thumbs, 0o777 & ~current_umask())  # mkdtemp makes 0700 whatever the umask
            _swap_folder(new_thumbs, os.path.join(out_dir, "thumbs"))
    finally:
        shutil.rmtree(new_thumbs, ignore_errors=True)
    return PageSummary(index=index, rows=survey.rows, thumbs=page_meta["thumbs"], thumb_failures=failures,
                       seconds=time.monotonic() - started)


class _Silent:
    def advance(self, n: int = 1) -> None:
        pass


@contextmanager
def _no_progress(total: int, description: str) -> Iterator[_Silent]:
    yield _Silent()


def open_in_browser(index: str) -> bool:
    """Open the page in the system browser when there is a display; False when there is none."""
    if os.name == "posix" and not os.uname().sysname == "Darwin":
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            return False
    try:
        return webbrowser.open(Path(os.path.abspath(index)).as_uri())
    except webbrowser.Error:
        return False


# -- reading ----------------------------------------------------------------------------------


def _batches(pf: pq.ParquetFile, columns: list[str]):
    return pf.iter_batches(batch_size=BATCH_ROWS, columns=columns)


def _column(batch: pa.RecordBatch, name: str, default=None) -> list:
    i = batch.schema.get_field_index(name)
    return batch.column(i).to_pylist() if i >= 0 else [default] * batch.num_rows


def _scores(batch: pa.RecordBatch) -> np.ndarray:
    i = batch.schema.get_field_index("score")
    if i < 0:
        return np.full(batch.num_rows, np.nan)
    col = batch.column(i).cast(pa.float64())
    return np.asarray(col.fill_null(math.nan).to_numpy(zero_copy_only=False), np.float64)


def _survey(pf: pq.ParquetFile, names: list[str], max_thumbs: int, root: str) -> Survey:
    """Counts, histograms and the ``max_thumbs`` best thumbnail candidates, one batch at a time."""
    s = Survey()
    edges = np.linspace(0.0, 1.0, header.BINS + 1)
    columns = [c for c in ("path", "path_raw", "verdict", "score", "provenance") if c in names]
    for batch in _batches(pf, columns):
        n = batch.num_rows
        verdicts = np.asarray(_column(batch, "verdict", ""), object)
        for v, count in zip(*np.unique(verdicts.astype(str), return_counts=True)):
            s.verdicts[v] = s.verdicts.get(v, 0) + int(count)
        scores = _scores(batch)
        classes = np.asarray([c if c is not None else "(missing)" for c in _column(batch, "provenance", "all")],
                             object) if "provenance" in names else np.full(n, "all", object)
        valid = np.isfinite(scores)
        s.no_score += int(n - valid.sum())
        for cls in np.unique(classes[valid].astype(str)) if valid.any() else ():
            key = cls if (cls in s.histograms or len(s.histograms) < MAX_CLASSES) else "other"
            counts, _ = np.histogram(np.clip(scores[valid & (classes == cls)], 0, 1), bins=edges)
            s.histograms[key] = s.histograms.get(key, np.zeros(header.BINS, np.int64)) + counts
        if max_thumbs > 0:
            eligible = np.flatnonzero(verdicts != "error")
            if eligible.size:
                paths = _column(batch, "path")
                raws = _column(batch, "path_raw")
                rank = np.where(verdicts[eligible] == "synthetic", 0, 1).astype(np.int8)
                neg = np.where(valid[eligible], -scores[eligible], np.inf)
                best = np.lexsort((eligible, neg, rank))[:max_thumbs]  # this batch's best, before paths
                eligible, rank, neg = eligible[best], rank[best], neg[best]
                src = np.empty(eligible.size, object)
                for j, k in enumerate(eligible):
                    p = row_key({"path": paths[k], "path_raw": raws[k]})
                    src[j] = p if os.path.isabs(p) else os.path.join(root, p)
                _keep_best(s, rank, neg, eligible + s.rows, src, max_thumbs)
        s.rows += n
    return s


def _keep_best(s: Survey, rank, neg, index, src, limit: int) -> None:
    cls = np.concatenate([s.cls, rank])
    neg_score = np.concatenate([s.neg_score, neg])
    idx = np.concatenate([s.index, index])
    source = np.concatenate([s.source, src])
    order = np.lexsort((idx, neg_score, cls))[:limit]
    s.cls, s.neg_score, s.index, s.source = cls[order], neg_score[order], idx[order], source[order]


# -- writing ----------------------------------------------------------------------------------


def _prepare_folder(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputError(f"`html` {out_dir}: a file is in the way; name a folder")
    if os.path.isdir(out_dir):
        leftovers = [e for e in os.listdir(out_dir) if e.startswith(_TEMPORARY)]  # of a build that was killed
        index = os.path.join(out_dir, "index.html")
        if set(os.listdir(out_dir)) - set(leftovers) and not _is_review_page(index):
            raise OutputError(f"`html` {out_dir}: the folder is not empty and holds no review page; "
                              f"name a new or empty folder")
        for name in leftovers:
            path = os.path.join(out_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):  # a link is removed, never followed
                shutil.rmtree(path)
            else:
                os.unlink(path)
        return
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise OutputError(f"`html` {out_dir}: folder {parent} does not exist")
    try:
        os.mkdir(out_dir)
    except OSError as exc:
        raise OutputError(f"`html` {out_dir}: cannot create the folder: {exc.strerror or exc}") from exc


_TEMPORARY = (".thumbs-", ".old-thumbs-", ".tmp-")


def _swap_folder(new: str, dest: str) -> None:
    """Put folder ``new`` at ``dest``, replacing what was there."""
    if os.path.isdir(dest):
        old = tempfile.mkdtemp(prefix=".old-thumbs-", dir=os.path.dirname(dest))
        os.rename(dest, os.path.join(old, "thumbs"))
        os.rename(new, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, dest)


def _is_review_page(path: str) -> bool:
    """Whether ``path`` is a page this builder wrote: a regular file (never a link or a FIFO, which
    could point anywhere or block the read) that names its generator."""
    if not os.path.isfile(path) or os.path.islink(path):
        return False
    with open(path, "rb") as fh:
        return f'<meta name="generator" content="{MARK}">'.encode() in fh.read(4096)


def _threshold(meta: dict) -> float | None:
    used = meta.get("threshold") if isinstance(meta.get("threshold"), dict) else {}  # what the scan used (its crop policy's)
    for value in (used.get("threshold"), (meta.get("options") or {}).get("threshold"),
                  (meta.get("detector") or {}).get("threshold")):
        if isinstance(value, (int, float)) and 0 <= value <= 1:
            return float(value)
    return None


def _page_meta(report: str, meta: dict, survey: Survey, names: list[str], root: str, thumbs: int) -> dict:
    det = meta.get("detector") if isinstance(meta.get("detector"), dict) else {}
    identity = json.dumps([os.path.abspath(report), meta.get("started"), meta.get("finished"),
                           meta.get("detector_id")], default=str)
    return {
        "title": os.path.basename(report.rstrip("/" + os.sep)) or report,
        "report": os.path.abspath(report),
        "report_id": hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:16],
        "rows": survey.rows,
        "verdicts": survey.verdicts,
        "threshold": _threshold(meta),
        "detector": str(meta.get("detector_path") or det.get("name") or ""),
        "scanned": [meta.get("started"), meta.get("finished")],
        "root": root,
        "sep": os.sep,
        "fields": _fields(names),
        "has_provenance": "provenance" in names,
        "thumbs": thumbs,
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "version": __version__,
    }


def _script_json(value) -> str:
    """JSON that cannot end a <script> element or open a comment in one."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _asset(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def _fill(template: str, values: dict) -> str:
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], template)


def _write_page(out, pf: pq.ParquetFile, names: list[str], page_meta: dict, survey: Survey,
                notes: dict[int, str | None]) -> None:
    script, style = _asset("review.js"), _asset("review.css")
    csp = ("default-src 'none'; img-src 'self' data: file:; "
           f"script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; base-uri 'none'; form-action 'none'")
    head, tail = _asset("page.html").split("{{data}}")
    values = {"csp": csp, "title": html.escape(page_meta["title"]), "style": style, "script": script,
              "generator": MARK, "summary": html.escape(header.summary_line(page_meta)),
              "histograms": header.histograms(survey.histograms, survey.no_score, page_meta["threshold"]), "meta": _script_json(page_meta)}
    out.write(_fill(head, values))
    out.write("[")
    fields = page_meta["fields"]
    marked = sorted(notes)
    start, k = 0, 0
    for batch in _batches(pf, [c for c in fields if c in names]):
        n = batch.num_rows
        cols = [_plain_column(batch, c) if c in names else [None] * n for c in fields[:-2]]
        thumb, note = [None] * n, [None] * n
        while k < len(marked) and marked[k] < start + n:
            i = marked[k]
            thumb[i - start] = thumbs_mod.thumb_name(i) if notes[i] is None else None
            note[i - start] = notes[i]
            k += 1
        text = _script_json([list(row) for row in zip(*cols, thumb, note)])
        if n:
            out.write(("," if start else "") + text[1:-1])
        start += n
    out.write("]")
    out.write(_fill(tail, values))


def _plain_column(batch: pa.RecordBatch, name: str) -> list:
    """A column as JSON-ready Python values: finite floats rounded to 6 digits (NaN as null),
    times as ISO text, ``path_raw`` as base64 (the page keys decisions by a path's exact bytes),
    other bytes as backslash-escaped text; text as valid Unicode."""
    col = batch.column(batch.schema.get_field_index(name))
    if pa.types.is_floating(col.type):
        col = col.cast(pa.float64())
        col = pc.round(pc.if_else(pc.is_finite(col), col, pa.scalar(None, pa.float64())), 6)
    elif pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        if pa.types.is_timestamp(col.type):
            col = col.cast(pa.timestamp("s", tz=col.type.tz), safe=False)
        col = pc.strftime(col, format="%Y-%m-%dT%H:%M:%S%z" if getattr(col.type, "tz", None) else "%Y-%m-%dT%H:%M:%S")
    elif name == "path_raw" and (pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type)):
        return [None if v is None else base64.b64encode(v).decode("ascii") for v in col.to_pylist()]  # exact bytes
    elif pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        return [None if v is None else v.decode("utf-8", "backslashreplace") for v in col.to_pylist()]
    return col.to_pylist()
