"""Reviewers' decisions (issue 20, issue 21.7): keyed by the path's exact bytes, read back to the same
files by evaluate's manifest reader and shell tools, merged across reviewers with conflicts listed."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
from PIL import Image

TWIN_BYTES = b"twin\xff.png"  # not UTF-8
TWIN_TEXT = "twin\\xff.png"  # a name that literally holds a backslash, x, f, f


def _files(folder: Path) -> tuple[bytes, bytes]:
    folder.mkdir()
    for name in (os.path.join(os.fsencode(folder), TWIN_BYTES), os.path.join(os.fsencode(folder), TWIN_TEXT.encode())):
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(name, "PNG")
    base = os.fsencode(os.path.abspath(folder))
    return os.path.join(base, TWIN_BYTES), os.path.join(base, TWIN_TEXT.encode())


def _csv(path: Path, rows: list[tuple[bytes, str, str, str]]) -> Path:
    lines = [b"path,label,note,reviewer,decided_at,row,path_b64"]
    for p, label, reviewer, at in rows:
        lines.append(b",".join([p, label.encode(), b"", reviewer.encode(), at.encode(), b"", base64.b64encode(p)]))
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    return path


def test_decisions_on_twin_names_land_on_their_own_files(tmp_path, run_cli, chdir):
    raw, literal = _files(Path("d"))
    r = run_cli("scan", "d", "--metadata-only", "--workers", "0", "-o", "r.parquet", "-q")
    assert r.exit_code == 0, r.stderr
    alice = _csv(tmp_path / "alice.csv", [(raw, "synthetic", "alice", "2026-01-01T10:00:00Z"),
                                          (literal, "real", "alice", "2026-01-01T10:00:01Z")])
    bob = _csv(tmp_path / "bob.csv", [(raw, "synthetic", "bob", "2026-01-01T11:00:00Z"),
                                      (literal, "synthetic", "bob", "2026-01-01T11:00:01Z"),
                                      (b"/nowhere/x.png", "real", "bob", "2026-01-01T11:00:02Z")])
    r = run_cli("report", "r.parquet", "--decisions", alice, "--decisions", bob)
    assert r.exit_code == 1  # reviewers disagree on one file
    lines = r.stdout_bytes.split(b"\r\n")
    assert lines[0] == b"path,label,note,reviewer,decided_at,row,path_b64"
    assert lines[1].startswith(raw + b",synthetic,,alice;bob,2026-01-01T11:00:00Z,,") and lines[2] == b""
    assert f"conflict: {os.fsdecode(literal)}: alice real, bob synthetic" in r.stderr
    assert "1 decision(s) agreed, 1 conflict(s) left out, 1 naming no file of the report" in r.stderr
    # the merged file is a manifest: the reader evaluate uses finds the very file (not its twin)
    (tmp_path / "merged.csv").write_bytes(r.stdout_bytes)
    from i2pscan.train.samples import _read_manifest  # what evaluate, calibrate and finetune read a CSV with

    items = _read_manifest(str(tmp_path / "merged.csv"))
    assert [(os.fsencode(i.path), i.label) for i in items] == [(raw, 1)]
    # a later decision of the same reviewer replaces the earlier one
    again = _csv(tmp_path / "alice2.csv", [(literal, "synthetic", "alice", "2026-01-02T09:00:00Z")])
    r = run_cli("report", "r.parquet", "--decisions", alice, "--decisions", bob, "--decisions", again)
    assert r.exit_code == 0 and "2 decision(s) agreed, 0 conflict(s)" in r.stderr


def test_decisions_option_errors(tmp_path, run_cli, chdir):
    _files(Path("d"))
    run_cli("scan", "d", "--metadata-only", "--workers", "0", "-o", "r.parquet", "-q")
    Path("bad.csv").write_text("name,verdict\nx,1\n")
    r = run_cli("report", "r.parquet", "--decisions", "bad.csv")
    assert (r.exit_code, r.stderr.strip()) == (2, "Error: --decisions bad.csv: not a decisions file (columns path,label first)")
    Path("odd.csv").write_text("path,label\nx.png,maybe\n")
    r = run_cli("report", "r.parquet", "--decisions", "odd.csv")
    assert r.exit_code == 2 and "row 2: label 'maybe' is not synthetic or real" in r.stderr
    r = run_cli("report", "r.parquet", "--decisions", "odd.csv", "--html", "page")
    assert r.exit_code == 2 and "--decisions and --html are separate steps" in r.stderr
