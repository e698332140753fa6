"""Reviewers' decisions: the CSV files the review page exports, read back and merged.

A decisions file is a labelled manifest: ``path,label`` first (what ``evaluate``, ``calibrate``
and ``finetune`` read), then ``note``, ``reviewer``, ``decided_at``, ``row`` (the file's row in
the report) and ``path_b64`` (the path's exact bytes, base64). The ``path`` column holds the
path's exact bytes too, so that shell tools and ``evaluate`` (which reads names as bytes) reach
the same file even when its name is not UTF-8; ``path_b64`` keeps the identity unambiguous
whatever a spreadsheet does to the text. Merging keys decisions by those bytes, checks them
against the report's files, and lists the files on which reviewers disagree.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import os
from dataclasses import dataclass, field

from i2pscan.errors import InputError, one_line, short_path
from i2pscan.report.read import open_report
from i2pscan.report.schema import row_key

LABELS = {"synthetic": "synthetic", "fake": "synthetic", "1": "synthetic", "ai": "synthetic",
          "real": "real", "0": "real", "nature": "real"}
COLUMNS = ("path", "label", "note", "reviewer", "decided_at", "row", "path_b64")


@dataclass
class Decision:
    path: bytes  # the file's absolute path, exact bytes
    label: str
    reviewer: str
    note: str = ""
    decided_at: str = ""
    source: str = ""


@dataclass
class Merged:
    """Decisions agreed on (one per file, reviewers joined), conflicts (file -> each reviewer's
    decision), and how many decisions name no file of the report."""

    agreed: list[Decision] = field(default_factory=list)
    conflicts: dict[bytes, list[Decision]] = field(default_factory=dict)
    not_in_report: int = 0


def read_decisions(path: str) -> list[Decision]:
    """The decisions of one CSV file. Raises InputError for a file that is not one."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise InputError(f"`decisions` {short_path(path)}: {exc.strerror or exc}") from exc
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise InputError(f"`decisions` {short_path(path)}: not a decisions file (columns path,label first)")
    default_reviewer = os.path.splitext(os.path.basename(path))[0]
    out = []
    for line, row in enumerate(rows, start=2):
        label = LABELS.get(str(row.get("label") or "").strip().lower())
        if label is None:
            raise InputError(f"`decisions` {short_path(path)} row {line}: label {row.get('label')!r} is not "
                             f"synthetic or real")
        raw = row.get("path_b64") or ""
        try:
            exact = base64.b64decode(raw, validate=True) if raw else os.fsencode(row["path"] or "")
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"`decisions` {short_path(path)} row {line}: path_b64 is not base64 "
                             f"({one_line(exc, 80)})") from exc
        out.append(Decision(exact, label, (row.get("reviewer") or "").strip() or default_reviewer,
                            row.get("note") or "", row.get("decided_at") or "", path))
    return out


def report_paths(report: str, root: str | None = None) -> set[bytes]:
    """The absolute path bytes of every file in a report (relative paths taken from ``root``)."""
    pf, _ = open_report(report)
    base = os.fsencode(os.path.abspath(root or os.getcwd()))
    names = [c for c in ("path", "path_raw") if c in pf.schema_arrow.names]
    out = set()
    for batch in pf.iter_batches(batch_size=65536, columns=names):
        for row in batch.to_pylist():
            p = os.fsencode(row_key(row))
            out.add(p if os.path.isabs(p) else os.path.join(base, p))
    return out


def merge(report: str, files: list[str], root: str | None = None) -> Merged:
    """Merge reviewers' decision files about ``report``: per file, each reviewer's latest decision;
    agreed when every reviewer gave the same label, else a conflict. Raises InputError."""
    known = report_paths(report, root)
    by_file: dict[bytes, dict[str, Decision]] = {}
    result = Merged()
    for name in files:
        for d in read_decisions(name):
            if d.path not in known:
                result.not_in_report += 1
                continue
            mine = by_file.setdefault(d.path, {})
            if d.reviewer not in mine or d.decided_at >= mine[d.reviewer].decided_at:
                mine[d.reviewer] = d
    for path in sorted(by_file):
        decisions = sorted(by_file[path].values(), key=lambda d: d.reviewer)
        if len({d.label for d in decisions}) > 1:
            result.conflicts[path] = decisions
            continue
        result.agreed.append(Decision(path, decisions[0].label, ";".join(d.reviewer for d in decisions),
                                      " | ".join(d.note for d in decisions if d.note),
                                      max(d.decided_at for d in decisions)))
    return result


def write_csv(decisions: list[Decision], out) -> None:
    """Decisions as a decisions file (bytes to the binary stream ``out``), paths as exact bytes."""
    def field_bytes(value: bytes) -> bytes:
        if any(c in value for c in b'",\r\n'):
            return b'"' + value.replace(b'"', b'""') + b'"'
        return value

    def text(value: str) -> bytes:
        return field_bytes(value.encode("utf-8", "surrogateescape"))

    out.write(",".join(COLUMNS).encode() + b"\r\n")
    for d in decisions:
        out.write(b",".join([field_bytes(d.path), d.label.encode(), text(d.note), text(d.reviewer),
                             text(d.decided_at), b"", base64.b64encode(d.path)]) + b"\r\n")
